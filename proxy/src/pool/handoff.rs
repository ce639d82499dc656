//! Connections handed straight to checkouts whose connect is slow.
//!
//! A checkout that finds no idle connection opens one, and normally that takes a few
//! milliseconds. When it takes long (a stalled postmaster, a handshake that a full listen queue
//! dropped and the kernel retries a second later, then two), the pool's other connections may
//! come free many times over meanwhile. Without a hand-off each would go to the idle list and
//! to the clients in line behind, while the slow one waits out `connect_timeout_ms` and may
//! fail. A checkout whose connect has taken longer than [`SLOW_CONNECT`] waits here too, and
//! the next connection given back goes to it, the longest waiting first. Its connect goes on
//! by itself and the connection it makes joins the pool if the pool has room for it (see
//! `Pooled::open_or_take_freed`).
//!
//! A pool nobody waits in pays one relaxed atomic load per connection given back.

use crate::server::ServerConn;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::oneshot;

/// How long a connect may take before its checkout also takes a connection given back. Well
/// above a login's few milliseconds, and above one across a continent, so that a pool that
/// grows under load opens its connections as usual.
pub const SLOW_CONNECT: Duration = Duration::from_millis(500);

/// The checkouts waiting for a connection given back, oldest first.
#[derive(Debug, Default)]
pub(super) struct Handoff {
    /// How many wait: read on every give-back, so it must be cheap.
    waiting: AtomicUsize,
    queue: Mutex<VecDeque<(u64, oneshot::Sender<Box<ServerConn>>)>>,
    next_id: AtomicU64,
}

/// A checkout's place in the [`Handoff`] queue; leaving it (dropped) takes the place out.
pub(super) struct Waiter<'a> {
    handoff: &'a Handoff,
    id: u64,
    rx: oneshot::Receiver<Box<ServerConn>>,
}

impl Handoff {
    /// Joins the queue.
    pub(super) fn wait(&self) -> Waiter<'_> {
        let (tx, rx) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.push_back((id, tx));
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Waiter {
            handoff: self,
            id,
            rx,
        }
    }

    /// Hands `conn` to the checkout that has waited longest; gives it back when none waits.
    #[inline]
    pub(super) fn offer(&self, conn: Box<ServerConn>) -> Option<Box<ServerConn>> {
        if self.waiting.load(Ordering::Relaxed) == 0 {
            return Some(conn);
        }
        self.offer_in_line(conn)
    }

    #[cold]
    fn offer_in_line(&self, mut conn: Box<ServerConn>) -> Option<Box<ServerConn>> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((_, tx)) = queue.pop_front() {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            match tx.send(conn) {
                Ok(()) => return None,
                // That checkout is gone (its future was dropped): the next one.
                Err(back) => conn = back,
            }
        }
        Some(conn)
    }
}

impl Waiter<'_> {
    /// The connection handed over; never comes if none is.
    pub(super) async fn handed(&mut self) -> Box<ServerConn> {
        match (&mut self.rx).await {
            Ok(conn) => conn,
            Err(_) => std::future::pending().await,
        }
    }

    /// Leaves the queue; a connection handed over just before comes back with it.
    pub(super) fn leave(mut self) -> Option<Box<ServerConn>> {
        self.take_place_out();
        self.rx.try_recv().ok()
    }

    fn take_place_out(&mut self) {
        let mut queue = self.handoff.queue.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = queue.iter().position(|(id, _)| *id == self.id) {
            queue.remove(i);
            self.handoff.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.take_place_out();
        // A connection handed over to a checkout that is gone (its client left): closed.
        if let Ok(conn) = self.rx.try_recv() {
            conn.terminate();
        }
    }
}
