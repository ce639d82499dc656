//! Raw protocol v3 bytes, for tests that go below a client library: messages built by hand,
//! and answers read message by message from a blocking socket (each read bounded by a
//! timeout, so a proxy that neither answers nor closes fails the test instead of hanging it).

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

/// One backend message: its tag and body.
pub type Message = (u8, Vec<u8>);

/// A message with `tag` and `body`, its length filled in.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// A simple-protocol Query message.
pub fn query(sql: &str) -> Vec<u8> {
    message(b'Q', format!("{sql}\0").as_bytes())
}

/// A protocol 3.0 StartupMessage for `user` and `database`.
pub fn startup_packet(user: &str, database: &str) -> Vec<u8> {
    let body = format!("user\0{user}\0database\0{database}\0\0");
    let mut p = ((body.len() + 8) as i32).to_be_bytes().to_vec();
    p.extend_from_slice(&196608i32.to_be_bytes());
    p.extend_from_slice(body.as_bytes());
    p
}

/// Reads messages up to and including the `n`th ReadyForQuery, or until the connection ends
/// (or a read times out after 5 s); returns them and whether it ended. Bytes that came in the
/// same read after that ReadyForQuery are dropped: send the next request only after this.
pub fn read_readies(s: &mut TcpStream, mut n: usize) -> (Vec<Message>, bool) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (mut buf, mut out, mut chunk) = (Vec::new(), Vec::new(), [0u8; 4096]);
    loop {
        while buf.len() >= 5 {
            let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() < len + 1 {
                break;
            }
            let tag = buf[0];
            out.push((tag, buf[5..len + 1].to_vec()));
            buf.drain(..len + 1);
            if tag == b'Z' {
                n -= 1;
                if n == 0 {
                    return (out, false);
                }
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return (out, true),
            Ok(got) => buf.extend_from_slice(&chunk[..got]),
        }
    }
}

/// The SQLSTATE of the first ErrorResponse or NoticeResponse in `bytes` (its `C` field, which
/// follows the `S` field's NUL).
pub fn error_code(bytes: &[u8]) -> Option<String> {
    let at = bytes.windows(2).position(|w| w == b"\0C")?;
    Some(String::from_utf8_lossy(bytes.get(at + 2..at + 7)?).into_owned())
}
