//! A coarse monotonic clock: milliseconds since start, updated every 50 ms by a ticker task.
//!
//! Pool bookkeeping (when a connection went idle, when it retires) runs on every transaction and
//! needs no precision finer than the ticker's; an atomic load is cheaper than `clock_gettime`.
//!
//! The ticker rests after a second without client traffic, so an idle proxy does not wake 20
//! times a second for it. While it rests, the clock holds [`RESTING`] instead of a time, and a
//! reader reads the system clock instead: [`now_ms`] (the query path's reads) then also wakes
//! the ticker, since traffic is back; [`read_ms`] (periodic and occasional readers) does not.
//! A reader never gets a stale time, whatever the ticker does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

const PERIOD: Duration = Duration::from_millis(50);

/// How long the ticker goes on without traffic before it rests.
const REST_AFTER: Duration = Duration::from_secs(1);

/// What the clock holds while its ticker rests.
const RESTING: u64 = u64::MAX;

/// A clock and the means to wake its ticker. The process has one ([`CLOCK`]); tests make
/// their own.
struct Clock {
    start: OnceLock<Instant>,
    now_ms: AtomicU64,
    wake: Notify,
}

static CLOCK: Clock = Clock::new();

impl Clock {
    const fn new() -> Clock {
        Clock {
            start: OnceLock::new(),
            now_ms: AtomicU64::new(0),
            wake: Notify::const_new(),
        }
    }

    fn elapsed_ms(&self) -> u64 {
        self.start.get_or_init(Instant::now).elapsed().as_millis() as u64
    }

    fn update(&self) {
        self.now_ms.store(self.elapsed_ms(), Ordering::Relaxed);
    }

    #[inline]
    fn now_ms(&self) -> u64 {
        let now = self.now_ms.load(Ordering::Relaxed);
        if now != RESTING {
            return now;
        }
        self.woken()
    }

    /// The first query-path read since the ticker rested: the time now, kept for the readers
    /// that come before the ticker runs again.
    #[cold]
    #[inline(never)]
    fn woken(&self) -> u64 {
        let now = self.elapsed_ms();
        // Another reader may have set it already: either value is the time now.
        let _ = self
            .now_ms
            .compare_exchange(RESTING, now, Ordering::Relaxed, Ordering::Relaxed);
        self.wake.notify_one();
        now
    }

    fn read_ms(&self) -> u64 {
        match self.now_ms.load(Ordering::Relaxed) {
            RESTING => self.elapsed_ms(),
            now => now,
        }
    }

    /// Ticks until `shutdown` closes, resting while `traffic` (a count that any client traffic
    /// changes) stays the same for [`REST_AFTER`].
    async fn tick(
        &self,
        traffic: impl Fn() -> u64,
        mut shutdown: crate::shutdown::Shutdown,
        period: Duration,
        rest_after: Duration,
    ) {
        let rest_after = (rest_after.as_millis() / period.as_millis()) as u32;
        let mut tick = tokio::time::interval(period);
        let (mut last, mut quiet) = (traffic(), 0);
        loop {
            tokio::select! {
                _ = tick.tick() => self.update(),
                _ = shutdown.closing() => return,
            }
            let seen = traffic();
            if seen != last {
                (last, quiet) = (seen, 0);
                continue;
            }
            quiet += 1;
            if quiet < rest_after {
                continue;
            }
            self.now_ms.store(RESTING, Ordering::Relaxed);
            // A reader that saw `RESTING` before this wait began left a permit: no wake-up is
            // lost.
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = shutdown.closing() => return,
            }
            self.update();
            (last, quiet) = (traffic(), 0);
            tick.reset();
        }
    }
}

/// Milliseconds since the clock started (at most one tick stale). For the query path: a read
/// while the ticker rests wakes it.
#[inline]
pub fn now_ms() -> u64 {
    CLOCK.now_ms()
}

/// [`now_ms`] for readers that are not traffic (the reaper, the console, `/metrics`): a read
/// while the ticker rests does not wake it.
pub fn read_ms() -> u64 {
    CLOCK.read_ms()
}

/// Whether the ticker rests: no client traffic for a while (see the module's comment).
pub fn resting() -> bool {
    CLOCK.now_ms.load(Ordering::Relaxed) == RESTING
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

/// Starts the ticker on the current runtime; it stops when `shutdown` closes. `traffic` is a
/// count that client traffic changes (the pools' bytes received, say).
pub fn spawn_ticker(
    shutdown: crate::shutdown::Shutdown,
    traffic: impl Fn() -> u64 + Send + 'static,
) {
    CLOCK.update();
    tokio::spawn(CLOCK.tick(traffic, shutdown, PERIOD, REST_AFTER));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    #[tokio::test]
    async fn the_ticker_rests_without_traffic_and_a_reader_still_gets_the_time() {
        static TEST_CLOCK: Clock = Clock::new();
        let c = &TEST_CLOCK;
        let traffic = Arc::new(AtomicU64::new(0));
        let (_stop, shutdown) = crate::shutdown::ShutdownController::new();
        let seen = traffic.clone();
        c.update();
        let ticker = tokio::spawn(c.tick(
            move || seen.load(Ordering::Relaxed),
            shutdown,
            Duration::from_millis(10),
            Duration::from_millis(100),
        ));
        // Traffic keeps it ticking.
        for i in 1..=20 {
            traffic.store(i, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_ne!(c.now_ms.load(Ordering::Relaxed), RESTING);
        // Without traffic it rests; readers get the time all the same.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(c.now_ms.load(Ordering::Relaxed), RESTING);
        let real = c.elapsed_ms();
        assert!(c.read_ms() >= real);
        assert_eq!(
            c.now_ms.load(Ordering::Relaxed),
            RESTING,
            "read_ms leaves it resting"
        );
        // A query-path read wakes it, and the time moves on again.
        let woken_at = c.now_ms();
        assert!(woken_at >= real);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let later = c.now_ms.load(Ordering::Relaxed);
        assert!(
            later != RESTING && later > woken_at,
            "ticking again: {later}"
        );
        ticker.abort();
    }
}
