//! Graceful shutdown as a small type every task can hold.
//!
//! SIGTERM or SIGINT moves the proxy from `Running` to `Draining`: the listener stops accepting,
//! clients between transactions are told `57P01` and closed, clients inside a transaction may
//! finish it. After `shutdown_timeout_ms` the phase becomes `Closing` and everyone left is closed
//! the same way.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
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
pub struct ShutdownController {
    tx: watch::Sender<Phase>,
    phase: Arc<AtomicU8>,
}

/// The receiving side: cheap to clone, one per task.
///
/// Background tasks await [`Shutdown::draining`]; client sessions, which wait on every
/// transaction, read [`Shutdown::phase`] (one atomic load) and are woken through their
/// registry entry instead of registering with the channel each time.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<Phase>,
    phase: Arc<AtomicU8>,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Running,
            1 => Phase::Draining,
            _ => Phase::Closing,
        }
    }
}

impl ShutdownController {
    pub fn new() -> (Self, Shutdown) {
        let (tx, rx) = watch::channel(Phase::Running);
        let phase = Arc::new(AtomicU8::new(Phase::Running as u8));
        (
            ShutdownController {
                tx,
                phase: phase.clone(),
            },
            Shutdown { rx, phase },
        )
    }

    /// Moves to a later phase (never back).
    pub fn enter(&self, phase: Phase) {
        self.phase.fetch_max(phase as u8, Ordering::AcqRel);
        self.tx.send_if_modified(|p| {
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
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Resolves when the phase is at least `Draining`.
    pub async fn draining(&mut self) {
        let _ = self.rx.wait_for(|p| *p >= Phase::Draining).await;
    }

    /// Resolves when the phase is `Closing`.
    pub async fn closing(&mut self) {
        let _ = self.rx.wait_for(|p| *p >= Phase::Closing).await;
    }
}

/// Counts live client sessions so shutdown can wait for them.
#[derive(Debug, Default)]
pub struct ClientCounter {
    count: AtomicUsize,
    zero: Notify,
}

/// Held by each client task; leaving decrements the count.
pub struct ClientGuard(Arc<ClientCounter>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.zero.notify_waiters();
        }
    }
}

impl ClientCounter {
    /// Registers a client, unless `max` are already connected.
    pub fn try_enter(self: &Arc<Self>, max: usize) -> Option<ClientGuard> {
        let mut n = self.count.load(Ordering::Acquire);
        loop {
            if n >= max {
                return None;
            }
            match self
                .count
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(ClientGuard(self.clone())),
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
