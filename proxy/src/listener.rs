//! Accepting clients: one task per connection on a worker thread, bounded by `max_client_conn`.
//!
//! Clients connect over TCP (`listen_addr`) and, when `unix_socket_dir` is set, over a Unix
//! socket in that directory named like PostgreSQL's (`.s.PGSQL.<port of listen_addr>`), so that
//! `psql -h <dir> -p <port>` finds it.
//!
//! The accept loop runs on the first worker, not on the main thread: a client dealt to that
//! worker starts there with no hand-over, and with one worker (the default on a 2-CPU machine)
//! no client is handed over at all. A hand-over costs a second thread's wake-up and sleep, an
//! `eventfd` write and two `epoll_ctl` calls (measured: the accepting main thread was about a
//! quarter of the proxy's CPU with a new connection per transaction, `pgbench -C`).

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
use tokio::net::{TcpListener, TcpSocket, UnixListener};

/// The sockets clients connect to, bound but not yet registered with any thread's reactor, so
/// that the accept loop can run on whichever thread it is spawned on.
#[derive(Debug)]
pub struct Listeners {
    tcp: std::net::TcpListener,
    unix: Option<(std::os::unix::net::UnixListener, SocketFile)>,
    /// The metrics endpoint's socket (`general.metrics_addr`), bound first: a port in use
    /// stops startup before any client could connect.
    metrics: Option<std::net::TcpListener>,
}

/// A Unix socket file this proxy created; removed when dropped (on a clean shutdown).
#[derive(Debug)]
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Listeners {
    /// Binds `listen_addr` and, if configured, the Unix socket. A socket file left by a proxy
    /// that died is replaced; one that a live process still accepts on is an error.
    pub async fn bind(general: &General) -> Result<Listeners, String> {
        let metrics = match &general.metrics_addr {
            None => None,
            Some(a) => {
                let shown = |e: std::io::Error| {
                    format!("cannot listen for metrics on {a} (general.metrics_addr): {e}")
                };
                let l = std::net::TcpListener::bind(a).map_err(shown)?;
                l.set_nonblocking(true).map_err(shown)?;
                Some(l)
            }
        };
        let shown = |e: std::io::Error| format!("cannot listen on {}: {e}", general.listen_addr);
        let addr: SocketAddr = general.listen_addr.parse().map_err(|e| {
            format!(
                "general.listen_addr: \"{}\" is not an address: {e}",
                general.listen_addr
            )
        })?;
        // Bound first, listening last: whoever can connect over TCP finds the Unix socket too
        // (its name needs the port, which `listen_addr` may leave to the system).
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(shown)?;
        socket.set_reuseaddr(true).map_err(shown)?;
        socket.bind(addr).map_err(shown)?;
        let unix = match &general.unix_socket_dir {
            None => None,
            Some(dir) => {
                let port = socket.local_addr().map_err(shown)?.port();
                let path = socket_path(dir, port);
                let listener = bind_unix(&path).await?;
                Some((listener, SocketFile(path)))
            }
        };
        // A backlog of 1024, as tokio's `bind` gives, for bursts of new clients.
        let tcp = socket
            .listen(1024)
            .and_then(|l| l.into_std())
            .map_err(shown)?;
        Ok(Listeners { tcp, unix, metrics })
    }

    /// The TCP address clients connect to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The Unix socket file, if there is one.
    pub fn unix_path(&self) -> Option<&std::path::Path> {
        self.unix.as_ref().map(|(_, f)| f.0.as_path())
    }

    /// The metrics endpoint's socket, if configured, to serve apart from the clients'.
    pub fn take_metrics(&mut self) -> Option<std::net::TcpListener> {
        self.metrics.take()
    }

    /// Registers the sockets with the reactor of the thread this runs on.
    fn register(self) -> std::io::Result<Accepting> {
        let tcp = TcpListener::from_std(self.tcp)?;
        let unix = match self.unix {
            None => None,
            Some((l, file)) => Some((UnixListener::from_std(l)?, file)),
        };
        Ok(Accepting { tcp, unix })
    }
}

/// The listeners, registered with the accepting worker's reactor.
struct Accepting {
    tcp: TcpListener,
    unix: Option<(UnixListener, SocketFile)>,
}

impl Accepting {
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

async fn bind_unix(path: &std::path::Path) -> Result<std::os::unix::net::UnixListener, String> {
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
    let listener = std::os::unix::net::UnixListener::bind(path)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| format!("cannot listen on {shown}: {e}"))?;
    // Like PostgreSQL's default unix_socket_permissions: who may connect is decided by login.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))
        .map_err(|e| format!("cannot set the permissions of {shown}: {e}"))?;
    Ok(listener)
}

/// A socket on its way from the accepting worker to another worker's reactor.
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

/// Accepts until shutdown begins. Spawned on a worker: the clients dealt to that worker start
/// right there; the others are handed over to their worker's reactor. Fails only if the
/// listeners cannot be registered with this thread's reactor.
pub async fn accept_loop(
    listeners: Listeners,
    proxy: Arc<Proxy>,
    workers: Arc<Workers>,
) -> std::io::Result<()> {
    let home = crate::workers::current();
    let listeners = listeners.register()?;
    let mut shutdown = proxy.shutdown.clone();
    let max = proxy.general().max_client_conn;
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
            _ = shutdown.draining() => return Ok(()),
        };
        let Some(guard) = proxy.clients.try_enter(max) else {
            tokio::spawn(refuse(stream, max));
            continue;
        };
        let proxy = proxy.clone();
        let worker = workers.next_index();
        if worker == home {
            tokio::spawn(async move {
                let _guard = guard;
                crate::client::serve(stream, peer, &proxy).await;
            });
            continue;
        }
        // Hand the socket to another worker: deregister here, register on its reactor.
        let handover = match Handover::from_stream(stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand over a client connection");
                continue;
            }
        };
        workers.get(worker).spawn(async move {
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
