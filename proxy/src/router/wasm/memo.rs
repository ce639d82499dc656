//! The decisions a deterministic policy already made, so that a question it has answered costs
//! no call into the component.
//!
//! A policy whose `init` says `deterministic` decides from the query's kind, flags, protocol and
//! hint and from the candidates alone (plus what was pushed to it). Those inputs fit in a `u16`
//! and a `u64`, and an application asks few distinct questions (pgbench `-S` asks one), so a
//! tiny direct-mapped table per instance answers nearly every query: one multiply, one compare.
//! The table is emptied when the topology is pushed, and it lives in the instance, so a trap
//! (which drops the instance) drops it too.

use super::bindings::switchyard::policy::types::{Decision, Query, QueryFlags};

/// Entries per instance: a power of two. A collision only costs a call.
const SLOTS: usize = 16;

#[derive(Clone, Copy)]
struct Entry {
    /// The packed small inputs.
    key: u16,
    candidates: u64,
    decision: Decision,
}

/// One instance's remembered decisions.
pub struct Memo {
    entries: [Option<Entry>; SLOTS],
}

impl Default for Memo {
    fn default() -> Self {
        Memo {
            entries: [None; SLOTS],
        }
    }
}

/// Kind (3 bits), flags (4), protocol (1) and hint (2).
fn key(q: &Query) -> u16 {
    let flag = |f: QueryFlags, bit: u16| u16::from(q.flags.contains(f)) << bit;
    q.kind as u16
        | flag(QueryFlags::IN_TRANSACTION, 3)
        | flag(QueryFlags::READ_ONLY_TRANSACTION, 4)
        | flag(QueryFlags::BEGINS_READ_ONLY, 5)
        | flag(QueryFlags::HAS_COMMENT, 6)
        | (q.protocol as u16) << 7
        | (q.hint as u16) << 8
}

fn slot(key: u16, candidates: u64) -> usize {
    let h = (u64::from(key) ^ candidates.rotate_left(16)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> (64 - SLOTS.trailing_zeros())) as usize
}

impl Memo {
    /// The decision made earlier for the same inputs, if it is still here.
    #[inline]
    pub fn recall(&self, q: &Query, candidates: u64) -> Option<Decision> {
        let key = key(q);
        match self.entries[slot(key, candidates)] {
            Some(e) if e.key == key && e.candidates == candidates => Some(e.decision),
            _ => None,
        }
    }

    /// Remembers a decision (a `reject` is never remembered: its message comes from a call).
    pub fn keep(&mut self, q: &Query, candidates: u64, decision: Decision) {
        if matches!(decision, Decision::Reject) {
            return;
        }
        let key = key(q);
        self.entries[slot(key, candidates)] = Some(Entry {
            key,
            candidates,
            decision,
        });
    }

    /// Forgets everything (the topology changed).
    pub fn clear(&mut self) {
        self.entries = [None; SLOTS];
    }
}

#[cfg(test)]
mod tests {
    use super::super::bindings::switchyard::policy::types::{Protocol, RouteHint, StatementKind};
    use super::*;

    fn query(kind: StatementKind, flags: QueryFlags, hint: RouteHint) -> Query {
        Query {
            session_id: 7,
            kind,
            flags,
            protocol: Protocol::Simple,
            hint,
            sql_length: 9,
        }
    }

    #[test]
    fn a_decision_is_recalled_only_for_the_same_inputs() {
        let mut memo = Memo::default();
        let read = query(StatementKind::Read, QueryFlags::empty(), RouteHint::None);
        assert_eq!(memo.recall(&read, 0b111), None);
        memo.keep(&read, 0b111, Decision::Narrow(0b110));
        assert_eq!(memo.recall(&read, 0b111), Some(Decision::Narrow(0b110)));
        // Another session, another text length: the same question.
        let other_session = Query {
            session_id: 8,
            sql_length: 90,
            ..read
        };
        assert_eq!(
            memo.recall(&other_session, 0b111),
            Some(Decision::Narrow(0b110))
        );
        // Any input that differs is another question.
        assert_eq!(memo.recall(&read, 0b101), None);
        let variants = [
            query(StatementKind::Write, QueryFlags::empty(), RouteHint::None),
            query(
                StatementKind::Read,
                QueryFlags::IN_TRANSACTION,
                RouteHint::None,
            ),
            query(
                StatementKind::Read,
                QueryFlags::HAS_COMMENT,
                RouteHint::None,
            ),
            query(StatementKind::Read, QueryFlags::empty(), RouteHint::Primary),
            query(StatementKind::Read, QueryFlags::empty(), RouteHint::Replica),
            Query {
                protocol: Protocol::Extended,
                ..read
            },
        ];
        for q in &variants {
            assert_eq!(memo.recall(q, 0b111), None, "{q:?}");
        }
        memo.clear();
        assert_eq!(memo.recall(&read, 0b111), None);
    }

    #[test]
    fn rejections_are_not_kept_and_keys_are_distinct() {
        let mut memo = Memo::default();
        let read = query(StatementKind::Read, QueryFlags::empty(), RouteHint::None);
        memo.keep(&read, 1, Decision::Reject);
        assert_eq!(memo.recall(&read, 1), None);
        // Every combination of the small inputs packs to its own key.
        use StatementKind::*;
        let all_flags = [
            QueryFlags::IN_TRANSACTION,
            QueryFlags::READ_ONLY_TRANSACTION,
            QueryFlags::BEGINS_READ_ONLY,
            QueryFlags::HAS_COMMENT,
        ];
        let mut keys = std::collections::HashSet::new();
        let mut count = 0;
        for kind in [Read, Session, TransactionControl, Other, Ddl, Write] {
            for set in 0..16usize {
                let flags = (0..4)
                    .filter(|b| set & (1 << b) != 0)
                    .fold(QueryFlags::empty(), |f, b| f | all_flags[b]);
                for protocol in [Protocol::Simple, Protocol::Extended] {
                    for hint in [RouteHint::None, RouteHint::Primary, RouteHint::Replica] {
                        let q = Query {
                            protocol,
                            ..query(kind, flags, hint)
                        };
                        keys.insert(key(&q));
                        count += 1;
                    }
                }
            }
        }
        assert_eq!(keys.len(), count);
    }
}
