//! Whose the server's unnamed statement is. PostgreSQL gives each session one unnamed
//! statement; in transaction mode a server connection's belongs to the client whose `Parse`
//! of it the server last completed (`ServerConn::unnamed_owner`), and only while that client
//! has sent no simple Query since. Its key says who, and whether that statement is a
//! `DEALLOCATE` of the client's own names (see `extended_deallocate`), so that a later
//! batch's `Bind` of it can be answered as PostgreSQL would.

use super::*;

/// Who owns an unnamed statement parsed now (see `ServerConn::unnamed_owner`). The count of
/// Queries takes 31 bits: bit 31 and bit 63 are for [`DEALLOCATES`].
pub(super) fn unnamed_key(pid: i32, queries: u32) -> u64 {
    (u64::from(pid as u32) << 32) | u64::from(queries & 0x7fff_ffff)
}

/// Set in an [`unnamed_key`] (pids are positive, so the bit is free) when the statement
/// parsed is a `DEALLOCATE` of the client's own names, with its mark (see
/// `extended_deallocate`) in bit 31.
const DEALLOCATES: u64 = 1 << 63;
const MARK: u64 = 1 << 31;

/// `key` for a `DEALLOCATE` of mark `mark`.
pub(super) fn marked(key: u64, mark: u8) -> u64 {
    key | DEALLOCATES | (u64::from(mark) * MARK)
}

/// The mark of a `DEALLOCATE` in an owner key, if it is one (see [`DEALLOCATES`]).
fn mark(key: u64) -> Option<u8> {
    (key != u64::MAX && key & DEALLOCATES != 0).then_some(u8::from(key & MARK != 0))
}

/// Whether the server's unnamed statement is the client's own (see [`unnamed_key`]): `None`
/// if not; else `Some` of its mark if it is one of the client's `DEALLOCATE`s.
pub(super) fn unnamed_owner(conn: &ServerConn, pid: i32, queries: u32) -> Option<Option<u8>> {
    let owner = conn.unnamed_owner;
    (owner != u64::MAX && owner & !(DEALLOCATES | MARK) == unnamed_key(pid, queries))
        .then(|| mark(owner))
}

/// The marks the server's unnamed statement may have once this client's Parses of it that
/// are unanswered are (`key`: the client's [`unnamed_key`]): a new `DEALLOCATE` must take
/// another (see `extended_deallocate`).
pub(super) fn taken_marks(conn: &ServerConn, r: &Responses, key: u64) -> [bool; 2] {
    let mut taken = [false; 2];
    let now = (conn.unnamed_owner & !(DEALLOCATES | MARK) == key).then_some(conn.unnamed_owner);
    for m in now
        .into_iter()
        .chain(r.unnamed_parses_pending())
        .filter_map(mark)
    {
        taken[usize::from(m)] = true;
    }
    taken
}
