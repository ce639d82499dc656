//! A background task that keeps pools tidy: closes idle connections past `idle_timeout` or
//! `server_lifetime`, and opens connections up to `min_pool_size`.

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
            for server in pool.servers.iter() {
                let closed = server.reap(now);
                if closed > 0 {
                    tracing::debug!(server = %server.name, closed, "closed idle server connections");
                }
                server.fill_to_min().await;
            }
        }
    }
}
