//! Background tasks that keep pools tidy: the reaper closes idle connections past
//! `idle_timeout` or `server_lifetime` and opens connections up to `min_pool_size` (and rests
//! while there is no traffic and nothing due); the waiter expiry fails checkouts queued past
//! `checkout_timeout` (and rests while none is queued).

use crate::pool::Pools;
use crate::shutdown::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Set while the reaper rests: no client traffic, and nothing to do before its next deadline.
static REAPER_RESTING: AtomicBool = AtomicBool::new(false);
static REAPER_WAKE: Notify = Notify::const_new();

/// Called after a connection went onto an idle list (with the list's lock released): wakes the
/// reaper if it rests, since the connection's idle timeout is a deadline it does not know. A
/// relaxed load per checkin; the wake-up happens once per rest.
///
/// The order is enough: the reaper sets the flag before its last look at the idle lists, under
/// their locks. If that look came before this connection was pushed, the push's lock came after
/// it, and so does this load, which then sees the flag.
#[inline]
pub(super) fn connection_idle() {
    if REAPER_RESTING.load(Ordering::Relaxed) {
        REAPER_WAKE.notify_one();
    }
}

/// Called after a reload, which may have added pools or changed `idle_timeout_ms`,
/// `server_lifetime_ms` or `min_pool_size`: the reaper takes a new look.
pub(super) fn config_changed() {
    REAPER_WAKE.notify_one();
}

/// Runs the reaper until shutdown: every `period` while clients send anything; after a second
/// without client traffic it rests until the next idle timeout or lifetime is due, a
/// connection goes idle, or a reload, so an idle proxy does not wake each second for it.
/// A `min_pool_size` connection that cannot be opened is tried again every `period`.
pub async fn reaper(pools: Arc<Pools>, period: Duration, mut shutdown: Shutdown) {
    loop {
        let now = crate::clock::read_ms();
        let mut short = false;
        for pool in pools.all() {
            for server in pool.servers().iter() {
                let closed = server.reap(now);
                if closed > 0 {
                    tracing::debug!(server = %server.name, closed, "closed idle server connections");
                }
                short |= !server.fill_to_min().await;
            }
        }
        if short || !crate::clock::resting() {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = shutdown.draining() => return,
            }
            continue;
        }
        REAPER_RESTING.store(true, Ordering::SeqCst);
        // The last look, after the flag: a connection that goes idle from here on wakes us.
        let now = crate::clock::read_ms();
        let mut due = None::<u64>;
        for pool in pools.all() {
            for at in pool.servers().iter().filter_map(|s| s.next_reap(now)) {
                due = Some(due.map_or(at, |d| d.min(at)));
            }
        }
        let until_due = async {
            match due {
                Some(at) => tokio::time::sleep(Duration::from_millis(at - now)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = until_due => {}
            _ = REAPER_WAKE.notified() => {}
            _ = shutdown.draining() => return,
        }
        REAPER_RESTING.store(false, Ordering::SeqCst);
    }
}

/// How often queued checkouts are checked against `checkout_timeout`: a waiting client gets its
/// error at most this much late (never early).
pub const WAITER_EXPIRY_PERIOD: Duration = Duration::from_millis(50);

/// Set while the waiter expiry rests because no checkout waits anywhere.
static EXPIRY_RESTING: AtomicBool = AtomicBool::new(false);
static EXPIRY_WAKE: Notify = Notify::const_new();

/// Called by a checkout that has just joined a queue (with the queue's lock held): wakes the
/// waiter expiry if it rests. Only waiting checkouts pay for it.
pub(super) fn checkout_queued() {
    if EXPIRY_RESTING.load(Ordering::SeqCst) {
        EXPIRY_WAKE.notify_one();
    }
}

/// Fails queued checkouts past their deadline, every [`WAITER_EXPIRY_PERIOD`] while any
/// checkout waits, until shutdown; rests while none does. A task of its own, so a slow connect
/// in the reaper never delays a timeout.
///
/// It sets [`EXPIRY_RESTING`] before it looks at the queues for the last time, and a checkout
/// reads it after it joined a queue (under the queue's lock, which the look also takes): either
/// the look sees the checkout, or the checkout sees the flag and wakes it.
pub async fn expire_waiters(pools: Arc<Pools>, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(WAITER_EXPIRY_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let anyone_waits = |pools: &Pools| {
        pools
            .all()
            .iter()
            .any(|p| p.servers().iter().any(|s| s.waiting() > 0))
    };
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.closing() => return,
        }
        let now = crate::clock::now_ns();
        let mut waiting = false;
        for pool in pools.all() {
            for server in pool.servers().iter() {
                let expired = server.expire_waiters(now);
                if expired > 0 {
                    tracing::debug!(server = %server.name, expired, "checkouts timed out");
                }
                waiting |= server.waiting() > 0;
            }
        }
        if waiting {
            continue;
        }
        EXPIRY_RESTING.store(true, Ordering::SeqCst);
        if !anyone_waits(&pools) {
            tokio::select! {
                _ = EXPIRY_WAKE.notified() => {}
                _ = shutdown.closing() => return,
            }
            tick.reset();
        }
        EXPIRY_RESTING.store(false, Ordering::SeqCst);
    }
}
