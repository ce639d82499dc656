//! Traffic counters of one (database, user) pool, for the admin console's `SHOW STATS` and
//! `/metrics`. (The time checkouts waited is added by the servers' slots, off the fast path,
//! to one total of the pool's.)
//!
//! They are bumped on the query path, so they cost no lock and no contended cache line: one
//! shard per worker thread, each written only by its worker's sessions (a session lives on one
//! worker), with a plain load and store rather than an atomic read-modify-write. The console
//! sums the shards. A shard is a cache line of its own, so two workers never write the same
//! line.

use super::slots::WaitTotal;
use super::stats_log::Period;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The counters one worker keeps for a pool.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Shard {
    /// ReadyForQuery messages forwarded to clients with status idle: transactions ended
    /// (a statement outside a transaction block is one).
    transactions: AtomicU64,
    /// ReadyForQuery messages forwarded to clients: requests answered (a simple Query, or
    /// extended-protocol messages up to a Sync).
    requests: AtomicU64,
    /// Microseconds from a request sent to its ReadyForQuery.
    request_us: AtomicU64,
    /// Microseconds from a transaction's first request to the ReadyForQuery that ended it.
    transaction_us: AtomicU64,
    /// Bytes read from clients, and written to them.
    received: AtomicU64,
    sent: AtomicU64,
}

/// Adds `n` to a counter only this thread writes.
#[inline]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// A pool's traffic counters, sharded per worker.
#[derive(Debug)]
pub struct PoolStats {
    shards: Box<[Shard]>,
    /// Microseconds checkouts waited in line, added by the slots of every server the pool has
    /// had: a server a reload replaced leaves its part here.
    waited_us: WaitTotal,
    /// The rates and means of the last `stats_period_ms` (see `stats_log`), for `SHOW STATS`.
    last_period: Mutex<Period>,
}

/// The sums of a pool's counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub transactions: u64,
    pub requests: u64,
    /// Microseconds servers worked on requests (PgBouncer's `total_query_time`).
    pub request_us: u64,
    /// Microseconds servers were held by transactions (PgBouncer's `total_xact_time`).
    pub transaction_us: u64,
    /// Microseconds checkouts waited in line for a server connection.
    pub waited_us: u64,
    /// Bytes read from clients (PgBouncer's `total_received`).
    pub received: u64,
    /// Bytes written to clients (PgBouncer's `total_sent`).
    pub sent: u64,
}

/// What a session adds to its pool's counters at once: a batch of answers and the bytes that
/// passed since the last batch (see `Totals` for each field's meaning).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Batch {
    pub requests: u64,
    pub transactions: u64,
    pub request_us: u64,
    pub transaction_us: u64,
    pub received: u64,
    pub sent: u64,
}

impl PoolStats {
    /// Counters for `workers` worker threads.
    pub fn new(workers: usize) -> Self {
        PoolStats {
            shards: (0..workers.max(1)).map(|_| Shard::default()).collect(),
            waited_us: WaitTotal::default(),
            last_period: Mutex::default(),
        }
    }

    /// Records the rates and means of the period that just ended.
    pub fn set_last_period(&self, period: Period) {
        *self.last_period.lock().unwrap_or_else(|e| e.into_inner()) = period;
    }

    /// The rates and means of the last period (zero before the first, or with
    /// `stats_period_ms = 0`).
    pub fn last_period(&self) -> Period {
        *self.last_period.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The worker threads counted apart.
    pub fn workers(&self) -> usize {
        self.shards.len()
    }

    /// The total the pool's servers add their checkout waits to.
    pub fn wait_total(&self) -> WaitTotal {
        self.waited_us.clone()
    }

    /// The calling worker's shard (the first for a thread that is no worker: tests).
    #[inline]
    fn mine(&self) -> &Shard {
        let shards = &self.shards;
        shards.get(crate::workers::current()).unwrap_or(&shards[0])
    }

    /// Adds a session's batch: requests answered, the transactions they ended, the time they
    /// took and the bytes that passed.
    #[inline]
    pub fn add(&self, b: &Batch) {
        let s = self.mine();
        bump(&s.requests, b.requests);
        bump(&s.transactions, b.transactions);
        bump(&s.request_us, b.request_us);
        bump(&s.transaction_us, b.transaction_us);
        bump(&s.received, b.received);
        bump(&s.sent, b.sent);
    }

    /// The counters summed over the workers.
    pub fn totals(&self) -> Totals {
        let sum = |f: fn(&Shard) -> &AtomicU64| {
            self.shards
                .iter()
                .map(|s| f(s).load(Ordering::Relaxed))
                .fold(0u64, u64::wrapping_add)
        };
        Totals {
            transactions: sum(|s| &s.transactions),
            requests: sum(|s| &s.requests),
            request_us: sum(|s| &s.request_us),
            transaction_us: sum(|s| &s.transaction_us),
            waited_us: self.waited_us.load(Ordering::Relaxed),
            received: sum(|s| &s.received),
            sent: sum(|s| &s.sent),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_over_the_workers_shards() {
        let stats = PoolStats::new(2);
        let batch = |requests, transactions, us, received, sent| Batch {
            requests,
            transactions,
            request_us: us,
            transaction_us: us,
            received,
            sent,
        };
        stats.add(&batch(3, 2, 30, 100, 900));
        stats.add(&batch(1, 1, 5, 10, 90));
        assert_eq!(
            stats.totals(),
            Totals {
                transactions: 3,
                requests: 4,
                request_us: 35,
                transaction_us: 35,
                waited_us: 0,
                received: 110,
                sent: 990,
            }
        );
        assert_eq!(std::mem::align_of::<Shard>(), 64, "a shard per cache line");
    }
}
