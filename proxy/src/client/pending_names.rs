//! The client's named Parses and Closes whose outcome the server has not told yet.
//!
//! In transaction mode the proxy keeps the client's statement names itself, and it acts on a
//! Parse or Close when it forwards it. But PostgreSQL skips every message after an error up to
//! the next Sync: a skipped Parse creates no name, and a skipped Close closes nothing. So each
//! of these waits here, in order, until the server's answer (or its skipping) settles it.

use super::statements::{Statement, Statements};
use std::collections::VecDeque;

/// One Parse or Close awaiting its outcome.
#[derive(Debug)]
enum Pending {
    /// The name, and whether its failure leaves the name free: not when the Parse followed a
    /// Close of the same name that turned out skipped (the statement it closed is still there).
    Parse(Vec<u8>, bool),
    /// The name, and the statement the Close took (to put back if it is skipped).
    Close(Vec<u8>, Option<Statement>),
}

/// The pending named Parses and Closes of one session, in the order they were sent.
#[derive(Debug, Default)]
pub struct PendingNames {
    queue: VecDeque<Pending>,
}

impl PendingNames {
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn parse(&mut self, name: &[u8]) {
        self.queue.push_back(Pending::Parse(name.to_vec(), true));
    }

    /// A Close of `name`, which took `taken` from the client's statements.
    pub fn close(&mut self, name: &[u8], taken: Option<Statement>) {
        self.queue.push_back(Pending::Close(name.to_vec(), taken));
    }

    /// Whether a Parse or Close of `name` is pending.
    pub fn contains(&self, name: &[u8]) -> bool {
        self.queue.iter().any(|p| match p {
            Pending::Parse(n, _) | Pending::Close(n, _) => n[..] == *name,
        })
    }

    /// Applies the outcome of the oldest pending operation: `done` is false when the server
    /// refused or skipped it. A name whose Parse did not happen does not exist (and a Close
    /// of it sent before it was parsed again took nothing); a statement whose Close did not
    /// happen is still there.
    ///
    /// A Parse of a name sent while a Close of it is pending is in the Close's batch (a later
    /// one waits for the answers, see `waits_for_answers`): if the Close was skipped, so was
    /// that Parse, and the closed statement is what the name means again.
    pub fn settle(&mut self, done: bool, statements: &mut Statements) {
        match self.queue.pop_front() {
            Some(Pending::Parse(name, frees)) if !done => {
                if frees {
                    statements.remove(&name);
                }
                for later in self.queue.iter_mut() {
                    match later {
                        Pending::Parse(n, _) if *n == name => break,
                        Pending::Close(n, taken) if *n == name => *taken = None,
                        _ => {}
                    }
                }
            }
            Some(Pending::Close(name, Some(statement))) if !done => {
                let mut statement = Some(statement);
                for later in self.queue.iter_mut() {
                    match later {
                        Pending::Parse(n, frees) if *n == name => {
                            *frees = false;
                            break;
                        }
                        // A later Close of the name was sent while this one was pending, so
                        // it took nothing: the statement is what it closes (or puts back).
                        Pending::Close(n, taken) if *n == name => {
                            *taken = statement.take();
                            break;
                        }
                        _ => {}
                    }
                }
                if let Some(statement) = statement {
                    statements.put_back(name, statement)
                }
            }
            _ => {}
        }
    }

    /// The server connection is gone with these in flight: names being parsed do not exist,
    /// statements being closed stay closed.
    pub fn fail_all(&mut self, statements: &mut Statements) {
        for p in self.queue.drain(..) {
            if let Pending::Parse(name, _) = p {
                statements.remove(&name);
            }
        }
    }

    /// The server ran the client's `DISCARD ALL` (or `DEALLOCATE ALL`) with `answered` of
    /// these settled before it (their outcomes came first): only names parsed after it are
    /// left, and a Close brings back (if skipped) only a statement parsed after it too.
    pub fn discard(&mut self, answered: usize, statements: &mut Statements) {
        let after: Vec<Vec<u8>> = self
            .queue
            .iter()
            .skip(answered)
            .filter_map(|p| match p {
                Pending::Parse(n, _) => Some(n.clone()),
                Pending::Close(..) => None,
            })
            .collect();
        statements.retain(|name| after.iter().any(|n| n[..] == *name));
        for i in 0..self.queue.len() {
            let Pending::Close(name, _) = &self.queue[i] else {
                continue;
            };
            // The statement the Close took was parsed after the DISCARD if a Parse of the
            // name came between them.
            let parsed_after = self
                .queue
                .range(answered.min(i)..i)
                .any(|p| matches!(p, Pending::Parse(n, _) if n == name));
            if !parsed_after {
                if let Pending::Close(_, taken) = &mut self.queue[i] {
                    *taken = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_sent_while_a_close_of_the_name_is_pending_closes_what_that_one_left() {
        // Close a (skipped after an error), then in a later batch Close a (done): gone.
        for (second_done, left) in [(true, false), (false, true)] {
            let mut st = Statements::default();
            let mut p = PendingNames::default();
            st.insert(b"a", b"SELECT 1\0\0\0");
            let taken = st.take(b"a");
            p.close(b"a", taken);
            let taken = st.take(b"a");
            assert!(taken.is_none(), "the first Close took it");
            p.close(b"a", taken);
            p.settle(false, &mut st);
            p.settle(second_done, &mut st);
            assert!(p.is_empty());
            assert_eq!(
                st.get(b"a").is_some(),
                left,
                "second Close done: {second_done}"
            );
        }
    }

    #[test]
    fn a_discard_keeps_what_a_skipped_close_took_when_it_was_parsed_after_the_discard() {
        // DISCARD ALL; Parse a (done); Close a (skipped); Parse a (skipped).
        let mut st = Statements::default();
        let mut p = PendingNames::default();
        st.insert(b"old", b"SELECT 0\0\0\0");
        p.parse(b"a");
        st.insert(b"a", b"SELECT 1\0\0\0");
        let taken = st.take(b"a");
        p.close(b"a", taken);
        p.parse(b"a");
        st.insert(b"a", b"SELECT 2\0\0\0");
        p.discard(0, &mut st);
        assert!(st.get(b"old").is_none(), "the DISCARD dropped it");
        for done in [true, false, false] {
            p.settle(done, &mut st);
        }
        let (_, rest) = st.get(b"a").expect("a is back");
        assert_eq!(rest, b"SELECT 1\0\0\0");
    }

    #[test]
    fn skipped_parses_and_closes_are_undone_in_order() {
        let mut st = Statements::default();
        let mut p = PendingNames::default();
        // Parse a (skipped), Close a, Parse a (done), Close a (skipped).
        st.insert(b"a", b"SELECT 1\0\0\0");
        p.parse(b"a");
        let first = st.take(b"a");
        p.close(b"a", first);
        st.insert(b"a", b"SELECT 2\0\0\0");
        p.parse(b"a");
        let second = st.take(b"a");
        p.close(b"a", second);
        assert!(p.contains(b"a") && !p.contains(b"b"));
        for done in [false, false, true, false] {
            p.settle(done, &mut st);
        }
        assert!(p.is_empty());
        // The skipped first Parse left nothing to put back; the skipped last Close did.
        assert_eq!(
            st.get(b"a").map(|(_, rest)| rest),
            Some(&b"SELECT 2\0\0\0"[..])
        );
    }

    #[test]
    fn a_skipped_close_keeps_its_statement_over_a_skipped_parse_of_the_name() {
        // In one batch: Parse a (done), a Bind that fails, then Close a and Parse a again,
        // both skipped. `a` is still the first statement.
        let mut st = Statements::default();
        let mut p = PendingNames::default();
        st.insert(b"a", b"SELECT 1\0\0\0");
        p.parse(b"a");
        let first = st.take(b"a");
        p.close(b"a", first);
        st.insert(b"a", b"SELECT 2\0\0\0");
        p.parse(b"a");
        for done in [true, false, false] {
            p.settle(done, &mut st);
        }
        assert!(p.is_empty());
        assert_eq!(
            st.get(b"a").map(|(_, rest)| rest),
            Some(&b"SELECT 1\0\0\0"[..])
        );
    }

    #[test]
    fn a_discard_keeps_only_names_parsed_after_it() {
        let mut st = Statements::default();
        let mut p = PendingNames::default();
        st.insert(b"old", b"SELECT 1\0\0\0");
        st.insert(b"a", b"SELECT 2\0\0\0");
        p.parse(b"a"); // answered before the DISCARD ALL
        st.insert(b"b", b"SELECT 3\0\0\0");
        p.parse(b"b"); // sent after it
        p.discard(1, &mut st);
        assert!(st.get(b"old").is_none() && st.get(b"a").is_none());
        assert!(st.get(b"b").is_some());
    }
}
