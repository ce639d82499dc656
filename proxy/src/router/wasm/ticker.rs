//! The epoch ticker: the thread that advances wasmtime's epoch, so that a plugin call that
//! runs too long reaches its deadline and is stopped.
//!
//! It ticks every [`EPOCH_TICK`] while plugins are being called, and parks when none has been
//! called for [`PARK_AFTER`]: an idle proxy then has no thread waking 200 times a second. The
//! first call after that wakes it (one `futex` wake; calls in a busy proxy never do).
//!
//! A call marks its start and end on a counter of its thread ([`CallMark`]); the ticker sums
//! the counters at each tick. It parks only when no call is running and none started since the
//! last look. The handshake that makes this safe is the classic one of two flags: the ticker
//! sets [`PARKED`] and then reads the counters; a call bumps its counter and then reads
//! `PARKED` (both sequentially consistent). At least one of them sees the other's write, so
//! either the ticker stays awake or the call wakes it; a call never runs without ticks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::Thread;
use std::time::Duration;
use wasmtime::{Engine, EngineWeak};

/// How often the epoch advances while plugins run. Each wake-up of the ticker thread costs CPU
/// (measured: a 1 ms tick took ~22 ms of CPU per second, ~1 µs per transaction at 20k tps); at
/// 5 ms it is a fifth of that; a tick is also the granularity of the deadline checks.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// How long the ticker keeps ticking after the last call.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// Set by the ticker just before it parks; a call that sees it wakes the ticker.
static PARKED: AtomicBool = AtomicBool::new(false);

/// The ticker thread, to wake it.
static TICKER: OnceLock<Thread> = OnceLock::new();

/// Every thread's call counter (odd while a call runs), for the ticker to sum.
static COUNTERS: Mutex<Vec<Weak<AtomicU64>>> = Mutex::new(Vec::new());

thread_local! {
    static COUNTER: Arc<AtomicU64> = {
        let counter = Arc::new(AtomicU64::new(0));
        let mut all = COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|c| c.strong_count() > 0);
        all.push(Arc::downgrade(&counter));
        counter
    };
}

/// Starts the ticker thread for `engine`; it ends when the engine is dropped.
pub fn spawn(engine: &Engine) {
    let engine = engine.weak();
    let thread = std::thread::Builder::new()
        .name("switchyard-epoch".into())
        .spawn(move || run(engine))
        .expect("spawn the epoch ticker");
    let _ = TICKER.set(thread.thread().clone());
}

fn run(engine: EngineWeak) {
    let park_after = PARK_AFTER.as_millis() / EPOCH_TICK.as_millis();
    let mut last = calls();
    let mut quiet = 0;
    loop {
        std::thread::sleep(EPOCH_TICK);
        match engine.upgrade() {
            Some(e) => e.increment_epoch(),
            None => return,
        }
        let now = calls();
        if now.running || now.sum != last.sum {
            (last, quiet) = (now, 0);
            continue;
        }
        quiet += 1;
        if quiet < park_after {
            continue;
        }
        PARKED.store(true, Ordering::SeqCst);
        // A call that started after the look above either shows here or saw `PARKED`.
        let again = calls();
        if !again.running && again.sum == last.sum {
            std::thread::park();
        }
        PARKED.store(false, Ordering::SeqCst);
        (last, quiet) = (calls(), 0);
    }
}

/// What the counters say: their sum (which any call start or end changes) and whether a
/// call is running now.
#[derive(Clone, Copy)]
struct Calls {
    sum: u64,
    running: bool,
}

fn calls() -> Calls {
    let all = COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
    let mut calls = Calls {
        sum: 0,
        running: false,
    };
    for counter in all.iter().filter_map(Weak::upgrade) {
        let n = counter.load(Ordering::SeqCst);
        calls.sum = calls.sum.wrapping_add(n);
        calls.running |= n % 2 == 1;
    }
    calls
}

/// Marks a plugin call as running on this thread until dropped, and wakes the ticker if it
/// parked. A few cycles more than the call's other bookkeeping: a locked add and a load at the
/// start, a plain add at the end, on a counter this thread alone writes.
pub struct CallMark(());

impl CallMark {
    /// Call before the call's deadline is armed.
    #[inline]
    pub fn start() -> CallMark {
        COUNTER.with(|c| c.fetch_add(1, Ordering::SeqCst));
        if PARKED.load(Ordering::SeqCst) {
            if let Some(t) = TICKER.get() {
                t.unpark();
            }
        }
        CallMark(())
    }
}

impl Drop for CallMark {
    #[inline]
    fn drop(&mut self) {
        COUNTER.with(|c| c.fetch_add(1, Ordering::Release));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_call_shows_and_every_start_and_end_changes_the_sum() {
        let before = calls();
        let mark = CallMark::start();
        let during = calls();
        assert!(during.running);
        assert_ne!(during.sum, before.sum);
        drop(mark);
        let after = calls();
        assert_ne!(after.sum, during.sum);
        // Other tests' threads may be in calls of their own: this thread's counter is even.
        assert_eq!(COUNTER.with(|c| c.load(Ordering::SeqCst)) % 2, 0);
    }
}
