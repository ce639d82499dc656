//! A client that leaves while it waits in line for a server.
//!
//! When every server of a pool is busy, a session waits in the pool's checkout queue with its
//! query in hand. Nobody reads its socket meanwhile, so without a watch a client that gives up
//! (a timeout in the application, a killed process) would keep its place, and its query would
//! run on the server it was finally given, with nobody left to read the answer: for a write,
//! a change the application believes failed. So the wait also watches the client's socket,
//! without consuming a byte: end of file, a reset, or a lone Terminate message ends the wait
//! and the session, and the queue entry goes to the next client. Anything else the client sends
//! (a pipelined message) means it is still there: the watch stops, and the bytes are read once
//! the session has its server.
//!
//! The client is looked at before the wait each time the session wakes: the grant of a server
//! and the client's goodbye can both be waiting when the session's task finally runs (its wake
//! sat in a busy worker's queue), and the goodbye came first.

use crate::cancel::CancelSlot;
use crate::socket::{Peeked, Stream, TERMINATE};
use std::future::Future;
use std::pin::pin;
use std::task::Poll;

/// Runs `wait` (a checkout) unless the client leaves first, or the admin console's `KILL`
/// ends its session (`slot`): `None` then. A server the wait was granted meanwhile goes to the
/// next in line when `wait` is dropped.
///
/// `terminate_counts`: the socket's next bytes start a message (the session holds no partial
/// one), so a lone Terminate there is a goodbye.
///
/// On the hot path `wait` is ready at its first poll and the socket is never looked at.
pub(super) async fn unless_client_leaves<F: Future>(
    client: &Stream,
    slot: &CancelSlot,
    terminate_counts: bool,
    wait: F,
) -> Option<F::Output> {
    let mut wait = pin!(wait);
    // One byte of state, not two flags: this future is part of every session's.
    let mut watch = Watch::NotYet;
    std::future::poll_fn(|cx| {
        if watch != Watch::NotYet && slot.is_killed() {
            return Poll::Ready(None);
        }
        if watch == Watch::Watching {
            let seen = client.poll_peek_watched(cx, terminate_counts);
            if client_left(seen, client, &mut watch) {
                return Poll::Ready(None);
            }
        }
        if let Poll::Ready(out) = wait.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        if watch == Watch::NotYet {
            watch = Watch::Watching;
            slot.wake.register(cx.waker());
            if slot.is_killed()
                || client_left(client.poll_peek(cx, terminate_counts), client, &mut watch)
            {
                return Poll::Ready(None);
            }
        }
        Poll::Pending
    })
    .await
}

/// Where the watch of the client stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Watch {
    /// The wait has not been polled yet (on the hot path it is ready at once).
    NotYet,
    /// The client is looked at each time the session wakes.
    Watching,
    /// The client sent data: it is there, and its socket is left alone.
    Stopped,
}

/// Whether what was seen on the client's socket says it has gone (end of file, a reset, a
/// lone Terminate). Data from it means it is still there: the watch stops, and the socket is
/// not looked at again.
#[inline]
fn client_left(seen: Poll<Peeked>, client: &Stream, watch: &mut Watch) -> bool {
    match seen {
        Poll::Ready(Peeked::Left) => true,
        Poll::Ready(Peeked::Terminate) => {
            // Read the goodbye, so that closing sends the client an orderly end of file
            // rather than the reset that unread bytes would cause.
            let _ = client.try_read(&mut [0u8; TERMINATE.len()]);
            true
        }
        Poll::Ready(Peeked::Data) => {
            *watch = Watch::Stopped;
            false
        }
        Poll::Pending => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::{Context, Waker};
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, Stream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (proxy_side, _) = l.accept().await.unwrap();
        (client, Stream::Tcp(proxy_side))
    }

    fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[tokio::test]
    async fn a_grant_that_finds_the_client_gone_is_not_taken() {
        let (client, stream) = pair().await;
        let (grant, granted) = tokio::sync::oneshot::channel::<()>();
        let slot = CancelSlot::default();
        let mut wait = pin!(unless_client_leaves(&stream, &slot, true, granted));
        assert!(poll_once(wait.as_mut()).is_pending(), "queued");
        // The client leaves, then the server is granted, before the session runs again.
        drop(client);
        grant.send(()).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            matches!(poll_once(wait.as_mut()), Poll::Ready(None)),
            "the goodbye came first"
        );
    }

    #[tokio::test]
    async fn a_client_that_stays_gets_its_grant() {
        let (client, stream) = pair().await;
        let (grant, granted) = tokio::sync::oneshot::channel::<()>();
        let slot = CancelSlot::default();
        let mut wait = pin!(unless_client_leaves(&stream, &slot, true, granted));
        assert!(poll_once(wait.as_mut()).is_pending(), "queued");
        grant.send(()).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(matches!(
            poll_once(wait.as_mut()),
            Poll::Ready(Some(Ok(())))
        ));
        drop(client);
    }

    #[tokio::test]
    async fn a_kill_ends_the_wait_and_wakes_it() {
        let (_client, stream) = pair().await;
        let (_grant, granted) = tokio::sync::oneshot::channel::<()>();
        let slot = CancelSlot::default();
        let woken = std::sync::Arc::new(Flag::default());
        let waker = Waker::from(woken.clone());
        let mut wait = pin!(unless_client_leaves(&stream, &slot, true, granted));
        assert!(wait
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        slot.kill();
        assert!(woken.0.load(std::sync::atomic::Ordering::SeqCst), "woken");
        assert!(matches!(poll_once(wait.as_mut()), Poll::Ready(None)));
    }

    /// A waker that records that it was woken.
    #[derive(Default)]
    struct Flag(std::sync::atomic::AtomicBool);

    impl std::task::Wake for Flag {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}
