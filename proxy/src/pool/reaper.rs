//! Background tasks that keep pools tidy: the reaper closes idle connections past
//! `idle_timeout` or `server_lifetime` and opens connections up to `min_pool_size`; the waiter
//! expiry fails checkouts queued past `checkout_timeout`.

use crate::pool::Pools;
use crate::shutdown::Shutdown;
use std::sync::Arc;
use std::time::Duration;

/// Runs the reaper every `period` until shutdown (spawn it on a worker).
pub async fn reaper(pools: Arc<Pools>, period: Duration, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.draining() => return,
        }
        let now = crate::clock::now_ms();
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

/// Fails queued checkouts past their deadline, every [`WAITER_EXPIRY_PERIOD`], until shutdown.
/// A task of its own, so a slow connect in the reaper never delays a timeout.
pub async fn expire_waiters(pools: Arc<Pools>, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(WAITER_EXPIRY_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.closing() => return,
        }
        let now = crate::clock::now_ns();
        for pool in pools.all() {
            for server in pool.servers().iter() {
                let expired = server.expire_waiters(now);
                if expired > 0 {
                    tracing::debug!(server = %server.name, expired, "checkouts timed out");
                }
            }
        }
    }
}
