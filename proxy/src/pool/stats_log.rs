//! The `stats` log line: every `general.stats_period_ms`, each pool that had traffic in the
//! period logs its rates and mean times, as PgBouncer does every `stats_period`; the console's
//! `SHOW STATS` shows the last period's as its `avg_*` columns. For an operator who reads logs
//! rather than `/metrics`; the line is computed from the same counters as `SHOW STATS`, off
//! the query path.

use super::{Pools, Totals};
use crate::live::LiveSettings;
use crate::shutdown::Shutdown;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A pool's rates and mean times over one period (all zero without traffic).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Period {
    pub transactions_per_s: f64,
    pub requests_per_s: f64,
    /// Bytes read from clients and written to them, per second.
    pub received_per_s: f64,
    pub sent_per_s: f64,
    /// Mean microseconds per transaction, request and checkout that ended in the period (a
    /// wait counts per transaction, as PgBouncer's `avg_wait_time`).
    pub transaction_us: u64,
    pub request_us: u64,
    pub wait_us: u64,
}

impl Period {
    /// The period from `before` to `now`, `secs` long; `None` without traffic.
    pub fn between(before: &Totals, now: &Totals, secs: f64) -> Option<Period> {
        let d = |f: fn(&Totals) -> u64| f(now).wrapping_sub(f(before));
        let (transactions, requests) = (d(|t| t.transactions), d(|t| t.requests));
        if transactions == 0 && requests == 0 {
            return None;
        }
        let mean = |us: u64, n: u64| us.checked_div(n).unwrap_or(0);
        Some(Period {
            transactions_per_s: transactions as f64 / secs,
            requests_per_s: requests as f64 / secs,
            received_per_s: d(|t| t.received) as f64 / secs,
            sent_per_s: d(|t| t.sent) as f64 / secs,
            transaction_us: mean(d(|t| t.transaction_us), transactions),
            request_us: mean(d(|t| t.request_us), requests),
            wait_us: mean(d(|t| t.waited_us), transactions),
        })
    }
}

/// Logs the `stats` lines until shutdown closes the clients. The period is read from the live
/// settings each time, so a reload changes it; 0 logs nothing.
pub async fn stats_log(pools: Arc<Pools>, live: Arc<LiveSettings>, mut shutdown: Shutdown) {
    let mut last: HashMap<(String, String), Totals> = HashMap::new();
    let mut since = Instant::now();
    loop {
        let period = live.general().stats_period_ms;
        // Off: look again now and then, in case a reload turns it on.
        let wait = Duration::from_millis(if period == 0 { 1000 } else { period });
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.closing() => return,
        }
        let secs = since.elapsed().as_secs_f64().max(0.001);
        since = Instant::now();
        for pool in pools.all() {
            let now = pool.stats.totals();
            let key = (pool.database.clone(), pool.user.clone());
            let before = last.insert(key, now).unwrap_or_default();
            if period == 0 {
                pool.stats.set_last_period(Period::default());
                continue;
            }
            let traffic = Period::between(&before, &now, secs);
            pool.stats.set_last_period(traffic.unwrap_or_default());
            if let Some(p) = traffic {
                tracing::info!(
                    database = %pool.database,
                    user = %pool.user,
                    xacts_per_s = format_args!("{:.1}", p.transactions_per_s),
                    requests_per_s = format_args!("{:.1}", p.requests_per_s),
                    received_bytes_per_s = p.received_per_s.round() as u64,
                    sent_bytes_per_s = p.sent_per_s.round() as u64,
                    xact_us = p.transaction_us,
                    request_us = p.request_us,
                    wait_us = p.wait_us,
                    "stats"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_period_gives_rates_and_means_and_nothing_without_traffic() {
        let before = Totals {
            transactions: 10,
            requests: 20,
            request_us: 1_000,
            transaction_us: 2_000,
            waited_us: 0,
            received: 1_000,
            sent: 10_000,
        };
        let now = Totals {
            transactions: 30,
            requests: 60,
            request_us: 5_000,
            transaction_us: 12_000,
            waited_us: 400,
            received: 3_000,
            sent: 50_000,
        };
        assert_eq!(
            Period::between(&before, &now, 2.0),
            Some(Period {
                transactions_per_s: 10.0,
                requests_per_s: 20.0,
                received_per_s: 1_000.0,
                sent_per_s: 20_000.0,
                transaction_us: 500,
                request_us: 100,
                wait_us: 20,
            })
        );
        assert_eq!(Period::between(&now, &now, 2.0), None);
    }
}
