//! Bytes a session read from its client and wrote to it, for `SHOW STATS`' `total_received`
//! and `total_sent` (PgBouncer's names) and their `/metrics` counters.
//!
//! Counted in two plain fields as the bytes pass, and handed to the pool's counters with each
//! batch of answers (`relay`) and at the end of the session: the query path touches the
//! shared counters once per batch, as it already does for the request counts.

/// Bytes not yet handed to the pool's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Traffic {
    /// Read from the client: its messages after login.
    pub received: u64,
    /// Written to the client: the servers' answers and the proxy's own messages.
    pub sent: u64,
}

impl Traffic {
    /// `n` bytes came from the client.
    #[inline]
    pub fn received(&mut self, n: usize) {
        self.received += n as u64;
    }

    /// `n` bytes go to the client.
    #[inline]
    pub fn sent(&mut self, n: usize) {
        self.sent += n as u64;
    }

    /// The counts since the last take; zero after.
    #[inline]
    pub fn take(&mut self) -> Traffic {
        std::mem::take(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_until_taken() {
        let mut t = Traffic::default();
        t.received(5);
        t.sent(20);
        t.received(7);
        assert_eq!(
            t.take(),
            Traffic {
                received: 12,
                sent: 20
            }
        );
        assert_eq!(t.take(), Traffic::default());
    }
}
