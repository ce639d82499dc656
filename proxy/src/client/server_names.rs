//! Server errors that name a statement by the proxy's name for it (`S_…`), reworded with the
//! client's name.
//!
//! In transaction mode a client's named statements live on the servers under names derived
//! from their text (see `statements`). PostgreSQL words some errors with the statement's
//! name, such as "bind message supplies 2 parameters, but prepared statement "S_…" requires
//! 1"; the client, which never used that name, gets its own in its place, as from PostgreSQL.
//! Only errors pass through here, and only those whose message holds a quoted `"S_`.

use super::statements::Statements;
use crate::protocol::{backend, frame};
use bytes::BytesMut;

/// The ErrorResponse (whole message) with the client's name in its message, if `body` names
/// a statement of the client by its server name.
pub fn reworded(body: &[u8], statements: &Statements) -> Option<BytesMut> {
    let message = backend::error_field(body, b'M')?;
    let (at, hash) = named_statement(message)?;
    let name = statements.name_of(hash)?;
    let mut new_message = Vec::with_capacity(message.len() + name.len());
    new_message.extend_from_slice(&message[..at + 1]);
    new_message.extend_from_slice(name);
    new_message.extend_from_slice(&message[at + 19..]);
    // Every field as it was, the message replaced.
    let mut fields = Vec::with_capacity(body.len() + name.len());
    let mut rest = body;
    while let Some((&kind, after)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let (value, next) = frame::cstr(after)?;
        fields.push(kind);
        fields.extend_from_slice(if kind == b'M' { &new_message } else { value });
        fields.push(0);
        rest = next;
    }
    fields.push(0);
    Some(backend::whole(b'E', &fields))
}

/// The first statement a message names by the proxy's name for it (`"S_<16 hex digits>"`):
/// where its opening quote is, and its hash.
pub fn named_statement(message: &[u8]) -> Option<(usize, u64)> {
    let at = message.windows(3).position(|w| w == b"\"S_")?;
    let hex = message.get(at + 3..at + 19)?;
    if message.get(at + 19) != Some(&b'"') {
        return None;
    }
    let hash = u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
    Some((at, hash))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::statements::server_name;

    fn error(message: &str) -> Vec<u8> {
        let mut b = b"SERROR\0C08P01\0M".to_vec();
        b.extend_from_slice(message.as_bytes());
        b.extend_from_slice(b"\0Fpostgres.c\0\0");
        b
    }

    #[test]
    fn the_clients_name_replaces_the_servers() {
        let mut statements = Statements::default();
        let h = statements.insert(b"mine", b"SELECT $1\0\0\0");
        let server = String::from_utf8(server_name(h).to_vec()).unwrap();
        let body = error(&format!(
            "bind message supplies 2 parameters, but prepared statement \"{server}\" requires 1"
        ));
        let new = reworded(&body, &statements).expect("reworded");
        assert_eq!(
            backend::error_field(&new[5..], b'M'),
            Some(
                &b"bind message supplies 2 parameters, but prepared statement \"mine\" requires 1"
                    [..]
            )
        );
        assert_eq!(backend::error_field(&new[5..], b'C'), Some(&b"08P01"[..]));
        assert_eq!(
            backend::error_field(&new[5..], b'F'),
            Some(&b"postgres.c"[..])
        );
        assert_eq!(new.len(), 5 + body.len() - server.len() + 4);
    }

    #[test]
    fn a_server_name_is_found_quoted_only() {
        let name = String::from_utf8(server_name(7).to_vec()).unwrap();
        let quoted = format!("prepared statement \"{name}\" does not exist");
        assert_eq!(named_statement(quoted.as_bytes()), Some((19, 7)));
        assert_eq!(named_statement(name.as_bytes()), None, "not quoted");
        assert_eq!(named_statement(b"\"S_12\" x"), None, "too short");
    }

    #[test]
    fn other_errors_stay() {
        let statements = Statements::default();
        assert!(reworded(&error("division by zero"), &statements).is_none());
        let unknown = format!("prepared statement \"{}\" x", "S_0123456789abcdef");
        assert!(
            reworded(&error(&unknown), &statements).is_none(),
            "not the client's"
        );
    }
}
