//! A connected socket, TCP or Unix-domain: how clients reach the proxy and the proxy reaches
//! PostgreSQL.
//!
//! PostgreSQL and libpq treat a host that starts with `/` as a directory holding the server's
//! socket file, `.s.PGSQL.<port>`; so does Switchyard, for `servers[].host` and for
//! `general.unix_socket_dir`. On one machine a Unix socket costs the kernel less than loopback
//! TCP (no TCP/IP stack per message), which is why PgBouncer users often connect that way.
//!
//! [`Stream`] is an enum rather than a trait object or a generic: one predictable branch per
//! read or write, and one copy of the session's code.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// TCP keepalive for a connection (`general.tcp_keepalive*`): how the kernel notices a peer
/// that vanished without a word on a connection that is idle. `None` keeps the system's value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keepalive {
    /// Silence before the first probe.
    pub idle: Option<Duration>,
    /// Time between probes.
    pub interval: Option<Duration>,
    /// Unanswered probes before the connection is dropped.
    pub count: Option<u32>,
}

impl Keepalive {
    /// Turns keepalive on for `socket` with these settings.
    pub fn apply(&self, socket: &TcpStream) -> io::Result<()> {
        let mut k = socket2::TcpKeepalive::new();
        if let Some(idle) = self.idle {
            k = k.with_time(idle);
        }
        if let Some(interval) = self.interval {
            k = k.with_interval(interval);
        }
        if let Some(count) = self.count {
            k = k.with_retries(count);
        }
        socket2::SockRef::from(socket).set_tcp_keepalive(&k)
    }
}

/// How the kernel notices a TCP peer that is gone (`general.tcp_keepalive*` and
/// `general.tcp_user_timeout_ms`), on client and server connections alike: keepalive probes
/// find it on an idle connection, and the user timeout on one with data sent and not
/// acknowledged (a server host that died mid-query, a cable pulled), which keepalive does not
/// cover and retransmissions would otherwise stretch to about 15 minutes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Liveness {
    /// `None`: no keepalive probes.
    pub keepalive: Option<Keepalive>,
    /// `TCP_USER_TIMEOUT`; `None`: the system's.
    pub user_timeout: Option<Duration>,
}

impl Liveness {
    /// Sets these options on `socket`.
    pub fn apply(&self, socket: &TcpStream) -> io::Result<()> {
        if let Some(k) = &self.keepalive {
            k.apply(socket)?;
        }
        if let Some(t) = self.user_timeout {
            socket2::SockRef::from(socket).set_tcp_user_timeout(Some(t))?;
        }
        Ok(())
    }
}

/// A Terminate message: what a client that says goodbye sends before it closes.
pub const TERMINATE: &[u8] = b"X\0\0\0\x04";

/// What a peer sent while nobody was reading its socket, seen without consuming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peeked {
    /// The peer closed the connection (end of file or a reset).
    Left,
    /// The peer sent a Terminate message and nothing else: it is leaving.
    Terminate,
    /// Bytes wait to be read: the peer is there and has more to say.
    Data,
}

/// The socket file of a PostgreSQL-style Unix socket directory and port.
pub fn socket_path(dir: &str, port: u16) -> PathBuf {
    Path::new(dir).join(format!(".s.PGSQL.{port}"))
}

/// Where a server is: a TCP address, or a Unix socket file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(a) => a.fmt(f),
            Endpoint::Unix(p) => p.display().fmt(f),
        }
    }
}

/// A connected socket of either kind.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// Connects to `host:port`, or to the socket file in directory `host` when it starts with
    /// `/`. TCP sockets get `TCP_NODELAY` (every message the proxy writes is complete) and
    /// `liveness`.
    pub async fn connect(
        host: &str,
        port: u16,
        liveness: Liveness,
    ) -> io::Result<(Stream, Endpoint)> {
        if host.starts_with('/') {
            let path = socket_path(host, port);
            let s = UnixStream::connect(&path).await?;
            return Ok((Stream::Unix(s), Endpoint::Unix(path)));
        }
        let s = TcpStream::connect((host, port)).await?;
        s.set_nodelay(true)?;
        liveness.apply(&s)?;
        let peer = s.peer_addr()?;
        Ok((Stream::Tcp(s), Endpoint::Tcp(peer)))
    }

    /// Connects to an endpoint found earlier (to send a cancel request).
    pub async fn connect_endpoint(endpoint: &Endpoint) -> io::Result<Stream> {
        Ok(match endpoint {
            Endpoint::Tcp(a) => Stream::Tcp(TcpStream::connect(a).await?),
            Endpoint::Unix(p) => Stream::Unix(UnixStream::connect(p).await?),
        })
    }

    /// Reads what is there without waiting; `WouldBlock` when nothing is.
    #[inline]
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_read(buf),
            Stream::Unix(s) => s.try_read(buf),
        }
    }

    /// Writes what the socket takes without waiting; `WouldBlock` when it takes nothing.
    #[inline]
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write(buf),
            Stream::Unix(s) => s.try_write(buf),
        }
    }

    /// Polls for what the peer sends while its socket is not being read, without consuming
    /// anything: `Pending` (with the waker registered) while it sends nothing. A lone
    /// Terminate is told apart when `terminate_counts`, that is when the bytes on the socket
    /// start a message.
    pub fn poll_peek(&self, cx: &mut Context<'_>, terminate_counts: bool) -> Poll<Peeked> {
        loop {
            let ready = match self {
                Stream::Tcp(s) => s.poll_read_ready(cx),
                Stream::Unix(s) => s.poll_read_ready(cx),
            };
            match ready {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(Peeked::Left),
                Poll::Ready(Ok(())) => {}
            }
            let mut buf = [0u8; TERMINATE.len() + 1];
            let fd = self.as_raw_fd();
            // `try_io` clears the readiness on `WouldBlock`, so the next poll registers anew.
            let peeked = match self {
                Stream::Tcp(s) => s.try_io(Interest::READABLE, || peek(fd, &mut buf)),
                Stream::Unix(s) => s.try_io(Interest::READABLE, || peek(fd, &mut buf)),
            };
            return Poll::Ready(match peeked {
                Ok(0) => Peeked::Left,
                Ok(n) if terminate_counts && &buf[..n] == TERMINATE => Peeked::Terminate,
                Ok(_) => Peeked::Data,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => Peeked::Left,
            });
        }
    }

    /// [`Stream::poll_peek`] for a socket already watched: while tokio's cached readiness says
    /// nothing arrived, `Pending` at the cost of one atomic load, without a system call or a
    /// new waker registration (the earlier `poll_peek`'s registration stands until its wake).
    /// Readiness that turns out stale is cleared and the waker registered anew.
    pub fn poll_peek_watched(&self, cx: &mut Context<'_>, terminate_counts: bool) -> Poll<Peeked> {
        let mut buf = [0u8; TERMINATE.len() + 1];
        let fd = self.as_raw_fd();
        let mut looked = false;
        let mut look = || {
            looked = true;
            peek(fd, &mut buf)
        };
        let peeked = match self {
            Stream::Tcp(s) => s.try_io(Interest::READABLE, &mut look),
            Stream::Unix(s) => s.try_io(Interest::READABLE, &mut look),
        };
        match peeked {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && !looked => Poll::Pending,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                self.poll_peek(cx, terminate_counts)
            }
            Err(_) | Ok(0) => Poll::Ready(Peeked::Left),
            Ok(n) if terminate_counts && &buf[..n] == TERMINATE => Poll::Ready(Peeked::Terminate),
            Ok(_) => Poll::Ready(Peeked::Data),
        }
    }

    /// Waits until the socket is readable (or closed).
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.readable().await,
            Stream::Unix(s) => s.readable().await,
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}

/// `recv(MSG_PEEK | MSG_DONTWAIT)`: the bytes waiting on a socket, left where they are.
/// (tokio offers peeking on TCP streams only, and std's Unix-socket `peek` is unstable.)
fn peek(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes for the whole call, and
    // `recv` writes at most that many; `fd` belongs to a socket the caller borrows.
    let n = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl AsyncRead for Stream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_files_are_named_like_postgresql_names_them() {
        assert_eq!(
            socket_path("/var/run/postgresql", 5432),
            PathBuf::from("/var/run/postgresql/.s.PGSQL.5432")
        );
    }

    #[tokio::test]
    async fn liveness_options_reach_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (s, _) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let s = s.unwrap();
        let sock = socket2::SockRef::from(&s);
        assert!(!sock.keepalive().unwrap());
        Liveness {
            keepalive: Some(Keepalive {
                idle: Some(Duration::from_secs(42)),
                interval: None,
                count: Some(4),
            }),
            user_timeout: Some(Duration::from_millis(2500)),
        }
        .apply(&s)
        .unwrap();
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(42));
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 4);
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(2500))
        );
    }

    /// Polls `poll_peek` once.
    fn peek_now(s: &Stream, terminate_counts: bool) -> Poll<Peeked> {
        let waker = std::task::Waker::noop();
        s.poll_peek(&mut Context::from_waker(waker), terminate_counts)
    }

    /// Waits (bounded) until `poll_peek` has something to say.
    async fn peek_soon(s: &Stream, terminate_counts: bool) -> Peeked {
        let peek = std::future::poll_fn(|cx| s.poll_peek(cx, terminate_counts));
        tokio::time::timeout(std::time::Duration::from_secs(5), peek)
            .await
            .expect("a peek result within 5 s")
    }

    #[tokio::test]
    async fn a_peek_tells_silence_data_goodbye_and_close_apart_and_consumes_nothing() {
        use tokio::io::AsyncWriteExt;
        // Unix and TCP sockets alike.
        let (a, mut b) = UnixStream::pair().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connect = TcpStream::connect(listener.local_addr().unwrap());
        let (c, accepted) = tokio::join!(connect, listener.accept());
        let (c, mut d) = (c.unwrap(), accepted.unwrap().0);
        let ends: [(Stream, &mut (dyn tokio::io::AsyncWrite + Unpin + Send)); 2] =
            [(Stream::Unix(a), &mut b), (Stream::Tcp(c), &mut d)];
        for (s, peer) in ends {
            assert_eq!(peek_now(&s, true), Poll::Pending, "nothing sent yet");
            peer.write_all(TERMINATE).await.unwrap();
            assert_eq!(peek_soon(&s, true).await, Peeked::Terminate);
            assert_eq!(
                peek_soon(&s, false).await,
                Peeked::Data,
                "mid-message, the same bytes are data"
            );
            peer.write_all(b"Q").await.unwrap();
            assert_eq!(
                peek_soon(&s, true).await,
                Peeked::Data,
                "more than a Terminate"
            );
            peer.shutdown().await.unwrap();
            // Nothing was consumed: the six bytes are still there to read.
            let mut buf = [0u8; 16];
            assert_eq!(s.try_read(&mut buf).unwrap(), 6);
            assert_eq!(peek_soon(&s, true).await, Peeked::Left, "end of file");
        }
    }

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_watched_peek_sees_what_arrived_and_the_first_registration_still_wakes() {
        use tokio::io::AsyncWriteExt;
        let (a, mut b) = UnixStream::pair().unwrap();
        let s = Stream::Unix(a);
        let count = std::sync::Arc::new(Count::default());
        let waker = std::task::Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        assert_eq!(
            s.poll_peek(&mut cx, true),
            Poll::Pending,
            "watch registered"
        );
        let noop = &mut Context::from_waker(std::task::Waker::noop());
        assert_eq!(s.poll_peek_watched(noop, true), Poll::Pending, "quiet");
        b.write_all(TERMINATE).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while count.0.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the first waker is woken"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(
            s.poll_peek_watched(noop, true),
            Poll::Ready(Peeked::Terminate)
        );
        drop(b);
        assert_eq!(peek_soon(&s, true).await, Peeked::Terminate, "still unread");
        let mut buf = [0u8; 8];
        assert_eq!(s.try_read(&mut buf).unwrap(), TERMINATE.len());
        let left = std::future::poll_fn(|cx| s.poll_peek_watched(cx, true));
        let left = tokio::time::timeout(std::time::Duration::from_secs(5), left).await;
        assert_eq!(left.expect("end of file seen"), Peeked::Left);
    }

    #[tokio::test]
    async fn connects_by_unix_socket_when_the_host_is_a_directory() {
        let dir = std::env::temp_dir().join(format!("sy-socket-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = socket_path(dir.to_str().unwrap(), 7);
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let (client, endpoint) = Stream::connect(dir.to_str().unwrap(), 7, Liveness::default())
            .await
            .unwrap();
        assert_eq!(endpoint, Endpoint::Unix(path.clone()));
        let (server, _) = listener.accept().await.unwrap();
        server.writable().await.unwrap();
        server.try_write(b"hi").unwrap();
        client.readable().await.unwrap();
        let mut buf = [0u8; 2];
        assert_eq!(client.try_read(&mut buf).unwrap(), 2);
        assert_eq!(&buf, b"hi");
        assert!(matches!(client, Stream::Unix(_)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
