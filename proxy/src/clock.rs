//! A coarse monotonic clock: milliseconds since start, updated every 50 ms by a ticker task.
//!
//! Pool bookkeeping (when a connection went idle, when it retires) runs on every transaction and
//! needs no precision finer than the ticker's; an atomic load is cheaper than `clock_gettime`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

static START: OnceLock<Instant> = OnceLock::new();
static NOW_MS: AtomicU64 = AtomicU64::new(0);

const PERIOD: Duration = Duration::from_millis(50);

fn update() {
    let start = START.get_or_init(Instant::now);
    NOW_MS.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
}

/// Milliseconds since the clock started (at most one tick stale).
pub fn now_ms() -> u64 {
    NOW_MS.load(Ordering::Relaxed)
}

/// Nanoseconds since the clock started, read now (`clock_gettime` through the vDSO, no
/// system call): for durations that need better than the ticker's 50 ms. Never 0, so 0 can
/// stand for "not started".
pub fn now_ns() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64 | 1
}

/// Starts the ticker on the current runtime; it stops when `stop` resolves.
pub fn spawn_ticker(mut shutdown: crate::shutdown::Shutdown) {
    update();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PERIOD);
        loop {
            tokio::select! {
                _ = tick.tick() => update(),
                _ = shutdown.closing() => return,
            }
        }
    });
}
