//! Named prepared statements in transaction mode.
//!
//! A client's statement `s1` may be parsed on one server connection and executed on another, and
//! two clients may both call a statement `s1`. So the proxy keeps each client's statements to
//! itself and names them on the servers by a hash of their text and parameter types
//! (`S_<16 hex digits>`): the same statement parsed by many clients exists once per server
//! connection. Before a `Bind` or `Describe` the proxy parses the statement on the current server
//! if it is missing there; a `Close` only forgets the client's name.

use bytes::{BufMut, BytesMut};
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hasher};

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

    /// Forgets a client's statement (its Close).
    pub fn remove(&mut self, name: &[u8]) {
        self.by_name.remove(name);
    }
}

fn with_length(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    body(out);
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// A Parse of the statement under its server name.
pub fn write_parse(out: &mut BytesMut, hash: u64, parse_rest: &[u8]) {
    with_length(out, b'P', |b| {
        b.put_slice(&server_name(hash));
        b.put_u8(0);
        b.put_slice(parse_rest);
    });
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
    fn same_text_same_server_name() {
        let mut a = Statements::default();
        let mut b = Statements::default();
        let ha = a.insert(b"s1", b"select 1\0\0\0");
        let hb = b.insert(b"other", b"select 1\0\0\0");
        assert_eq!(ha, hb);
        assert_ne!(ha, hash(b"select 2\0\0\0"));
        assert_eq!(&server_name(0xabc)[..], b"S_0000000000000abc");
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
