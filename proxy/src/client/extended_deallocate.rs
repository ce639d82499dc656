//! Transaction mode: a `DEALLOCATE` of the client's own statement names sent through the
//! extended protocol. psycopg 3 in pipeline mode sends its `DEALLOCATE`s so: a Parse, Bind and
//! Execute of the unnamed statement. The servers know the client's statements by the proxy's
//! names (see `statements`), so one would answer `26000`. As for a simple-query `DEALLOCATE`,
//! the proxy answers it instead: the server gets the Parse and Bind, which it checks or skips
//! as PostgreSQL would. Once the server's answers before the Execute are in (the proxy knows
//! then that the server would run it), the proxy forgets the names and the server runs a
//! stand-in in the Execute's place, which takes a snapshot as `DEALLOCATE` does.

use super::statements::{self, Deallocate};

/// Which statement and portal hold a `DEALLOCATE`. Boxed: almost no session has one, and the
/// session future stays small.
#[derive(Debug, Default)]
pub struct ExtendedDeallocate(Option<Box<Tracked>>);

#[derive(Debug, Default)]
struct Tracked {
    /// The client's Parse of the unnamed statement in the current batch, if any, and what it
    /// deallocates (None: it is no `DEALLOCATE`).
    in_batch: Option<Option<Deallocate>>,
    /// What the client's `DEALLOCATE`s parsed as the unnamed statement since its last simple
    /// Query deallocate, by mark (0 or 1): a Parse's answer records its mark as the server's
    /// unnamed statement's (see `parsed_unnamed`), for a Bind in a later batch.
    marked: [Option<Deallocate>; 2],
    /// The portal bound to a `DEALLOCATE`. Whether it still exists when it runs is
    /// `Responses::deallocate_bound` (portals end with their transaction, a Close, or a Bind
    /// of their name).
    portal: Option<Portal>,
}

#[derive(Debug)]
struct Portal {
    name: Vec<u8>,
    target: Deallocate,
    /// The proxy answered its Execute. The server's portal never ran, but PostgreSQL runs a
    /// utility statement's portal once: a second Execute gets `55000`.
    ran: bool,
}

/// What an Execute of the portal bound to a `DEALLOCATE` does on PostgreSQL.
#[derive(Debug, PartialEq, Eq)]
pub enum Execution<'a> {
    /// Runs it: deallocates this.
    Runs(&'a Deallocate),
    /// Fails (`55000`, "portal ... cannot be run"): it ran already.
    RanAlready,
}

impl ExtendedDeallocate {
    /// A Parse of the unnamed statement, with its body after the name. Returns the mark (0
    /// or 1) the caller records with it if it is a `DEALLOCATE`: the server's answer makes
    /// it the unnamed statement's, so that a later batch's Bind finds what it deallocates
    /// (past a Sync, the server may have skipped the Parse after an error and kept the
    /// statement it had).
    ///
    /// `taken` gives the marks the server's unnamed statement may have whatever the outcome of
    /// the Parses before this one. A `DEALLOCATE` of another target takes a mark that is not
    /// among them, so that either outcome of its Parse leaves a mark that tells the truth;
    /// if both are, it gets none, and a later batch's Bind of it goes to the server (which
    /// answers `26000`).
    pub fn parsed_unnamed(
        &mut self,
        parse_rest: &[u8],
        taken: impl FnOnce() -> [bool; 2],
    ) -> Option<u8> {
        let target = statements::deallocate_parsed(parse_rest);
        if target.is_none() && self.0.is_none() {
            return None;
        }
        let t = self.0.get_or_insert_default();
        let mark = target.as_ref().and_then(|d| {
            let same = (0..2).find(|&m| t.marked[usize::from(m)].as_ref() == Some(d));
            let mark = same.or_else(|| {
                let taken = taken();
                (0..2).find(|&m| !taken[usize::from(m)])
            })?;
            t.marked[usize::from(mark)] = Some(d.clone());
            Some(mark)
        });
        t.in_batch = Some(target);
        mark
    }

    /// A Sync: the next batch's Bind of the unnamed statement finds whatever the server's
    /// answers made it.
    pub fn batch_ended(&mut self) {
        if let Some(t) = &mut self.0 {
            t.in_batch = None;
        }
    }

    /// A simple Query: it drops the unnamed statement, and the unnamed portal.
    pub fn query(&mut self) {
        if let Some(t) = &mut self.0 {
            t.in_batch = None;
            t.marked = [None, None];
            if t.portal.as_ref().is_some_and(|p| p.name.is_empty()) {
                t.portal = None;
            }
        }
    }

    /// What a Bind of the unnamed statement deallocates, if it is a `DEALLOCATE`:
    /// - within the batch of the client's Parse of it, what that Parse holds (if the server
    ///   fails or skips the Parse, it skips the Bind too);
    /// - else, when the server's unnamed statement is the client's own `DEALLOCATE` of mark
    ///   `server_mark` (its answer said so), what that one deallocates.
    pub fn unnamed_target(&self, server_mark: Option<u8>) -> Option<Deallocate> {
        let t = self.0.as_ref()?;
        match &t.in_batch {
            Some(target) => target.clone(),
            None => t.marked[usize::from(server_mark?)].clone(),
        }
    }

    /// A Bind of `portal` to a statement that deallocates `target` (None: any other).
    pub fn bound(&mut self, portal: &[u8], target: Option<Deallocate>) {
        match (target, &mut self.0) {
            (Some(target), slot) => {
                slot.get_or_insert_default().portal = Some(Portal {
                    name: portal.to_vec(),
                    target,
                    ran: false,
                });
            }
            (None, Some(t)) if t.portal.as_ref().is_some_and(|p| p.name == portal) => {
                t.portal = None;
            }
            _ => {}
        }
    }

    /// Whether `portal` is the one bound to a `DEALLOCATE` (a Close of it ends it).
    pub fn is_bound(&self, portal: &[u8]) -> bool {
        self.0
            .as_ref()
            .and_then(|t| t.portal.as_ref())
            .is_some_and(|p| p.name == portal)
    }

    /// What the `Execute` message `msg` does if it runs the portal last bound to a
    /// `DEALLOCATE` (whether that portal still exists is for the caller to check).
    pub fn executes(&self, msg: &[u8]) -> Option<Execution<'_>> {
        let portal = self.0.as_ref()?.portal.as_ref()?;
        let (name, _) = crate::protocol::frame::cstr(msg.get(5..)?)?;
        (name == portal.name.as_slice()).then_some(match portal.ran {
            false => Execution::Runs(&portal.target),
            true => Execution::RanAlready,
        })
    }

    /// The portal ran (the proxy answered it).
    pub fn ran(&mut self) {
        if let Some(p) = self.0.as_mut().and_then(|t| t.portal.as_mut()) {
            p.ran = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_rest(sql: &str) -> Vec<u8> {
        [sql.as_bytes(), b"\0\0\0"].concat()
    }

    fn execute(portal: &str) -> Vec<u8> {
        let body = [portal.as_bytes(), b"\0\0\0\0\0"].concat();
        let len = (body.len() + 4) as u32;
        [&[b'E'][..], &len.to_be_bytes(), &body].concat()
    }

    #[test]
    fn the_portal_of_an_unnamed_deallocate_is_tracked_until_it_runs() {
        let mut d = ExtendedDeallocate::default();
        assert_eq!(d.parsed_unnamed(&parse_rest("SELECT 1"), || FREE), None);
        assert!(d.0.is_none(), "nothing kept for other statements");
        assert_eq!(
            d.parsed_unnamed(&parse_rest("deallocate _pg3_0"), || BOTH),
            None
        );
        d.bound(b"", d.unnamed_target(None));
        let name = Deallocate::Name(b"_pg3_0".to_vec());
        assert_eq!(d.executes(&execute("")), Some(Execution::Runs(&name)));
        assert_eq!(d.executes(&execute("p")), None, "another portal");
        d.ran();
        assert_eq!(d.executes(&execute("")), Some(Execution::RanAlready));
        // A Query drops the unnamed portal.
        d.query();
        assert_eq!(d.executes(&execute("")), None);
        // Past a Sync, only a server's answer tells; a named statement's text is its own.
        d.batch_ended();
        d.bound(b"", d.unnamed_target(None));
        assert_eq!(d.executes(&execute("")), None);
        let all = statements::deallocate_parsed(&parse_rest("DEALLOCATE ALL"));
        d.bound(b"p", all);
        let runs_all = Some(Execution::Runs(&Deallocate::All));
        assert_eq!(d.executes(&execute("p")), runs_all);
        d.query();
        assert_eq!(d.executes(&execute("p")), runs_all, "a named portal stays");
        assert!(d.is_bound(b"p") && !d.is_bound(b""));
        d.bound(b"p", None);
        assert_eq!(d.executes(&execute("p")), None, "bound again to another");
    }

    const FREE: [bool; 2] = [false, false];
    const BOTH: [bool; 2] = [true, true];

    #[test]
    fn past_a_sync_the_mark_the_server_answered_tells_what_the_unnamed_statement_is() {
        let mut d = ExtendedDeallocate::default();
        let (a, b) = (
            Deallocate::Name(b"a".to_vec()),
            Deallocate::Name(b"b".to_vec()),
        );
        assert_eq!(
            d.parsed_unnamed(&parse_rest("DEALLOCATE a"), || FREE),
            Some(0)
        );
        d.batch_ended();
        assert_eq!(d.unnamed_target(Some(0)), Some(a.clone()));
        assert_eq!(d.unnamed_target(None), None, "the server's is another");
        // Within a batch, the Parse there decides, whatever the server has.
        assert_eq!(
            d.parsed_unnamed(&parse_rest("SELECT 1"), || [true, false]),
            None
        );
        assert_eq!(d.unnamed_target(Some(0)), None);
        d.batch_ended();
        assert_eq!(
            d.unnamed_target(Some(0)),
            Some(a.clone()),
            "SELECT 1 was skipped"
        );
        // The same target keeps its mark; another takes one not taken, so that both
        // outcomes of its Parse read true.
        let mark = d.parsed_unnamed(&parse_rest("deallocate A"), || [true, false]);
        assert_eq!(mark, Some(0));
        let mark = d.parsed_unnamed(&parse_rest("DEALLOCATE b"), || [true, false]);
        assert_eq!(mark, Some(1));
        d.batch_ended();
        assert_eq!(d.unnamed_target(Some(0)), Some(a), "b's Parse skipped");
        assert_eq!(d.unnamed_target(Some(1)), Some(b.clone()), "b's Parse done");
        let mark = d.parsed_unnamed(&parse_rest("DEALLOCATE c"), || [false, true]);
        assert_eq!(mark, Some(0));
        assert_eq!(
            d.unnamed_target(Some(1)),
            Some(Deallocate::Name(b"c".to_vec()))
        );
        d.batch_ended();
        assert_eq!(d.unnamed_target(Some(1)), Some(b));
        // Both marks may be the server's: none.
        assert_eq!(d.parsed_unnamed(&parse_rest("DEALLOCATE d"), || BOTH), None);
        // A Query drops the unnamed statement and starts afresh.
        d.query();
        assert_eq!(d.unnamed_target(Some(0)), None);
        let mark = d.parsed_unnamed(&parse_rest("DEALLOCATE ALL"), || FREE);
        d.batch_ended();
        assert_eq!(d.unnamed_target(mark), Some(Deallocate::All));
    }
}
