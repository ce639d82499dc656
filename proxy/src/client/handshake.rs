//! The startup handshake: SSL/GSSAPI requests (declined), cancel requests, protocol version
//! negotiation, picking the pool, authentication, and the greeting a logged-in client expects
//! (`AuthenticationOk`, `ParameterStatus`…, `BackendKeyData`, `ReadyForQuery`).

use super::authenticate::authenticate;
use super::{ClientParams, Refusal};
use crate::cancel::Registration;
use crate::pool::{CheckoutError, UserPool};
use crate::protocol::startup::{self, StartupPacket};
use crate::protocol::{backend, sqlstate};
use crate::server::ParamList;
use crate::socket::Stream;
use crate::Proxy;
use bytes::{Buf, BytesMut};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the first packets asked for.
pub(crate) enum Hello {
    Cancel {
        pid: i32,
        secret: i32,
    },
    Login(Login),
    /// A user of the admin console, logged in and greeted.
    Console {
        user: String,
        application_name: String,
    },
}

/// A logged-in client, ready for its session.
pub(crate) struct Login {
    pub pool: Arc<UserPool>,
    pub params: ClientParams,
}

/// Reads bytes until `buf` holds at least `n`.
pub(crate) async fn fill(stream: &mut Stream, buf: &mut BytesMut, n: usize) -> Result<(), Refusal> {
    while buf.len() < n {
        buf.reserve(n - buf.len());
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(Refusal::Gone),
            Ok(_) => {}
        }
    }
    Ok(())
}

async fn write(stream: &mut Stream, bytes: &[u8]) -> Result<(), Refusal> {
    stream.write_all(bytes).await.map_err(|_| Refusal::Gone)
}

/// Runs the handshake; on success the client is authenticated and greeted.
pub(crate) async fn handshake(
    stream: &mut Stream,
    proxy: &Proxy,
    buf: &mut BytesMut,
    registration: &Registration<'_>,
) -> Result<Hello, Refusal> {
    let violation = |m: String| Refusal::fatal(sqlstate::PROTOCOL_VIOLATION, m);
    let mut requests = 0;
    let (major, minor, params) = loop {
        fill(stream, buf, 4).await?;
        let len = startup::packet_len(buf)
            .map_err(|e| violation(e.to_string()))?
            .expect("four bytes are there");
        fill(stream, buf, len).await?;
        let packet = startup::parse(&buf[..len]).map_err(|e| violation(e.to_string()))?;
        buf.advance(len);
        match packet {
            StartupPacket::Ssl | StartupPacket::GssEnc => {
                requests += 1;
                if requests > 2 {
                    return Err(violation("too many encryption requests".into()));
                }
                write(stream, b"N").await?;
            }
            StartupPacket::Cancel { pid, secret } => return Ok(Hello::Cancel { pid, secret }),
            StartupPacket::Startup {
                major,
                minor,
                params,
            } => break (major, minor, params),
        }
    };
    if major != 3 {
        return Err(Refusal::fatal(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0"),
        ));
    }
    let (protocol_options, params): (Vec<_>, Vec<_>) = params
        .into_iter()
        .partition(|(k, _)| k.starts_with("_pq_."));
    // The greeting is ~420 bytes (a ParameterStatus per reported parameter): one allocation,
    // not one per doubling. 512 stays within glibc's per-thread cache (up to 1,032 bytes);
    // a larger first block would take the slower, locked arena path on every login.
    let mut out = BytesMut::with_capacity(512);
    if minor > 0 || !protocol_options.is_empty() {
        let names: Vec<String> = protocol_options.into_iter().map(|(k, _)| k).collect();
        backend::negotiate_protocol_version(&mut out, 0, &names);
        write(stream, &out).await?;
        out.clear();
    }

    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let user = get("user").filter(|u| !u.is_empty()).ok_or_else(|| {
        Refusal::fatal(
            sqlstate::INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet",
        )
    })?;
    let database = get("database").filter(|d| !d.is_empty()).unwrap_or(user);
    if get("replication").is_some_and(|r| r != "false" && r != "off" && r != "0") {
        return Err(Refusal::fatal(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "replication connections are not supported by switchyard",
        ));
    }
    let console = proxy.config.admin.as_ref();
    if console.is_some_and(|a| a.database == database) {
        let Some(u) = proxy.live.admin_user(user) else {
            return Err(Refusal::fatal(
                sqlstate::INVALID_AUTHORIZATION,
                format!("role \"{user}\" does not exist"),
            ));
        };
        let (auth, secret) = u.client_auth().expect("config was validated");
        let max = proxy.general().max_message_size;
        authenticate(stream, buf, user, (auth, secret.as_ref()), max).await?;
        let application_name = get("application_name").unwrap_or("");
        crate::admin::greet(&mut out, application_name, registration);
        write(stream, &out).await?;
        return Ok(Hello::Console {
            user: user.to_owned(),
            application_name: application_name.to_owned(),
        });
    }
    let pool = match proxy.pools.get(database, user) {
        Some(p) => p,
        None if !proxy.pools.has_database(database) => {
            return Err(Refusal::fatal(
                sqlstate::INVALID_CATALOG_NAME,
                format!("database \"{database}\" does not exist"),
            ))
        }
        None => {
            return Err(Refusal::fatal(
                sqlstate::INVALID_AUTHORIZATION,
                format!("role \"{user}\" does not exist"),
            ))
        }
    };
    let credentials = pool.credentials();
    authenticate(
        stream,
        buf,
        &pool.user,
        (credentials.auth, credentials.secret.as_ref()),
        proxy.general().max_message_size,
    )
    .await?;

    // The client's view of the session parameters starts from what a fresh server reports.
    let defaults = match pool.defaults() {
        Some(known) => known,
        None => learn_defaults(proxy, &pool).await?,
    };
    let params = ClientParams::from_startup(&defaults, &params)
        .map_err(|m| Refusal::fatal(sqlstate::PROTOCOL_VIOLATION, m))?;

    backend::auth_ok(&mut out);
    for (name, value) in defaults.iter() {
        let value = params.tracked_value(name).unwrap_or(value);
        backend::parameter_status(&mut out, name.as_bytes(), value.as_bytes());
    }
    backend::backend_key_data(&mut out, registration.pid, registration.secret);
    backend::ready_for_query(&mut out, b'I');
    write(stream, &out).await?;
    Ok(Hello::Login(Login { pool, params }))
}

/// The parameters a fresh server connection reports, asked of the primary (the first login of a
/// pool, or the first after a reload replaced the primary). A server that is restarting is
/// waited for, within `checkout_timeout_ms`.
async fn learn_defaults(proxy: &Proxy, pool: &UserPool) -> Result<Arc<ParamList>, Refusal> {
    let until = std::time::Instant::now()
        + std::time::Duration::from_millis(proxy.general().checkout_timeout_ms);
    let conn = loop {
        let primary = pool.backends.load().primary_server().clone();
        match Box::pin(primary.checkout_riding_out(until)).await {
            // A reload replaced the primary meanwhile: ask the new one.
            Err(CheckoutError::Retired) => continue,
            done => break done,
        }
    }
    .map_err(|e| match e {
        CheckoutError::Connect(c) => Refusal::fatal(c.sqlstate(), c.to_string()),
        paused @ CheckoutError::Paused { .. } => {
            Refusal::fatal(sqlstate::CANNOT_CONNECT_NOW, paused.to_string())
        }
        other => Refusal::fatal(sqlstate::TOO_MANY_CONNECTIONS, other.to_string()),
    })?;
    let defaults = Arc::new(conn.reported.clone());
    pool.learn_defaults(&conn.reported);
    conn.checkin();
    Ok(defaults)
}
