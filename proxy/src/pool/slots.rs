//! The checkout slots of one server pool: at most `pool_size` connections checked out at once,
//! and the sessions waiting for one, served first come, first served.
//!
//! Why not `tokio::sync::Semaphore` with `tokio::time::timeout`: every waiting checkout then paid
//! for a timer of its own (put into tokio's timer wheel and taken out again) and a boxed future,
//! and returning a permit always took the semaphore's lock as well as the idle list's. With 100
//! clients on a pool of 20 most checkouts wait: that was about 1,500 instructions per
//! transaction (callgrind). Here taking and returning a slot is one uncontended lock each; a
//! waiter is one queue entry, and waiters past their deadline are failed by [`Slots::expire`],
//! which the pools' janitor runs every 50 ms (PgBouncer, too, times out waiting clients from its
//! periodic janitor rather than with a timer per client).
//!
//! The admin console's `PAUSE` holds the slots: checkouts queue as if none were free, until
//! `RESUME` serves the queue in order.

use crate::clock;
use atomic_waker::AtomicWaker;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

const WAITING: u8 = 0;
const GRANTED: u8 = 1;
const EXPIRED: u8 = 2;

/// Slots of one server pool. Shared (`Arc`) with the checked-out connections, which give their
/// slot back when they are returned or dropped.
#[derive(Debug)]
pub struct Slots {
    queue: Mutex<VecDeque<Arc<Waiter>>>,
    /// Free slots. Changed only under the `queue` lock (so a slot is never free while someone
    /// waits), read without it for statistics.
    free: AtomicU32,
    /// Microseconds checkouts spent in the queue, for the admin console's `SHOW STATS`
    /// (bumped only by a checkout that waited). Shared by the slots of all the servers of one
    /// (database, user) pool (see [`Slots::count_waits_in`]).
    waited_us: WaitTotal,
    /// The admin console's `PAUSE`: no slot is handed out, free or given back, until
    /// [`Slots::resume`]; checkouts wait in the queue meanwhile. Changed only under the `queue`
    /// lock, and read under it where a slot is taken (one more load on a lock already held).
    paused: AtomicBool,
}

/// Microseconds checkouts waited in line, summed over the servers that add to it. A pool's
/// servers share one, which outlives the servers a reload replaces: the pool's total never goes
/// back (Prometheus reads a counter that decreases as a restart from zero).
pub type WaitTotal = Arc<AtomicU64>;

/// One waiting checkout. Its status changes only under the queue lock.
#[derive(Debug)]
struct Waiter {
    status: AtomicU8,
    waker: AtomicWaker,
    /// When it started waiting and when it expires, in [`clock::now_ns`] nanoseconds (an
    /// `Instant` would cost its checked arithmetic on every wait).
    since: u64,
    deadline: u64,
}

/// At most this many finished waiters are kept per thread for reuse.
const SPARES: usize = 256;

thread_local! {
    /// Finished waiters kept for the next waits on this thread: waiting is common when clients
    /// outnumber `pool_size`, and this saves an allocation and a free per wait.
    static SPARE: std::cell::RefCell<Vec<Arc<Waiter>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Waiter {
    /// A waiter for a checkout that starts waiting now, reusing this thread's spare if it has one.
    fn start(timeout: Duration) -> Arc<Waiter> {
        let since = clock::now_ns();
        let fresh = Waiter {
            status: AtomicU8::new(WAITING),
            waker: AtomicWaker::new(),
            since,
            deadline: since.saturating_add(timeout.as_nanos() as u64),
        };
        match SPARE.with_borrow_mut(Vec::pop) {
            Some(mut spare) => match Arc::get_mut(&mut spare) {
                Some(w) => {
                    *w = fresh;
                    spare
                }
                None => Arc::new(fresh),
            },
            None => Arc::new(fresh),
        }
    }

    /// Keeps a finished waiter as one of this thread's spares, if nobody else holds it.
    fn retire(w: Arc<Waiter>) {
        if Arc::strong_count(&w) == 1 {
            // A spare must not keep the task of a session that may end alive.
            drop(w.waker.take());
            SPARE.with_borrow_mut(|spares| {
                if spares.len() < SPARES {
                    spares.push(w);
                }
            });
        }
    }
}

/// The checkout waited this long, past its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired(pub Duration);

impl Slots {
    /// `n` free slots.
    pub fn new(n: u32) -> Slots {
        Slots {
            queue: Mutex::new(VecDeque::new()),
            free: AtomicU32::new(n),
            waited_us: WaitTotal::default(),
            paused: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Arc<Waiter>>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Free slots right now.
    pub fn free(&self) -> u32 {
        self.free.load(Ordering::Relaxed)
    }

    /// Checkouts waiting right now (takes the queue's lock: for the admin console and tests).
    pub fn waiting(&self) -> usize {
        self.lock().len()
    }

    /// Microseconds checkouts spent waiting in line, since start, in these slots and those
    /// that share their total (the pool reads the total itself).
    #[cfg(test)]
    pub fn waited_us(&self) -> u64 {
        self.waited_us.load(Ordering::Relaxed)
    }

    /// Adds the waits from now on to `total`, which other slots may share.
    pub fn count_waits_in(&mut self, total: WaitTotal) {
        self.waited_us = total;
    }

    /// Whether [`Slots::pause`] holds the slots.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Stops handing out slots: checkouts queue, even for a free slot, and slots given back
    /// stay free, until [`Slots::resume`]. Whoever holds a slot keeps it.
    pub fn pause(&self) {
        let _queue = self.lock();
        self.paused.store(true, Ordering::Relaxed);
    }

    /// Hands slots out again: the free ones go to the queue's first waiters, in order.
    pub fn resume(&self) {
        let mut queue = self.lock();
        self.paused.store(false, Ordering::Relaxed);
        let mut free = self.free.load(Ordering::Relaxed);
        let mut granted = Vec::new();
        while free > 0 {
            let Some(w) = queue.pop_front() else { break };
            w.status.store(GRANTED, Ordering::Release);
            granted.push(w);
            free -= 1;
        }
        self.free.store(free, Ordering::Relaxed);
        drop(queue);
        granted.iter().for_each(|w| w.waker.wake());
    }

    /// Takes a slot if one is free and nobody is waiting for it.
    pub fn try_take(&self) -> bool {
        let queue = self.lock();
        let free = self.free.load(Ordering::Relaxed);
        if free > 0 && queue.is_empty() && !self.is_paused() {
            self.free.store(free - 1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// Takes a slot, waiting in line behind earlier checkouts for up to `timeout` (enforced by
    /// [`Slots::expire`]).
    pub fn take(&self, timeout: Duration) -> Take<'_> {
        Take {
            slots: self,
            waiter: None,
            timeout,
            done: false,
        }
    }

    /// Gives a slot back: to the first waiter, if any (and not paused), else to the free count.
    pub fn give_back(&self) {
        let mut queue = self.lock();
        let next = if self.is_paused() {
            None
        } else {
            queue.pop_front()
        };
        match next {
            Some(w) => {
                w.status.store(GRANTED, Ordering::Release);
                drop(queue);
                w.waker.wake();
            }
            None => {
                let free = self.free.load(Ordering::Relaxed);
                self.free.store(free + 1, Ordering::Relaxed);
            }
        }
    }

    /// Fails the waiters whose deadline is past at `now` ([`clock::now_ns`]); returns how many.
    pub fn expire(&self, now: u64) -> usize {
        self.expire_where(|w| w.deadline <= now)
    }

    /// Fails every waiting checkout now (its pool was retired by a reload); returns how many.
    pub fn expire_all(&self) -> usize {
        self.expire_where(|_| true)
    }

    fn expire_where(&self, due: impl Fn(&Waiter) -> bool) -> usize {
        let mut queue = self.lock();
        if !queue.iter().any(|w| due(w)) {
            return 0;
        }
        let mut expired = Vec::new();
        queue.retain(|w| {
            if due(w) {
                w.status.store(EXPIRED, Ordering::Release);
                expired.push(w.clone());
                false
            } else {
                true
            }
        });
        drop(queue);
        expired.iter().for_each(|w| w.waker.wake());
        expired.len()
    }
}

/// A checkout's wait for a slot (see [`Slots::take`]). Dropped before it resolves (the client
/// left while queued), it leaves the queue, and a slot granted meanwhile goes to the next.
#[derive(Debug)]
pub struct Take<'a> {
    slots: &'a Slots,
    waiter: Option<Arc<Waiter>>,
    timeout: Duration,
    done: bool,
}

impl Future for Take<'_> {
    type Output = Result<(), Expired>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(Ok(()));
        }
        let Some(w) = &this.waiter else {
            let mut queue = this.slots.lock();
            let free = this.slots.free.load(Ordering::Relaxed);
            if free > 0 && queue.is_empty() && !this.slots.is_paused() {
                this.slots.free.store(free - 1, Ordering::Relaxed);
                this.done = true;
                return Poll::Ready(Ok(()));
            }
            // Only a waiting checkout reads the clock (and, the first time, allocates).
            let w = Waiter::start(this.timeout);
            w.waker.register(cx.waker());
            queue.push_back(w.clone());
            super::reaper::checkout_queued();
            this.waiter = Some(w);
            return Poll::Pending;
        };
        // Register before reading the status: a grant after the read wakes this waker.
        w.waker.register(cx.waker());
        let status = w.status.load(Ordering::Acquire);
        if status == WAITING {
            return Poll::Pending;
        }
        this.done = true;
        let waited_ns = clock::now_ns().saturating_sub(w.since);
        this.slots
            .waited_us
            .fetch_add(waited_ns / 1000, Ordering::Relaxed);
        let outcome = match status {
            GRANTED => Ok(()),
            _ => Err(Expired(Duration::from_nanos(waited_ns))),
        };
        Poll::Ready(outcome)
    }
}

impl Drop for Take<'_> {
    fn drop(&mut self) {
        let Some(w) = self.waiter.take() else {
            return;
        };
        if !self.done {
            let mut queue = self.slots.lock();
            match w.status.load(Ordering::Acquire) {
                GRANTED => {
                    drop(queue);
                    self.slots.give_back();
                }
                WAITING => {
                    if let Some(i) = queue.iter().position(|q| Arc::ptr_eq(q, &w)) {
                        queue.remove(i);
                    }
                }
                _ => {}
            }
        }
        Waiter::retire(w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn poll(t: &mut Take<'_>) -> Poll<Result<(), Expired>> {
        Pin::new(t).poll(&mut Context::from_waker(Waker::noop()))
    }

    const T: Duration = Duration::from_secs(100);

    #[test]
    fn free_slots_are_taken_at_once_then_checkouts_queue_in_order() {
        let s = Slots::new(1);
        let mut a = s.take(T);
        assert_eq!(poll(&mut a), Poll::Ready(Ok(())));
        let mut b = s.take(T);
        let mut c = s.take(T);
        assert!(poll(&mut b).is_pending());
        assert!(poll(&mut c).is_pending());
        assert!(!s.try_take(), "nobody jumps the queue");
        assert_eq!(s.waiting(), 2);
        s.give_back();
        assert_eq!(
            poll(&mut c),
            Poll::Pending,
            "the first in line is served first"
        );
        assert_eq!(poll(&mut b), Poll::Ready(Ok(())));
        s.give_back();
        assert_eq!(poll(&mut c), Poll::Ready(Ok(())));
        s.give_back();
        assert_eq!(s.free(), 1);
    }

    #[test]
    fn a_pause_queues_every_checkout_and_a_resume_serves_them_in_order() {
        let s = Slots::new(2);
        let mut held = s.take(T);
        assert_eq!(poll(&mut held), Poll::Ready(Ok(())));
        s.pause();
        assert!(s.is_paused());
        let mut a = s.take(T);
        let mut b = s.take(T);
        assert!(poll(&mut a).is_pending(), "a free slot is not handed out");
        assert!(poll(&mut b).is_pending());
        assert!(!s.try_take(), "nor taken by the pool's own upkeep");
        s.give_back();
        assert_eq!(s.free(), 2, "a slot given back stays free");
        assert!(poll(&mut a).is_pending());
        let mut c = s.take(T);
        assert!(poll(&mut c).is_pending());
        s.resume();
        assert!(!s.is_paused());
        assert_eq!(poll(&mut a), Poll::Ready(Ok(())), "first in line");
        assert_eq!(poll(&mut b), Poll::Ready(Ok(())));
        assert!(poll(&mut c).is_pending(), "two free slots, two grants");
        s.give_back();
        assert_eq!(poll(&mut c), Poll::Ready(Ok(())));
    }

    #[test]
    fn only_checkouts_that_waited_add_to_the_wait_time() {
        let s = Slots::new(1);
        let mut a = s.take(T);
        assert_eq!(poll(&mut a), Poll::Ready(Ok(())));
        assert_eq!(s.waited_us(), 0, "a free slot costs no wait");
        let mut b = s.take(T);
        assert!(poll(&mut b).is_pending());
        std::thread::sleep(Duration::from_millis(20));
        s.give_back();
        assert_eq!(poll(&mut b), Poll::Ready(Ok(())));
        let waited = s.waited_us();
        assert!((20_000..10_000_000).contains(&waited), "{waited} µs");
    }

    #[test]
    fn slots_that_share_a_total_add_their_waits_to_it() {
        let total = WaitTotal::default();
        let (mut old, mut new) = (Slots::new(0), Slots::new(0));
        old.count_waits_in(total.clone());
        new.count_waits_in(total.clone());
        // A reload retires `old` while a checkout waits there: its wait still counts.
        let mut a = old.take(T);
        assert!(poll(&mut a).is_pending());
        std::thread::sleep(Duration::from_millis(10));
        old.expire_all();
        assert!(matches!(poll(&mut a), Poll::Ready(Err(Expired(_)))));
        let first = total.load(Ordering::Relaxed);
        assert!(first >= 10_000, "{first} µs");
        let mut b = new.take(T);
        assert!(poll(&mut b).is_pending());
        std::thread::sleep(Duration::from_millis(10));
        new.give_back();
        assert_eq!(poll(&mut b), Poll::Ready(Ok(())));
        assert!(total.load(Ordering::Relaxed) >= first + 10_000);
        assert_eq!(old.waited_us(), new.waited_us());
    }

    #[test]
    fn waiters_past_their_deadline_expire() {
        let s = Slots::new(0);
        let start = clock::now_ns();
        let mut early = s.take(Duration::from_secs(100));
        let mut late = s.take(Duration::from_secs(200));
        assert!(poll(&mut early).is_pending());
        assert!(poll(&mut late).is_pending());
        assert_eq!(s.expire(start), 0);
        assert_eq!(s.expire(start + 150_000_000_000), 1);
        assert!(matches!(poll(&mut early), Poll::Ready(Err(Expired(_)))));
        assert!(poll(&mut late).is_pending());
        s.give_back();
        assert_eq!(poll(&mut late), Poll::Ready(Ok(())));
    }

    #[test]
    fn a_dropped_waiter_leaves_the_queue_and_passes_on_a_grant() {
        let s = Slots::new(0);
        let mut gone = s.take(T);
        assert!(poll(&mut gone).is_pending());
        drop(gone);
        assert_eq!(s.waiting(), 0);
        s.give_back();
        assert_eq!(s.free(), 1, "nobody waits: the slot is free");

        let s = Slots::new(0);
        let mut granted_then_gone = s.take(T);
        let mut next = s.take(T);
        assert!(poll(&mut granted_then_gone).is_pending());
        assert!(poll(&mut next).is_pending());
        s.give_back();
        drop(granted_then_gone);
        assert_eq!(poll(&mut next), Poll::Ready(Ok(())), "the grant went on");
        drop(next);
        assert_eq!(
            s.free(),
            0,
            "a resolved take keeps its slot until given back"
        );
    }
}
