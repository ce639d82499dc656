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

use crate::socket::{Peeked, Stream, TERMINATE};
use std::future::Future;
use std::pin::pin;
use std::task::Poll;

/// Runs `wait` (a checkout) unless the client leaves first: `None` when it has.
///
/// `terminate_counts`: the socket's next bytes start a message (the session holds no partial
/// one), so a lone Terminate there is a goodbye.
///
/// On the hot path `wait` is ready at its first poll and the socket is never looked at.
pub(super) async fn unless_client_leaves<F: Future>(
    client: &Stream,
    terminate_counts: bool,
    wait: F,
) -> Option<F::Output> {
    let mut wait = pin!(wait);
    let mut watching = true;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = wait.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        if watching {
            match client.poll_peek(cx, terminate_counts) {
                Poll::Ready(Peeked::Left) => return Poll::Ready(None),
                Poll::Ready(Peeked::Terminate) => {
                    // Read the goodbye, so that closing sends the client an orderly end of file
                    // rather than the reset that unread bytes would cause.
                    let _ = client.try_read(&mut [0u8; TERMINATE.len()]);
                    return Poll::Ready(None);
                }
                Poll::Ready(Peeked::Data) => watching = false,
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
}
