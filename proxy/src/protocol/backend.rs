//! Builders for the backend messages the proxy sends to clients on its own behalf.
//!
//! Each function appends one complete message to a `BytesMut`, so several can be batched into a
//! single write.

use bytes::{BufMut, BytesMut};

/// How bad an error is, as PostgreSQL's `S`/`V` fields say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends after this message.
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// Appends a message with a body produced by `body`, fixing up the length afterwards.
fn message(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    body(buf);
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(buf: &mut BytesMut, s: &[u8]) {
    buf.put_slice(s);
    buf.put_u8(0);
}

/// `ErrorResponse` with severity, SQLSTATE and message (the fields every client shows).
pub fn error(buf: &mut BytesMut, severity: Severity, code: &str, msg: &str) {
    message(buf, b'E', |b| {
        b.put_u8(b'S');
        put_cstr(b, severity.as_str().as_bytes());
        b.put_u8(b'V');
        put_cstr(b, severity.as_str().as_bytes());
        b.put_u8(b'C');
        put_cstr(b, code.as_bytes());
        b.put_u8(b'M');
        put_cstr(b, msg.as_bytes());
        b.put_u8(0);
    });
}

/// `NoticeResponse` with severity NOTICE, SQLSTATE 00000 and a message.
pub fn notice(buf: &mut BytesMut, msg: &str) {
    message(buf, b'N', |b| {
        for (field, value) in [
            (b'S', "NOTICE"),
            (b'V', "NOTICE"),
            (b'C', "00000"),
            (b'M', msg),
        ] {
            b.put_u8(field);
            put_cstr(b, value.as_bytes());
        }
        b.put_u8(0);
    });
}

/// `RowDescription` for result columns of the given names and type OIDs, in text format.
pub fn row_description(buf: &mut BytesMut, columns: &[(&str, u32)]) {
    message(buf, b'T', |b| {
        b.put_i16(columns.len() as i16);
        for (name, oid) in columns {
            put_cstr(b, name.as_bytes());
            b.put_i32(0); // no table
            b.put_i16(0); // no column number
            b.put_u32(*oid);
            b.put_i16(-1); // variable size
            b.put_i32(-1); // no type modifier
            b.put_i16(0); // text format
        }
    });
}

/// `DataRow` with the given values in text format (`None`: NULL).
pub fn data_row<'a>(buf: &mut BytesMut, values: impl ExactSizeIterator<Item = Option<&'a [u8]>>) {
    message(buf, b'D', |b| {
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v);
                }
                None => b.put_i32(-1),
            }
        }
    });
}

/// `ReadyForQuery` with a transaction status: `I` idle, `T` in a transaction, `E` failed one.
pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    message(buf, b'Z', |b| b.put_u8(status));
}

/// `AuthenticationOk`.
pub fn auth_ok(buf: &mut BytesMut) {
    message(buf, b'R', |b| b.put_i32(0));
}

/// `AuthenticationCleartextPassword`.
pub fn auth_cleartext(buf: &mut BytesMut) {
    message(buf, b'R', |b| b.put_i32(3));
}

/// `AuthenticationMD5Password` with its salt.
pub fn auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    message(buf, b'R', |b| {
        b.put_i32(5);
        b.put_slice(&salt);
    });
}

/// `AuthenticationSASL` offering the given mechanisms.
pub fn auth_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    message(buf, b'R', |b| {
        b.put_i32(10);
        for m in mechanisms {
            put_cstr(b, m.as_bytes());
        }
        b.put_u8(0);
    });
}

/// `AuthenticationSASLContinue` with the server-first-message.
pub fn auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    message(buf, b'R', |b| {
        b.put_i32(11);
        b.put_slice(data);
    });
}

/// `AuthenticationSASLFinal` with the server-final-message.
pub fn auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    message(buf, b'R', |b| {
        b.put_i32(12);
        b.put_slice(data);
    });
}

/// `ParameterStatus`.
pub fn parameter_status(buf: &mut BytesMut, name: &[u8], value: &[u8]) {
    message(buf, b'S', |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

/// `BackendKeyData`: the key a client quotes in a `CancelRequest`.
pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    message(buf, b'K', |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    });
}

/// `NegotiateProtocolVersion`: the newest minor version served, and the options not understood.
pub fn negotiate_protocol_version(buf: &mut BytesMut, minor: i32, unsupported: &[String]) {
    message(buf, b'v', |b| {
        b.put_i32((3 << 16) | minor);
        b.put_i32(unsupported.len() as i32);
        for o in unsupported {
            put_cstr(b, o.as_bytes());
        }
    });
}

/// A message with an empty body (`ParseComplete` `1`, `CloseComplete` `3`, ...).
pub fn empty(buf: &mut BytesMut, tag: u8) {
    buf.put_u8(tag);
    buf.put_i32(4);
}

/// A `CommandComplete` with its tag (`BEGIN`, `COMMIT`, ...), for statements the proxy answers.
pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    message(buf, b'C', |b| put_cstr(b, tag.as_bytes()));
}

/// A simple `Query`, used by the proxy for reset and parameter sync queries.
pub fn query(buf: &mut BytesMut, sql: &str) {
    message(buf, b'Q', |b| put_cstr(b, sql.as_bytes()));
}

/// A whole message from its tag and body, in a buffer of its own (for messages kept aside,
/// off the query path).
pub fn whole(tag: u8, body: &[u8]) -> BytesMut {
    let mut m = BytesMut::with_capacity(5 + body.len());
    m.extend_from_slice(&[tag]);
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// One field of an ErrorResponse (or NoticeResponse) body.
pub fn error_field(mut fields: &[u8], want: u8) -> Option<&[u8]> {
    while let Some((&kind, rest)) = fields.split_first() {
        if kind == 0 {
            return None;
        }
        let (value, after) = super::frame::cstr(rest)?;
        if kind == want {
            return Some(value);
        }
        fields = after;
    }
    None
}

/// The `M` field of a whole ErrorResponse message (tag and length included).
pub fn error_message(msg: &[u8]) -> String {
    error_field(msg.get(5..).unwrap_or_default(), b'M')
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_layout() {
        let mut b = BytesMut::new();
        error(&mut b, Severity::Error, "53300", "full");
        assert_eq!(b[0], b'E');
        let len = i32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        assert_eq!(len + 1, b.len());
        assert!(b.windows(6).any(|w| w == b"C53300"));
        assert_eq!(*b.last().unwrap(), 0);
    }

    #[test]
    fn ready_for_query_layout() {
        let mut b = BytesMut::new();
        ready_for_query(&mut b, b'I');
        assert_eq!(&b[..], b"Z\0\0\0\x05I");
    }
}
