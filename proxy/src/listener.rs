//! Accepting clients: one task per connection on a worker thread, bounded by `max_client_conn`.
//!
//! Clients connect over TCP (`listen_addr`) and, when `unix_socket_dir` is set, over a Unix
//! socket in that directory named like PostgreSQL's (`.s.PGSQL.<port of listen_addr>`), so that
//! `psql -h <dir> -p <port>` finds it.

use crate::config::General;
use crate::protocol::{backend, sqlstate};
use crate::socket::{socket_path, Stream};
use crate::workers::Workers;
use crate::Proxy;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, UnixListener};

/// The sockets clients connect to. Dropping it removes the Unix socket file.
#[derive(Debug)]
pub struct Listeners {
    tcp: TcpListener,
    unix: Option<(UnixListener, PathBuf)>,
}

impl Listeners {
    /// Binds `listen_addr` and, if configured, the Unix socket. A socket file left by a proxy
    /// that died is replaced; one that a live process still accepts on is an error.
    pub async fn bind(general: &General) -> Result<Listeners, String> {
        let tcp = TcpListener::bind(&general.listen_addr)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", general.listen_addr))?;
        let unix = match &general.unix_socket_dir {
            None => None,
            Some(dir) => {
                let port = tcp.local_addr().map_err(|e| e.to_string())?.port();
                let path = socket_path(dir, port);
                Some((bind_unix(&path).await?, path))
            }
        };
        Ok(Listeners { tcp, unix })
    }

    /// The TCP address clients connect to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The Unix socket file, if there is one.
    pub fn unix_path(&self) -> Option<&std::path::Path> {
        self.unix.as_ref().map(|(_, p)| p.as_path())
    }

    /// The next client, from either socket; `None` for the peer of a Unix-socket client.
    async fn accept(&self) -> std::io::Result<(Stream, Option<SocketAddr>)> {
        match &self.unix {
            None => {
                let (s, peer) = self.tcp.accept().await?;
                Ok((Stream::Tcp(s), Some(peer)))
            }
            Some((unix, _)) => tokio::select! {
                r = self.tcp.accept() => r.map(|(s, peer)| (Stream::Tcp(s), Some(peer))),
                r = unix.accept() => r.map(|(s, _)| (Stream::Unix(s), None)),
            },
        }
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        if let Some((_, path)) = &self.unix {
            let _ = std::fs::remove_file(path);
        }
    }
}

async fn bind_unix(path: &std::path::Path) -> Result<UnixListener, String> {
    let shown = path.display();
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(format!(
                "cannot listen on {shown}: another server is accepting connections there"
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove the stale socket file {shown}: {e}"))?;
    }
    let listener =
        UnixListener::bind(path).map_err(|e| format!("cannot listen on {shown}: {e}"))?;
    // Like PostgreSQL's default unix_socket_permissions: who may connect is decided by login.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))
        .map_err(|e| format!("cannot set the permissions of {shown}: {e}"))?;
    Ok(listener)
}

/// A socket on its way from the accepting thread to a worker's reactor.
enum Handover {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Handover {
    fn from_stream(stream: Stream) -> std::io::Result<Handover> {
        Ok(match stream {
            Stream::Tcp(s) => Handover::Tcp(s.into_std()?),
            Stream::Unix(s) => Handover::Unix(s.into_std()?),
        })
    }

    fn into_stream(self) -> std::io::Result<Stream> {
        Ok(match self {
            Handover::Tcp(s) => Stream::Tcp(tokio::net::TcpStream::from_std(s)?),
            Handover::Unix(s) => Stream::Unix(tokio::net::UnixStream::from_std(s)?),
        })
    }
}

/// Accepts until shutdown begins.
pub async fn accept_loop(listeners: Listeners, proxy: Arc<Proxy>, workers: Arc<Workers>) {
    let mut shutdown = proxy.shutdown.clone();
    let max = proxy.config.general.max_client_conn;
    loop {
        let (stream, peer) = tokio::select! {
            r = listeners.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.draining() => return,
        };
        let Some(guard) = proxy.clients.try_enter(max) else {
            tokio::spawn(refuse(stream, max));
            continue;
        };
        // Hand the socket to a worker: deregister here, register on the worker's reactor.
        let handover = match Handover::from_stream(stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand over a client connection");
                continue;
            }
        };
        let proxy = proxy.clone();
        workers.next().spawn(async move {
            let _guard = guard;
            match handover.into_stream() {
                Ok(stream) => crate::client::serve(stream, peer, &proxy).await,
                Err(e) => tracing::warn!(error = %e, "cannot register a client connection"),
            }
        });
    }
}

/// Tells a client over `max_client_conn` why it cannot stay.
async fn refuse(mut stream: Stream, max: usize) {
    let mut buf = BytesMut::new();
    backend::error(
        &mut buf,
        backend::Severity::Fatal,
        sqlstate::TOO_MANY_CONNECTIONS,
        &format!("no more connections allowed (max_client_conn = {max})"),
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&buf)).await;
}
