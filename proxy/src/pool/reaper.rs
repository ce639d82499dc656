//! Background tasks that keep pools tidy: the reaper closes idle connections past
//! `idle_timeout` or `server_lifetime` and opens connections up to `min_pool_size`; the waiter
//! expiry fails checkouts queued past `checkout_timeout` (and rests while none is queued).

use crate::pool::Pools;
use crate::shutdown::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Runs the reaper every `period` until shutdown (spawn it on a worker).
pub async fn reaper(pools: Arc<Pools>, period: Duration, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.draining() => return,
        }
        let now = crate::clock::read_ms();
        for pool in pools.all() {
            for server in pool.servers().iter() {
                let closed = server.reap(now);
                if closed > 0 {
                    tracing::debug!(server = %server.name, closed, "closed idle server connections");
                }
                server.fill_to_min().await;
            }
        }
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
