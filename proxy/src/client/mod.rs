//! A client connection, from its first byte to its last: the startup handshake and login
//! ([`handshake`]), then the session that forwards its messages to pooled servers ([`session`]).

mod authenticate;
mod extended_deallocate;
mod handshake;
mod params;
mod pending_names;
mod queued;
mod responses;
mod server_names;
mod session;
mod session_sql;
mod statements;
mod transaction_block;

pub use params::ClientParams;

use crate::cancel::{ClientInfo, Registration, Who};
use crate::pool::PoolClient;
use crate::protocol::backend::{self, Severity};
use crate::server::params::TrackedParams;
use crate::socket::Stream;
use crate::Proxy;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// How long a client may take from connecting to being logged in (PostgreSQL: 60 s).
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a client connection ends before or outside normal forwarding.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The client went away; nothing to tell it.
    Gone,
    /// Tell the client this FATAL error, then close.
    Fatal { code: String, message: String },
}

impl Refusal {
    pub(crate) fn fatal(code: &str, message: impl Into<String>) -> Self {
        Refusal::Fatal {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

/// Serves one client connection until it ends.
/// `peer` is `None` for a client on the Unix socket.
///
/// Every connected client's task holds this future for its whole life, so it keeps only what
/// the session needs: the login (large, needed once) runs in a boxed future of its own.
pub async fn serve(stream: Stream, peer: Option<SocketAddr>, proxy: &Proxy) {
    let registration = proxy.cancels.register();
    // Matched by reference: the session is not moved into a second copy inside this future,
    // whose size is memory per idle client.
    let mut entered = Box::pin(log_in(stream, peer, proxy, &registration)).await;
    match &mut entered {
        Some(Entered::Session(session, _counted)) => session.run().await,
        Some(Entered::Console(_)) => console(entered.take()).await,
        None => {}
    }
}

/// The admin console's session, boxed: its future is no part of every pooled client's (a
/// local console binding in `serve` would be).
fn console(
    entered: Option<Entered<'_>>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
    Box::pin(async move {
        if let Some(Entered::Console(console)) = entered {
            console.run().await
        }
    })
}

/// Where a logged-in client goes. Not boxed: a pooled session is the common case, and it
/// lives in place in its client's task.
#[allow(clippy::large_enum_variant)]
enum Entered<'p> {
    /// A pool's session, counted in its pool while it lasts.
    Session(session::Session<'p>, PoolClient),
    /// The admin console.
    Console(crate::admin::Console<'p>),
}

/// The handshake, up to a session ready to forward (or the admin console); `None` when the
/// connection ends here (a cancel request, a refusal, or a client that went away).
async fn log_in<'p>(
    mut stream: Stream,
    peer: Option<SocketAddr>,
    proxy: &'p Proxy,
    registration: &Registration<'_>,
) -> Option<Entered<'p>> {
    if let Stream::Tcp(s) = &stream {
        let _ = s.set_nodelay(true);
        // A client that vanished is noticed and its server, if it holds one, freed.
        if let Err(e) = proxy.config.general.liveness().apply(s) {
            tracing::warn!(error = %e, "cannot set TCP keepalive or user timeout on a client connection");
        }
    }
    let mut buf = BytesMut::new();
    let login = tokio::time::timeout(
        LOGIN_TIMEOUT,
        handshake::handshake(&mut stream, proxy, &mut buf, registration),
    )
    .await
    .unwrap_or_else(|_| {
        Err(Refusal::fatal(
            crate::protocol::sqlstate::PROTOCOL_VIOLATION,
            "canceling authentication due to timeout",
        ))
    });
    match login {
        Ok(handshake::Hello::Cancel { pid, secret }) => {
            let timeout = Duration::from_millis(proxy.general().cancel_timeout_ms);
            // Boxed, like the refusal below: rare paths with large futures.
            Box::pin(proxy.cancels.cancel(pid, secret, timeout)).await;
            None
        }
        Ok(handshake::Hello::Login(login)) => {
            tracing::debug!(peer = ?peer, user = %login.pool.user, database = %login.pool.database, "client logged in");
            let counted = login.pool.enter();
            let app = login.params.tracked.get(TrackedParams::APPLICATION_NAME);
            let who = Who::Pool(login.pool.clone());
            let _ = registration.slot.info.set(ClientInfo::new(who, peer, app));
            Some(Entered::Session(
                session::Session::new(proxy, stream, peer, buf, login, registration),
                counted,
            ))
        }
        Ok(handshake::Hello::Console {
            user,
            application_name,
        }) => {
            tracing::info!(peer = ?peer, %user, "admin console login");
            let who = Who::Console(user.clone());
            let _ = registration
                .slot
                .info
                .set(ClientInfo::new(who, peer, &application_name));
            Some(Entered::Console(crate::admin::Console::new(
                proxy,
                stream,
                buf,
                user,
                registration.slot.clone(),
            )))
        }
        Err(Refusal::Gone) => None,
        Err(Refusal::Fatal { code, message }) => {
            tracing::info!(peer = ?peer, %code, %message, "client refused");
            Box::pin(send_fatal(&mut stream, &code, &message)).await;
            None
        }
    }
}

/// Writes a FATAL ErrorResponse and closes the connection so that the client reads it.
pub(crate) async fn send_fatal(stream: &mut Stream, code: &str, message: &str) {
    let mut buf = BytesMut::new();
    backend::error(&mut buf, Severity::Fatal, code, message);
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&buf)).await;
    linger_close(stream).await;
}

/// Closes our side, then reads and drops what the client still sends for a moment. Closing a
/// socket with unread input makes the kernel send RST, which can destroy the error message the
/// client has not read yet.
pub(crate) async fn linger_close(stream: &mut Stream) {
    use tokio::io::AsyncReadExt;
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut total = 0usize;
        while let Ok(n) = stream.read(&mut sink).await {
            total += n;
            if n == 0 || total > (1 << 20) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(250), drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cancel::CancelRegistry;
    use crate::pool::Pools;
    use crate::shutdown::{ClientCounter, ShutdownController};
    use std::sync::Arc;

    /// Every connected client's task holds `serve`'s future for its whole life, so its size is
    /// memory per idle client. It was 2,472 bytes before the login got a boxed future of its own
    /// and `Session::run` stopped holding the session twice; a local kept across an `.await`
    /// (or a by-value `self`) brings that back. 1,400 until the pool's client count (an 8-byte
    /// guard) came with the admin console; the console's own session is boxed apart. 1,408
    /// until a session queued for a server could be reached by the console's `KILL` (the wait
    /// holds a reference to the client's slot). 1,424 until the session timed its requests and
    /// transactions for `SHOW STATS` (two 8-byte clock readings), 1,432 until it counted the
    /// client's bytes for them (two 8-byte counts), 1,448 until the answers to a client's
    /// Parse of the unnamed statement told whose the server's unnamed statement is (an 8-byte
    /// key on its way to the server connection). 1,456 until it answered `DEALLOCATE`s sent
    /// through the extended protocol (a boxed tracker, 8 bytes; its portal epoch is one byte
    /// so that the answers' tracker did not grow).
    #[tokio::test]
    async fn a_clients_task_stays_small() {
        let config = crate::config::parse(
            r#"
            [pools.app]
            servers = [{ host = "127.0.0.1", port = 5432, role = "primary" }]
            [pools.app.users.alice]
            password = "pw"
            "#,
            std::path::Path::new("test.toml"),
        )
        .expect("config");
        let (_controller, shutdown) = ShutdownController::new();
        let proxy = Proxy {
            pools: Arc::new(Pools::from_config(&config, 1).expect("pools")),
            live: Arc::new(crate::live::LiveSettings::new(&config.general, None)),
            config,
            cancels: CancelRegistry::default(),
            clients: Arc::new(ClientCounter::default()),
            shutdown,
            reloader: None,
            stop_requested: tokio::sync::Notify::new(),
        };
        let (socket, _peer) = tokio::net::UnixStream::pair().expect("socket pair");
        let task = serve(Stream::Unix(socket), None, &proxy);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1_464, "a client's task future is {size} bytes");
    }
}
