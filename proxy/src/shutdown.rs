//! Graceful shutdown as a small type every task can hold.
//!
//! SIGTERM or SIGINT moves the proxy from `Running` to `Draining`: the listener stops accepting,
//! clients between transactions are told `57P01` and closed, clients inside a transaction may
//! finish it. After `shutdown_timeout_ms` the phase becomes `Closing` and everyone left is closed
//! the same way.

use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{watch, Notify};

/// Where the proxy is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    Draining,
    Closing,
}

/// The sending side, owned by `run`.
#[derive(Debug)]
pub struct ShutdownController(watch::Sender<Phase>);

/// The receiving side: cheap to clone, one per task.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<Phase>);

impl ShutdownController {
    pub fn new() -> (Self, Shutdown) {
        let (tx, rx) = watch::channel(Phase::Running);
        (ShutdownController(tx), Shutdown(rx))
    }

    /// Moves to a later phase (never back).
    pub fn enter(&self, phase: Phase) {
        self.0.send_if_modified(|p| {
            let later = phase > *p;
            if later {
                *p = phase;
            }
            later
        });
    }
}

impl Shutdown {
    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.0.borrow()
    }

    /// Resolves when the phase is at least `Draining`.
    pub async fn draining(&mut self) {
        let _ = self.0.wait_for(|p| *p >= Phase::Draining).await;
    }

    /// Resolves with the new phase when it changes; never, if the controller is gone.
    pub async fn changed(&mut self) -> Phase {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        *self.0.borrow_and_update()
    }
}

/// Counts live client sessions so shutdown can wait for them.
#[derive(Debug, Default)]
pub struct ClientCounter {
    count: AtomicUsize,
    zero: Notify,
}

/// Held by each client task; leaving decrements the count.
pub struct ClientGuard<'a>(&'a ClientCounter);

impl Drop for ClientGuard<'_> {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.zero.notify_waiters();
        }
    }
}

impl ClientCounter {
    /// Registers a client, unless `max` are already connected.
    pub fn try_enter(&self, max: usize) -> Option<ClientGuard<'_>> {
        let mut n = self.count.load(Ordering::Acquire);
        loop {
            if n >= max {
                return None;
            }
            match self
                .count
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(ClientGuard(self)),
                Err(now) => n = now,
            }
        }
    }

    /// Clients connected now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Resolves once no client is connected.
    pub async fn wait_zero(&self) {
        loop {
            let notified = self.zero.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}
