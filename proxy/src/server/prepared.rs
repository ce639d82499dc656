//! The proxy-named prepared statements that exist on one server connection, kept under a cap.
//!
//! Without a cap, a server connection would keep every distinct statement any client ever
//! prepared through it (an ORM can generate thousands), each holding memory in its backend.
//! Past `max_prepared_statements` the least recently used statement is closed on the server
//! before a new one is parsed, like PgBouncer's `max_prepared_statements`.
//!
//! A statement may be closed only when nothing in flight can still need it. Closing a statement
//! also closes the portals made from it, and a named portal may outlive its Sync inside a
//! transaction. So a *batch* starts when a message goes to a server that is quiet and outside
//! a transaction, and statements used since then are never evicted.

use bytes::BytesMut;
use std::collections::HashMap;

/// The statements on one connection, with when each was last used.
#[derive(Debug, Default)]
pub struct PreparedSet {
    /// Statement hash → the tick of its last use.
    last_use: HashMap<u64, u64>,
    tick: u64,
    /// Uses at or after this tick belong to the current batch.
    batch_start: u64,
    /// The last statement whose Parse the proxy added and the server refused, with the
    /// server's ErrorResponse (see [`PreparedSet::refused`]).
    refused: Option<(u64, BytesMut)>,
}

impl PreparedSet {
    /// Whether the statement exists on the connection.
    pub fn contains(&self, hash: u64) -> bool {
        self.last_use.contains_key(&hash)
    }

    /// Records a use of the statement if it exists; returns whether it does. One lookup: this
    /// runs for every Bind of a named statement.
    pub fn touch(&mut self, hash: u64) -> bool {
        self.tick += 1;
        match self.last_use.get_mut(&hash) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    /// Records a statement just parsed on the connection, as used now.
    pub fn add(&mut self, hash: u64) {
        self.tick += 1;
        self.last_use.insert(hash, self.tick);
    }

    /// Forgets a statement (its Parse failed, or it was closed).
    pub fn remove(&mut self, hash: u64) {
        self.last_use.remove(&hash);
    }

    /// Records a statement that exists but was not used just now (a Close that did not
    /// happen).
    pub fn restore(&mut self, hash: u64) {
        self.last_use.entry(hash).or_insert(0);
    }

    /// The server refused the Parse the proxy added for a client's statement (`error`, a whole
    /// ErrorResponse): inside a failed transaction (`25P02`), or for an object dropped since.
    /// A Bind or Describe of it that went out in a later batch before this answer came, as if
    /// the statement were there, gets `26000` naming the proxy's name for it; the client,
    /// whose statement PostgreSQL would have, gets this error instead
    /// ([`PreparedSet::refusal_for`]).
    pub fn refused(&mut self, hash: u64, error: BytesMut) {
        self.refused = Some((hash, error));
    }

    /// The error to give in place of a server's `26000` about statement `hash`, if it is the
    /// one last refused.
    pub fn refusal_for(&self, hash: u64) -> Option<&[u8]> {
        let (refused, error) = self.refused.as_ref()?;
        (*refused == hash).then_some(&error[..])
    }

    /// The server dropped all its prepared statements (`DISCARD ALL`, `DEALLOCATE ALL`).
    pub fn clear(&mut self) {
        self.last_use.clear();
    }

    pub fn len(&self) -> usize {
        self.last_use.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_use.is_empty()
    }

    /// A new batch starts: the server is quiet and outside a transaction.
    pub fn start_batch(&mut self) {
        self.batch_start = self.tick + 1;
    }

    /// If adding one more statement would pass `cap` (0: no cap), the least recently used
    /// statement that the current batch does not use: the caller closes it on the server.
    /// Rare (once per new statement past the cap) and linear in the cap.
    pub fn evict_for_one_more(&mut self, cap: usize) -> Option<u64> {
        if cap == 0 || self.last_use.len() < cap {
            return None;
        }
        let (&victim, _) = self
            .last_use
            .iter()
            .filter(|(_, &t)| t < self.batch_start)
            .min_by_key(|(_, &t)| t)?;
        self.last_use.remove(&victim);
        Some(victim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_refused_statement_gets_its_refusal() {
        let mut p = PreparedSet::default();
        assert_eq!(p.refusal_for(7), None, "nothing refused");
        p.refused(7, BytesMut::from(&b"E-the-error"[..]));
        assert_eq!(p.refusal_for(7), Some(&b"E-the-error"[..]));
        assert_eq!(p.refusal_for(8), None, "another statement");
    }

    #[test]
    fn the_least_recently_used_goes_first() {
        let mut p = PreparedSet::default();
        assert!(!p.touch(1));
        p.add(1);
        p.add(2);
        assert!(p.touch(1), "already there");
        p.start_batch();
        assert_eq!(p.evict_for_one_more(3), None, "below the cap");
        assert_eq!(p.evict_for_one_more(2), Some(2));
        assert!(!p.contains(2) && p.contains(1));
        assert_eq!(p.evict_for_one_more(0), None, "0 means no cap");
    }

    #[test]
    fn statements_of_the_current_batch_stay() {
        let mut p = PreparedSet::default();
        p.add(1);
        p.start_batch();
        p.add(2);
        p.touch(1);
        assert_eq!(
            p.evict_for_one_more(2),
            None,
            "both are in use in this batch"
        );
        p.start_batch();
        assert_eq!(p.evict_for_one_more(2), Some(2));
        p.restore(2);
        assert!(p.contains(2));
        assert_eq!(p.len(), 2);
    }
}
