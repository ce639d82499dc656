//! Queries the proxy runs on a server connection on its own behalf: the reset query, a ROLLBACK
//! for a client that left inside a transaction, and the `SET`s that give a server connection the
//! session parameters of the client that checks it out. Their results never reach a client.

use crate::protocol::{backend, frame};
use crate::server::params::parse_parameter_status;
use crate::server::ServerConn;
use bytes::{Buf, BytesMut};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The end of a maintenance run.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The first ErrorResponse the server sent, as a whole message.
    pub error: Option<Vec<u8>>,
    /// The transaction status of the last ReadyForQuery.
    pub tx_status: u8,
}

/// Sends each statement as its own simple `Query` and reads every response up to the last
/// `ReadyForQuery`. `on_param` sees each ParameterStatus the server reports meanwhile.
pub async fn run(
    conn: &mut ServerConn,
    statements: &[&str],
    timeout: Duration,
    on_param: impl FnMut(&str, &str),
) -> io::Result<Outcome> {
    exchange(conn, statements, timeout, on_param, |_| {}).await
}

/// Runs one query and hands each `DataRow` body to `on_row`.
pub async fn query_rows(
    conn: &mut ServerConn,
    sql: &str,
    timeout: Duration,
    on_row: impl FnMut(&[u8]),
) -> io::Result<Outcome> {
    exchange(conn, &[sql], timeout, |_, _| {}, on_row).await
}

async fn exchange(
    conn: &mut ServerConn,
    statements: &[&str],
    timeout: Duration,
    mut on_param: impl FnMut(&str, &str),
    mut on_row: impl FnMut(&[u8]),
) -> io::Result<Outcome> {
    let mut out = BytesMut::new();
    for s in statements {
        backend::query(&mut out, s);
    }
    let work = async {
        conn.stream.write_all(&out).await?;
        let mut outcome = Outcome::default();
        let mut owed = statements.len();
        while owed > 0 {
            let f = loop {
                match frame::complete(&conn.rbuf, usize::MAX) {
                    Ok(Some(f)) => break f,
                    Ok(None) => {}
                    Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                }
                if conn.rbuf.capacity() - conn.rbuf.len() < 1024 {
                    conn.rbuf.reserve(8192);
                }
                if conn.stream.read_buf(&mut conn.rbuf).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            };
            let body = f.body(&conn.rbuf);
            match f.tag {
                b'Z' => {
                    owed -= 1;
                    outcome.tx_status = body.first().copied().unwrap_or(b'I');
                }
                b'E' if outcome.error.is_none() => {
                    outcome.error = Some(conn.rbuf[..f.total].to_vec());
                }
                b'S' => {
                    if let Some((name, value)) = parse_parameter_status(body) {
                        conn.reported.set(name, value);
                        conn.tracked.set(name, value);
                        on_param(name, value);
                    }
                }
                b'C' if forgets_prepared_statements(body) => conn.prepared.clear(),
                b'D' => on_row(body),
                _ => {}
            }
            conn.rbuf.advance(f.total);
        }
        Ok(outcome)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Whether a CommandComplete tag means the server dropped all prepared statements.
pub fn forgets_prepared_statements(tag: &[u8]) -> bool {
    tag.starts_with(b"DISCARD ALL") || tag.starts_with(b"DEALLOCATE ALL")
}
