//! Opening a server connection: connect (TCP or Unix socket), StartupMessage, authentication (trust, cleartext,
//! md5, SCRAM-SHA-256) and the `ParameterStatus`/`BackendKeyData` that follow, up to the first
//! `ReadyForQuery`.

use crate::server::params::TrackedParams;
use crate::server::{ParamList, ServerConn, ServerKey};
use crate::socket::{Liveness, Stream};
use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::{ErrorFields, Message};
use postgres_protocol::message::frontend;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where and as whom to log in.
#[derive(Debug, Clone)]
pub struct ServerTarget {
    /// A host name or address, or a directory holding the server's Unix socket.
    pub host: String,
    pub port: u16,
    /// `host:port`, or the socket file: for messages.
    pub addr: String,
    pub user: String,
    pub database: String,
    pub password: Option<String>,
    /// How its TCP connections notice a server that is gone (`general.tcp_keepalive*`,
    /// `general.tcp_user_timeout_ms`).
    pub liveness: Liveness,
}

/// Why a server connection could not be opened.
#[derive(Debug, Error)]
pub enum ConnectError {
    #[error("could not connect to server {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to server {0}")]
    Timeout(String),
    #[error("server {addr} asked for a password for user \"{user}\", but none is configured (set server_password)")]
    NoPassword { addr: String, user: String },
    #[error("server {addr} asked for an unsupported authentication method: {method}")]
    UnsupportedAuth { addr: String, method: String },
    #[error("server {addr} refused login: {message}")]
    Refused {
        addr: String,
        code: String,
        message: String,
    },
    #[error("server {addr} broke the protocol during login: {detail}")]
    Protocol { addr: String, detail: String },
}

impl ConnectError {
    /// Whether the failure may pass by itself soon: the server refuses connections or is
    /// starting up, shutting down or full (a restart, a failover), as opposed to a
    /// configuration fault (a password, a database) or a server too slow to answer.
    pub fn passing(&self) -> bool {
        match self {
            ConnectError::Io { .. } => true,
            ConnectError::Refused { code, .. } => {
                // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections
                matches!(code.as_str(), "57P01" | "57P02" | "57P03" | "53300")
            }
            _ => false,
        }
    }

    /// The SQLSTATE to show a client.
    pub fn sqlstate(&self) -> &str {
        match self {
            ConnectError::Refused { code, .. } => code,
            _ => crate::protocol::sqlstate::CANNOT_CONNECT,
        }
    }
}

/// Opens and logs in a server connection within `timeout`.
pub async fn connect(
    target: &ServerTarget,
    timeout: Duration,
    lifetime: Option<Duration>,
) -> Result<Box<ServerConn>, ConnectError> {
    match tokio::time::timeout(timeout, Box::pin(login(target, lifetime))).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout(target.addr.clone())),
    }
}

async fn login(
    target: &ServerTarget,
    lifetime: Option<Duration>,
) -> Result<Box<ServerConn>, ConnectError> {
    let addr = &target.addr;
    let io = |source| ConnectError::Io {
        addr: addr.clone(),
        source,
    };
    let protocol = |detail: String| ConnectError::Protocol {
        addr: addr.clone(),
        detail,
    };
    let (mut stream, peer) = Stream::connect(&target.host, target.port, target.liveness)
        .await
        .map_err(io)?;

    let mut out = BytesMut::new();
    frontend::startup_message(
        [
            ("user", target.user.as_str()),
            ("database", target.database.as_str()),
        ],
        &mut out,
    )
    .map_err(io)?;
    stream.write_all(&out).await.map_err(io)?;
    out.clear();

    let mut rbuf = BytesMut::with_capacity(8192);
    let mut scram: Option<ScramSha256> = None;
    let mut reported = ParamList::new();
    let mut key = None;
    let password = || {
        target
            .password
            .as_deref()
            .ok_or_else(|| ConnectError::NoPassword {
                addr: addr.clone(),
                user: target.user.clone(),
            })
    };
    loop {
        let msg = loop {
            if let Some(m) = Message::parse(&mut rbuf).map_err(|e| protocol(e.to_string()))? {
                break m;
            }
            if rbuf.capacity() - rbuf.len() < 1024 {
                rbuf.reserve(8192);
            }
            if stream.read_buf(&mut rbuf).await.map_err(io)? == 0 {
                return Err(protocol("connection closed during login".into()));
            }
        };
        match msg {
            Message::AuthenticationOk => {}
            Message::AuthenticationCleartextPassword => {
                frontend::password_message(password()?.as_bytes(), &mut out).map_err(io)?;
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = postgres_protocol::authentication::md5_hash(
                    target.user.as_bytes(),
                    password()?.as_bytes(),
                    body.salt(),
                );
                frontend::password_message(hash.as_bytes(), &mut out).map_err(io)?;
            }
            Message::AuthenticationSasl(body) => {
                let mut offered = false;
                let mut mechs = body.mechanisms();
                while let Some(m) = mechs.next().map_err(|e| protocol(e.to_string()))? {
                    offered |= m == SCRAM_SHA_256;
                }
                if !offered {
                    return Err(ConnectError::UnsupportedAuth {
                        addr: addr.clone(),
                        method: "SASL without SCRAM-SHA-256".into(),
                    });
                }
                let s = ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out)
                    .map_err(io)?;
                scram = Some(s);
            }
            Message::AuthenticationSaslContinue(body) => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| protocol("unexpected SASL continue".into()))?;
                s.update(body.data()).map_err(|e| protocol(e.to_string()))?;
                frontend::sasl_response(s.message(), &mut out).map_err(io)?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let mut s = scram
                    .take()
                    .ok_or_else(|| protocol("unexpected SASL final".into()))?;
                s.finish(body.data())
                    .map_err(|e| protocol(format!("server SCRAM signature: {e}")))?;
            }
            Message::ParameterStatus(body) => {
                let name = body.name().map_err(|e| protocol(e.to_string()))?;
                let value = body.value().map_err(|e| protocol(e.to_string()))?;
                reported.set(name, value);
            }
            Message::BackendKeyData(body) => {
                key = Some((body.process_id(), body.secret_key()));
            }
            Message::NoticeResponse(_) => {}
            Message::ErrorResponse(body) => {
                let (code, message) = error_fields(body.fields());
                return Err(ConnectError::Refused {
                    addr: addr.clone(),
                    code,
                    message,
                });
            }
            Message::ReadyForQuery(_) => {
                let (pid, secret) = key.unwrap_or((0, 0));
                let now = crate::clock::read_ms();
                return Ok(Box::new(ServerConn {
                    stream,
                    rbuf,
                    key: Arc::new(ServerKey {
                        addr: peer,
                        pid,
                        secret,
                        cancels_in_flight: AtomicU32::new(0),
                    }),
                    tracked: TrackedParams::from_list(&reported),
                    reported,
                    applied_extras: ParamList::new(),
                    hidden_settings_of: None,
                    prepared: Default::default(),
                    unnamed_owner: u64::MAX,
                    retire_at_ms: lifetime.map(|l| now + jitter(l).as_millis() as u64),
                    idle_since_ms: now,
                    generation: 0,
                    home: crate::workers::current(),
                    cap_ticket: None,
                }));
            }
            Message::AuthenticationGss
            | Message::AuthenticationKerberosV5
            | Message::AuthenticationScmCredential
            | Message::AuthenticationSspi => {
                return Err(ConnectError::UnsupportedAuth {
                    addr: addr.clone(),
                    method: "GSS/SSPI/Kerberos".into(),
                })
            }
            _ => return Err(protocol("unexpected message during login".into())),
        }
        if !out.is_empty() {
            stream.write_all(&out).await.map_err(io)?;
            out.clear();
        }
    }
}

/// Reads the SQLSTATE and message of an ErrorResponse.
fn error_fields(mut fields: ErrorFields<'_>) -> (String, String) {
    let mut code = crate::protocol::sqlstate::CANNOT_CONNECT.to_string();
    let mut message = String::from("unknown error");
    while let Ok(Some(f)) = fields.next() {
        match f.type_() {
            b'C' => code = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'M' => message = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            _ => {}
        }
    }
    (code, message)
}

/// Spreads retirement ±10 % so connections opened together do not all close together.
fn jitter(lifetime: Duration) -> Duration {
    use rand::Rng;
    let ms = lifetime.as_millis() as u64;
    let spread = ms / 10;
    Duration::from_millis(ms - spread + rand::rng().random_range(0..=2 * spread))
}
