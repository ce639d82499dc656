//! Named prepared statements in transaction mode.
//!
//! A client's statement `s1` may be parsed on one server connection and executed on another, and
//! two clients may both call a statement `s1`. So the proxy keeps each client's statements to
//! itself and names them on the servers by a hash of their text and parameter types
//! (`S_<16 hex digits>`): the same statement parsed by many clients exists once per server
//! connection. Before a `Bind` or `Describe` the proxy parses the statement on the current server
//! if it is missing there; a `Close` only forgets the client's name.

use crate::protocol::frame;
use bytes::{BufMut, BytesMut};
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hasher};

/// One of a client's statements: its hash and the `query\0 nparams oids…` of its Parse.
pub type Statement = (u64, Vec<u8>);

/// A client's named statements: its name → (hash, `query\0 nparams oids…` of its Parse).
#[derive(Debug, Default)]
pub struct Statements {
    by_name: HashMap<Vec<u8>, (u64, Vec<u8>)>,
}

/// The server-side identity of a statement: a hash of its Parse body after the name.
pub fn hash(parse_rest: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(parse_rest);
    h.finish()
}

/// `S_` followed by the hash in hex: 18 bytes, no allocation.
pub fn server_name(hash: u64) -> [u8; 18] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut name = [0u8; 18];
    name[0] = b'S';
    name[1] = b'_';
    for i in 0..16 {
        name[2 + i] = HEX[((hash >> (60 - 4 * i)) & 0xf) as usize];
    }
    name
}

impl Statements {
    /// Records a client's Parse of `name`; returns its hash.
    pub fn insert(&mut self, name: &[u8], parse_rest: &[u8]) -> u64 {
        let h = hash(parse_rest);
        self.by_name.insert(name.to_vec(), (h, parse_rest.to_vec()));
        h
    }

    /// The hash and Parse body of a client's statement.
    pub fn get(&self, name: &[u8]) -> Option<(u64, &[u8])> {
        self.by_name
            .get(name)
            .map(|(h, rest)| (*h, rest.as_slice()))
    }

    /// Forgets a client's statement (its Close); returns whether it existed.
    pub fn remove(&mut self, name: &[u8]) -> bool {
        self.by_name.remove(name).is_some()
    }

    /// Forgets a client's statement and hands it over, to be put back if its Close turns out
    /// not to have happened (see [`Statements::put_back`]).
    pub fn take(&mut self, name: &[u8]) -> Option<Statement> {
        self.by_name.remove(name)
    }

    /// Puts back a statement [`Statements::take`] took: its Close was skipped, and so was
    /// any Parse of the name sent after it (see `PendingNames::settle`).
    pub fn put_back(&mut self, name: Vec<u8>, statement: Statement) {
        self.by_name.insert(name, statement);
    }

    /// A name the client has for the statement with this hash (for error messages: a scan).
    pub fn name_of(&self, hash: u64) -> Option<&[u8]> {
        self.by_name
            .iter()
            .find(|(_, (h, _))| *h == hash)
            .map(|(name, _)| name.as_slice())
    }

    /// Forgets all of the client's statements (its `DEALLOCATE ALL`).
    pub fn clear(&mut self) {
        self.by_name.clear();
    }

    /// Keeps only the statements whose name passes `keep`.
    pub fn retain(&mut self, mut keep: impl FnMut(&[u8]) -> bool) {
        self.by_name.retain(|name, _| keep(name));
    }
}

/// What a `DEALLOCATE` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deallocate {
    All,
    /// A statement name, as PostgreSQL resolves it (unquoted: folded to lower case).
    Name(Vec<u8>),
}

/// The target of a Query message that is exactly one `DEALLOCATE [PREPARE] name|ALL` (PDO and
/// psycopg with libpq before 17 drop their protocol-level statements this way). Anything else,
/// comments and multi-statement strings included, is `None`: the server answers it.
pub fn deallocate_target(msg: &[u8]) -> Option<Deallocate> {
    deallocate_sql(msg.get(5..)?.strip_suffix(b"\0")?)
}

/// The same for the text of a Parse (`parse_rest`: `query\0 nparams oids…`): psycopg 3 in
/// pipeline mode sends its `DEALLOCATE`s through the extended protocol.
pub fn deallocate_parsed(parse_rest: &[u8]) -> Option<Deallocate> {
    // Ruled out by one byte before the text's end is looked for.
    if parse_rest.trim_ascii_start().first()? | 0x20 != b'd' {
        return None;
    }
    let (sql, _) = crate::protocol::frame::cstr(parse_rest)?;
    deallocate_sql(sql)
}

/// The target of SQL text that is exactly one `DEALLOCATE [PREPARE] name|ALL`.
fn deallocate_sql(sql: &[u8]) -> Option<Deallocate> {
    let sql = sql.trim_ascii_start();
    // Every Query and unnamed Parse of a transaction-mode client passes here: most are ruled
    // out by one byte.
    if sql.first()? | 0x20 != b'd' {
        return None;
    }
    let sql = sql.trim_ascii_end();
    let sql = sql.strip_suffix(b";").unwrap_or(sql).trim_ascii_end();
    let rest = keyword(sql, b"deallocate")?;
    let rest = keyword(rest, b"prepare").unwrap_or(rest);
    if let Some(quoted) = rest.strip_prefix(b"\"") {
        let inner = quoted.strip_suffix(b"\"")?;
        let mut name = Vec::with_capacity(inner.len());
        let mut bytes = inner.iter();
        while let Some(&b) = bytes.next() {
            if b == b'"' && bytes.next() != Some(&b'"') {
                return None; // a lone quote inside: not one identifier
            }
            name.push(b);
        }
        return (!name.is_empty()).then_some(Deallocate::Name(name));
    }
    let first = *rest.first()?;
    let ident = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'$' || *b >= 0x80;
    if !(first.is_ascii_alphabetic() || first == b'_' || first >= 0x80) || !rest.iter().all(ident) {
        return None;
    }
    if rest.eq_ignore_ascii_case(b"all") {
        return Some(Deallocate::All);
    }
    Some(Deallocate::Name(rest.to_ascii_lowercase()))
}

/// The command tag PostgreSQL gives a `DEALLOCATE` (`all`: `DEALLOCATE ALL`).
pub fn deallocate_tag(all: bool) -> &'static str {
    if all {
        "DEALLOCATE ALL"
    } else {
        "DEALLOCATE"
    }
}

/// The answer to a `DEALLOCATE` the proxy answers itself: CommandComplete, ReadyForQuery.
pub fn write_deallocate_answer(out: &mut BytesMut, all: bool, status: u8) {
    crate::protocol::backend::command_complete(out, deallocate_tag(all));
    crate::protocol::backend::ready_for_query(out, status);
}

/// `text` after the keyword `word` (any case) and the whitespace that must follow it.
fn keyword<'a>(text: &'a [u8], word: &[u8]) -> Option<&'a [u8]> {
    let head = text.get(..word.len())?;
    let rest = &text[word.len()..];
    (head.eq_ignore_ascii_case(word) && rest.first()?.is_ascii_whitespace())
        .then(|| rest.trim_ascii_start())
}

fn with_length(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    body(out);
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// The parameter types a Parse declares (the rest of the message after its name).
pub fn declared_params(parse_rest: &[u8]) -> Option<u16> {
    let (_, after) = frame::cstr(parse_rest)?;
    Some(u16::from_be_bytes([*after.first()?, *after.get(1)?]))
}

/// The parameter values a Bind supplies (the rest of the message after its two names).
pub fn supplied_params(bind_rest: &[u8]) -> Option<u16> {
    let formats = usize::from(u16::from_be_bytes([
        *bind_rest.first()?,
        *bind_rest.get(1)?,
    ]));
    let at = 2 + 2 * formats;
    Some(u16::from_be_bytes([
        *bind_rest.get(at)?,
        *bind_rest.get(at + 1)?,
    ]))
}

/// A Parse of the statement under its server name.
pub fn write_parse(out: &mut BytesMut, hash: u64, parse_rest: &[u8]) {
    with_length(out, b'P', |b| {
        b.put_slice(&server_name(hash));
        b.put_u8(0);
        b.put_slice(parse_rest);
    });
}

/// The reserved server name of a stand-in Parse (see [`write_stand_in`]). Client names never
/// reach the server in transaction mode (they become [`server_name`]s), so none can clash.
const STAND_IN: &[u8] = b"switchyard: stand-in";

/// A stand-in for a client's Parse of a statement the server has already: the same text and
/// types under [`STAND_IN`], then a Close of it. The server checks the text as PostgreSQL
/// would the client's Parse (and opens its implicit transaction, as that Parse would), and
/// keeps nothing: not even its unnamed statement changes.
pub fn write_stand_in(out: &mut BytesMut, parse_rest: &[u8]) {
    with_length(out, b'P', |b| {
        b.put_slice(STAND_IN);
        b.put_u8(0);
        b.put_slice(parse_rest);
    });
    close_stand_in(out, b'S');
}

/// A Close of the statement (`kind` `S`) or portal (`P`) named [`STAND_IN`].
fn close_stand_in(out: &mut BytesMut, kind: u8) {
    with_length(out, b'C', |b| {
        b.put_u8(kind);
        b.put_slice(STAND_IN);
        b.put_u8(0);
    });
}

/// A query that returns no row and changes nothing, but takes the transaction's snapshot as
/// `DEALLOCATE` does: the server runs it in place of one the proxy answers (here and in
/// `responses::DEALLOCATE_STAND_IN`).
pub const SNAPSHOT_QUERY: &[u8] = b"SELECT WHERE false";

/// The stand-in of an extended-protocol `DEALLOCATE` the proxy answers: a query that
/// returns no row and changes nothing, parsed, bound and run under [`STAND_IN`], then closed.
/// Like `DEALLOCATE`, it takes the transaction's snapshot (after it, `SET TRANSACTION
/// ISOLATION LEVEL` is too late).
pub fn write_snapshot_stand_in(out: &mut BytesMut) {
    with_length(out, b'P', |b| {
        b.put_slice(STAND_IN);
        b.put_u8(0);
        b.put_slice(SNAPSHOT_QUERY);
        b.put_slice(&[0; 3]); // end of the text, no parameter types
    });
    with_length(out, b'B', |b| {
        for _ in 0..2 {
            b.put_slice(STAND_IN);
            b.put_u8(0);
        }
        b.put_slice(&[0; 6]); // no parameter formats, parameters or result formats
    });
    with_length(out, b'E', |b| {
        b.put_slice(STAND_IN);
        b.put_slice(&[0; 5]); // all rows
    });
    close_stand_in(out, b'P');
    close_stand_in(out, b'S');
}

/// The client's Bind, pointed at the server name.
pub fn write_bind(out: &mut BytesMut, portal: &[u8], hash: u64, bind_rest: &[u8]) {
    with_length(out, b'B', |b| {
        b.put_slice(portal);
        b.put_u8(0);
        b.put_slice(&server_name(hash));
        b.put_u8(0);
        b.put_slice(bind_rest);
    });
}

/// A Describe of the statement under its server name.
pub fn write_describe(out: &mut BytesMut, hash: u64) {
    with_length(out, b'D', |b| {
        b.put_u8(b'S');
        b.put_slice(&server_name(hash));
        b.put_u8(0);
    });
}

/// A Close of the statement under its server name (to make room under the cap).
pub fn write_close(out: &mut BytesMut, hash: u64) {
    with_length(out, b'C', |b| {
        b.put_u8(b'S');
        b.put_slice(&server_name(hash));
        b.put_u8(0);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_of_parse_and_bind() {
        assert_eq!(
            declared_params(b"SELECT $1\0\0\x02\0\0\0\x17\0\0\0\0"),
            Some(2)
        );
        assert_eq!(declared_params(b"SELECT 1\0\0\0"), Some(0));
        assert_eq!(declared_params(b"SELECT 1\0\0"), None, "cut short");
        // Two format codes, then three values.
        assert_eq!(supplied_params(b"\0\x02\0\0\0\x01\0\x03"), Some(3));
        assert_eq!(supplied_params(b"\0\0\0\0\0\0"), Some(0));
        assert_eq!(supplied_params(b"\0\x02\0\0"), None, "cut short");
    }

    #[test]
    fn same_text_same_server_name() {
        let mut a = Statements::default();
        let mut b = Statements::default();
        let ha = a.insert(b"s1", b"select 1\0\0\0");
        let hb = b.insert(b"other", b"select 1\0\0\0");
        assert_eq!(ha, hb);
        assert_ne!(ha, hash(b"select 2\0\0\0"));
        assert_eq!(&server_name(0xabc)[..], b"S_0000000000000abc");
    }

    fn q(sql: &str) -> bytes::BytesMut {
        let mut m = bytes::BytesMut::new();
        postgres_protocol::message::frontend::query(sql, &mut m).expect("no NUL in the text");
        m
    }

    #[test]
    fn deallocate_targets_are_read_as_postgresql_reads_them() {
        let name = |n: &str| Some(Deallocate::Name(n.as_bytes().to_vec()));
        let cases = [
            ("DEALLOCATE pdo_stmt_00000001", name("pdo_stmt_00000001")),
            ("  deallocate prepare _pg3_0 ;\n", name("_pg3_0")),
            ("DEALLOCATE Mixed$1", name("mixed$1")),
            ("DEALLOCATE \"Mixed \"\"q\"\"\"", name("Mixed \"q\"")),
            ("DEALLOCATE \"prepare\"", name("prepare")),
            ("DEALLOCATE \"all\"", name("all")),
            ("DeAllocate ALL", Some(Deallocate::All)),
            ("DEALLOCATE PREPARE all;", Some(Deallocate::All)),
            ("DEALLOCATE", None),
            ("DEALLOCATE a; SELECT 1", None),
            ("DEALLOCATE a b", None),
            ("DEALLOCATE /* c */ a", None),
            ("DEALLOCATE 1a", None),
            ("DEALLOCATE \"\"", None),
            ("DEALLOCATE \"a\"b\"", None),
            ("DEALLOCATEa", None),
            ("SELECT 1", None),
            ("DISCARD ALL", None),
        ];
        for (sql, want) in cases {
            assert_eq!(deallocate_target(&q(sql)), want, "{sql}");
        }
    }

    #[test]
    fn bind_is_rewritten_with_a_correct_length() {
        let mut out = BytesMut::new();
        write_bind(&mut out, b"", 1, b"\0\0\0\0\0\0");
        let len = i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(len + 1, out.len());
        assert_eq!(&out[5..6], b"\0");
        assert_eq!(&out[6..24], &server_name(1));
    }
}
