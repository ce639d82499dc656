//! How long the attached server works for the client: the time from a request sent to its
//! ReadyForQuery (`SHOW STATS`' `total_query_time`), and from a transaction's first request
//! to the ReadyForQuery that ends it (`total_xact_time`, idle time inside the transaction
//! included), as PgBouncer counts them.
//!
//! Two clock reads per request (vDSO, no system call): one when the session writes to an idle
//! server, one in the relay that forwards its answer.

use crate::clock;

/// When the request and the transaction being timed started (nanoseconds of
/// [`clock::now_ns`]; 0: none).
#[derive(Debug, Default)]
pub(super) struct Timing {
    request: u64,
    transaction: u64,
}

/// Microseconds a batch of answers took, for the pool's counters.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Took {
    pub request_us: u64,
    pub transaction_us: u64,
}

impl Timing {
    /// The session writes to its server: the clock starts if nothing was being timed.
    #[inline]
    pub fn sent(&mut self) {
        if self.request == 0 {
            self.start(clock::now_ns());
        }
    }

    fn start(&mut self, now: u64) {
        self.request = now;
        if self.transaction == 0 {
            self.transaction = now;
        }
    }

    /// ReadyForQuery came (`ended`: with status idle, the transaction is over); `more_owed`:
    /// the server still owes answers to requests sent behind, whose time starts now.
    pub fn answered(&mut self, ended: bool, more_owed: bool) -> Took {
        self.answered_at(clock::now_ns(), ended, more_owed)
    }

    fn answered_at(&mut self, now: u64, ended: bool, more_owed: bool) -> Took {
        let since = |t: u64| {
            if t == 0 {
                0
            } else {
                now.saturating_sub(t) / 1000
            }
        };
        let took = Took {
            request_us: since(self.request),
            transaction_us: if ended { since(self.transaction) } else { 0 },
        };
        if ended {
            self.transaction = 0;
        }
        self.request = 0;
        if more_owed {
            self.start(now);
        }
        took
    }

    /// When the transaction being timed started ([`clock::now_ns`]), if one is.
    pub fn transaction_started(&self) -> Option<u64> {
        (self.transaction != 0).then_some(self.transaction)
    }

    /// The server is gone: nothing is being timed.
    pub fn stop(&mut self) {
        *self = Timing::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn took(request_us: u64, transaction_us: u64) -> Took {
        Took {
            request_us,
            transaction_us,
        }
    }

    #[test]
    fn a_transaction_counts_from_its_first_request_to_its_end() {
        let mut t = Timing::default();
        t.start(10 * MS);
        // BEGIN answered after 1 ms; the client thinks for 4 ms.
        assert_eq!(t.answered_at(11 * MS, false, false), took(1000, 0));
        t.start(15 * MS);
        // The statement takes 2 ms; COMMIT 1 ms and ends the transaction.
        assert_eq!(t.answered_at(17 * MS, false, false), took(2000, 0));
        t.start(18 * MS);
        assert_eq!(t.answered_at(19 * MS, true, false), took(1000, 9000));
        assert_eq!((t.request, t.transaction), (0, 0));
    }

    #[test]
    fn requests_sent_behind_start_when_the_one_before_is_answered() {
        let mut t = Timing::default();
        t.start(10 * MS);
        // Two pipelined statements outside a transaction: the second's time starts when the
        // first is answered.
        assert_eq!(t.answered_at(12 * MS, true, true), took(2000, 2000));
        assert_eq!(t.answered_at(15 * MS, true, false), took(3000, 3000));
    }

    #[test]
    fn an_answer_with_nothing_timed_counts_nothing() {
        let mut t = Timing::default();
        assert_eq!(t.answered_at(5 * MS, true, false), Took::default());
        t.start(6 * MS);
        t.stop();
        assert_eq!(t.answered_at(9 * MS, true, false), Took::default());
    }
}
