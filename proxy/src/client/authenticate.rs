//! Checking a client's password the way PostgreSQL would, with the same messages and SQLSTATEs
//! (`28P01 password authentication failed for user "…"`).

use super::handshake::fill;
use super::Refusal;
use crate::auth::md5::{constant_time_eq, expected_response, stored_hash};
use crate::auth::scram::{ScramError, ScramExchange};
use crate::auth::{AuthMethod, ClientSecret};
use crate::protocol::{backend, frame, sqlstate};
use crate::socket::Stream;
use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;

fn failed(user: &str) -> Refusal {
    Refusal::fatal(
        sqlstate::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    )
}

/// Reads the client's next password-type (`p`) message body.
async fn read_password_message(
    stream: &mut Stream,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Vec<u8>, Refusal> {
    let max = max.min(64 * 1024);
    let violation = |m: String| Refusal::fatal(sqlstate::PROTOCOL_VIOLATION, m);
    loop {
        match frame::complete(buf, max).map_err(|e| violation(e.to_string()))? {
            Some(f) if f.tag == b'p' => {
                let body = f.body(buf).to_vec();
                buf.advance(f.total);
                return Ok(body);
            }
            Some(f) => {
                return Err(violation(format!(
                    "expected password response, got message type {}",
                    f.tag
                )))
            }
            None => {
                let want = buf.len() + 1;
                fill(stream, buf, want).await?;
            }
        }
    }
}

async fn send(stream: &mut Stream, out: &mut BytesMut) -> Result<(), Refusal> {
    let r = stream.write_all(out).await.map_err(|_| Refusal::Gone);
    out.clear();
    r
}

/// Runs the configured exchange for `user`: `auth` with its stored `secret`.
pub(crate) async fn authenticate(
    stream: &mut Stream,
    buf: &mut BytesMut,
    user: &str,
    (auth, secret): (AuthMethod, Option<&ClientSecret>),
    max: usize,
) -> Result<(), Refusal> {
    let mut out = BytesMut::new();
    match (auth, secret) {
        (AuthMethod::Trust, _) => Ok(()),
        (AuthMethod::Password, Some(ClientSecret::Plain { password, .. })) => {
            backend::auth_cleartext(&mut out);
            send(stream, &mut out).await?;
            let body = read_password_message(stream, buf, max).await?;
            let given = body.strip_suffix(b"\0").unwrap_or(&body);
            if constant_time_eq(given, password.as_bytes()) {
                Ok(())
            } else {
                Err(failed(user))
            }
        }
        (AuthMethod::Md5, Some(secret)) => {
            let stored = match secret {
                ClientSecret::Plain { password, .. } => stored_hash(user, password),
                ClientSecret::Md5Hash(h) => h.clone(),
                ClientSecret::Scram(_) => return Err(failed(user)),
            };
            let salt: [u8; 4] = rand::random();
            backend::auth_md5(&mut out, salt);
            send(stream, &mut out).await?;
            let body = read_password_message(stream, buf, max).await?;
            let given = body.strip_suffix(b"\0").unwrap_or(&body);
            if constant_time_eq(given, expected_response(&stored, salt).as_bytes()) {
                Ok(())
            } else {
                Err(failed(user))
            }
        }
        (AuthMethod::ScramSha256, Some(ClientSecret::Plain { scram, .. }))
        | (AuthMethod::ScramSha256, Some(ClientSecret::Scram(scram))) => {
            backend::auth_sasl(&mut out, &["SCRAM-SHA-256"]);
            send(stream, &mut out).await?;
            let body = read_password_message(stream, buf, max).await?;
            let violation = |m: &str| Refusal::fatal(sqlstate::PROTOCOL_VIOLATION, m.to_string());
            let (mechanism, rest) = frame::cstr(&body)
                .ok_or_else(|| violation("malformed SASLInitialResponse message"))?;
            if mechanism != b"SCRAM-SHA-256" {
                return Err(violation(
                    "client selected an invalid SASL authentication mechanism",
                ));
            }
            if rest.len() < 4 {
                return Err(violation("malformed SASLInitialResponse message"));
            }
            let client_first = &rest[4..];
            let scram_err = |e: ScramError| match e {
                ScramError::WrongPassword => failed(user),
                ScramError::Protocol(m) => violation(m),
            };
            let exchange = ScramExchange::start(scram, client_first).map_err(scram_err)?;
            backend::auth_sasl_continue(&mut out, exchange.server_first());
            send(stream, &mut out).await?;
            let client_final = read_password_message(stream, buf, max).await?;
            let server_final = exchange.finish(&client_final).map_err(scram_err)?;
            backend::auth_sasl_final(&mut out, &server_final);
            send(stream, &mut out).await
        }
        _ => Err(failed(user)),
    }
}
