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
    /// What the unnamed statement deallocates, if it is a `DEALLOCATE`.
    unnamed: Option<Deallocate>,
    /// The portal bound to a `DEALLOCATE`: its name and what it deallocates. Whether it
    /// still exists when it runs is `Responses::deallocate_bound` (portals end with their
    /// transaction).
    portal: Option<(Vec<u8>, Deallocate)>,
}

impl ExtendedDeallocate {
    /// A Parse of the unnamed statement, with its body after the name.
    pub fn parsed_unnamed(&mut self, parse_rest: &[u8]) {
        let target = statements::deallocate_parsed(parse_rest);
        if target.is_some() || self.0.is_some() {
            self.0.get_or_insert_default().unnamed = target;
        }
    }

    /// A Sync or a simple Query. A Query drops the unnamed statement. Past a Sync, the
    /// server may have skipped its Parse (after an error earlier in the batch) and kept the
    /// statement it had: a `DEALLOCATE` of the unnamed statement is answered only within its
    /// batch (a later Bind of it goes to the server, which refuses it).
    pub fn batch_ended(&mut self) {
        if let Some(t) = &mut self.0 {
            t.unnamed = None;
        }
    }

    /// What the unnamed statement deallocates, if it is a `DEALLOCATE`.
    pub fn unnamed_target(&self) -> Option<Deallocate> {
        self.0.as_ref()?.unnamed.clone()
    }

    /// A Bind of `portal` to a statement that deallocates `target` (None: any other).
    pub fn bound(&mut self, portal: &[u8], target: Option<Deallocate>) {
        match (target, &mut self.0) {
            (Some(target), slot) => {
                slot.get_or_insert_default().portal = Some((portal.to_vec(), target));
            }
            (None, Some(t)) if t.portal.as_ref().is_some_and(|(p, ..)| p == portal) => {
                t.portal = None;
            }
            _ => {}
        }
    }

    /// What the `Execute` message `msg` deallocates, if it runs the portal last bound to a
    /// `DEALLOCATE` (whether that portal still exists is for the caller to check).
    pub fn executes(&self, msg: &[u8]) -> Option<&Deallocate> {
        let (portal, target) = self.0.as_ref()?.portal.as_ref()?;
        let (name, _) = crate::protocol::frame::cstr(msg.get(5..)?)?;
        (name == portal.as_slice()).then_some(target)
    }

    /// The portal ran (the proxy answered it).
    pub fn ran(&mut self) {
        if let Some(t) = &mut self.0 {
            t.portal = None;
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
        d.parsed_unnamed(&parse_rest("SELECT 1"));
        assert!(d.0.is_none(), "nothing kept for other statements");
        d.parsed_unnamed(&parse_rest("deallocate _pg3_0"));
        d.bound(b"", d.unnamed_target());
        let name = Deallocate::Name(b"_pg3_0".to_vec());
        assert_eq!(d.executes(&execute("")), Some(&name));
        assert_eq!(d.executes(&execute("p")), None, "another portal");
        d.ran();
        assert_eq!(d.executes(&execute("")), None);
        // A Sync or Query ends it; a named statement's text is its own.
        d.batch_ended();
        d.bound(b"", d.unnamed_target());
        assert_eq!(d.executes(&execute("")), None);
        let all = statements::deallocate_parsed(&parse_rest("DEALLOCATE ALL"));
        d.bound(b"p", all);
        assert_eq!(d.executes(&execute("p")), Some(&Deallocate::All));
        d.bound(b"p", None);
        assert_eq!(d.executes(&execute("p")), None, "bound again to another");
    }
}
