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

/// The monotonic clock in nanoseconds, read now (`clock_gettime` through the vDSO, no system
/// call, about 25 ns): for durations that need better than the ticker's 50 ms. Read directly
/// rather than through `Instant::elapsed`, whose checked `timespec` arithmetic cost more
/// instructions than the read itself. Never 0, so 0 can stand for "not started".
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is always available on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
        | 1
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
