//! The first packet a client sends: a startup message, an SSL/GSSAPI encryption request, or a
//! cancel request. It has no tag byte, only a length and a 32-bit code.

use crate::protocol::frame::cstr;
use thiserror::Error;

/// PostgreSQL refuses startup packets larger than this (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET: usize = 10_000;

const SSL_REQUEST: i32 = 80877103;
const GSSENC_REQUEST: i32 = 80877104;
const CANCEL_REQUEST: i32 = 80877102;

/// What the client's first packet asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    /// `SSLRequest`: answered `N` until TLS is supported.
    Ssl,
    /// `GSSENCRequest`: answered `N`.
    GssEnc,
    /// `CancelRequest` with the key the proxy handed out in `BackendKeyData`.
    Cancel { pid: i32, secret: i32 },
    /// `StartupMessage`: protocol version and the `name=value` parameters, in order.
    Startup {
        major: u16,
        minor: u16,
        params: Vec<(String, String)>,
    },
}

/// Why a startup packet was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StartupError {
    #[error("invalid length of startup packet ({0})")]
    BadLength(i32),
    #[error("invalid startup packet layout: {0}")]
    Malformed(&'static str),
}

/// Reads the length of the startup packet at the start of `buf`, once four bytes are there.
pub fn packet_len(buf: &[u8]) -> Result<Option<usize>, StartupError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if !(8..=MAX_STARTUP_PACKET as i32).contains(&len) {
        return Err(StartupError::BadLength(len));
    }
    Ok(Some(len as usize))
}

/// Parses one complete startup packet (length prefix included).
pub fn parse(packet: &[u8]) -> Result<StartupPacket, StartupError> {
    let code = i32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    let body = &packet[8..];
    match code {
        SSL_REQUEST => Ok(StartupPacket::Ssl),
        GSSENC_REQUEST => Ok(StartupPacket::GssEnc),
        CANCEL_REQUEST => {
            if body.len() != 8 {
                return Err(StartupError::Malformed("cancel request must be 16 bytes"));
            }
            Ok(StartupPacket::Cancel {
                pid: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                secret: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
            })
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            // Clients send a handful (libpq: user, database, application_name, client_encoding
            // and a few more): one allocation for the list.
            let mut params = Vec::with_capacity(8);
            let mut rest = body;
            loop {
                let (name, after) =
                    cstr(rest).ok_or(StartupError::Malformed("missing terminator"))?;
                if name.is_empty() {
                    if !after.is_empty() {
                        return Err(StartupError::Malformed("bytes after the terminator"));
                    }
                    break;
                }
                let (value, after) =
                    cstr(after).ok_or(StartupError::Malformed("parameter without a value"))?;
                let name = String::from_utf8(name.to_vec())
                    .map_err(|_| StartupError::Malformed("parameter name is not UTF-8"))?;
                let value = String::from_utf8(value.to_vec())
                    .map_err(|_| StartupError::Malformed("parameter value is not UTF-8"))?;
                params.push((name, value));
                rest = after;
            }
            Ok(StartupPacket::Startup {
                major,
                minor,
                params,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: i32, body: &[u8]) -> Vec<u8> {
        let mut p = ((8 + body.len()) as i32).to_be_bytes().to_vec();
        p.extend_from_slice(&code.to_be_bytes());
        p.extend_from_slice(body);
        p
    }

    #[test]
    fn startup_parameters_are_read_in_order() {
        let p = packet(196608, b"user\0bob\0database\0app\0\0");
        assert_eq!(
            parse(&p).unwrap(),
            StartupPacket::Startup {
                major: 3,
                minor: 0,
                params: vec![
                    ("user".into(), "bob".into()),
                    ("database".into(), "app".into())
                ]
            }
        );
    }

    #[test]
    fn special_requests() {
        assert_eq!(
            parse(&packet(SSL_REQUEST, b"")).unwrap(),
            StartupPacket::Ssl
        );
        assert_eq!(
            parse(&packet(GSSENC_REQUEST, b"")).unwrap(),
            StartupPacket::GssEnc
        );
        let mut body = 7i32.to_be_bytes().to_vec();
        body.extend_from_slice(&9i32.to_be_bytes());
        assert_eq!(
            parse(&packet(CANCEL_REQUEST, &body)).unwrap(),
            StartupPacket::Cancel { pid: 7, secret: 9 }
        );
    }

    #[test]
    fn truncated_parameters_are_malformed() {
        assert!(parse(&packet(196608, b"user\0bob")).is_err());
        assert!(parse(&packet(196608, b"user\0")).is_err());
    }

    #[test]
    fn lengths_outside_the_limits_are_refused() {
        assert_eq!(packet_len(&[0, 0, 0, 4]), Err(StartupError::BadLength(4)));
        assert_eq!(
            packet_len(&[0xff, 0xff, 0xff, 0xff]),
            Err(StartupError::BadLength(-1))
        );
        assert!(packet_len(&[0, 1, 0, 0]).is_err());
        assert_eq!(packet_len(&[0, 0, 0, 8]), Ok(Some(8)));
    }
}
