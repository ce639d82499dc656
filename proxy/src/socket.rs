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
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

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
    /// `/`. TCP sockets get `TCP_NODELAY`: every message the proxy writes is complete.
    pub async fn connect(host: &str, port: u16) -> io::Result<(Stream, Endpoint)> {
        if host.starts_with('/') {
            let path = socket_path(host, port);
            let s = UnixStream::connect(&path).await?;
            return Ok((Stream::Unix(s), Endpoint::Unix(path)));
        }
        let s = TcpStream::connect((host, port)).await?;
        s.set_nodelay(true)?;
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

    /// Waits until the socket is readable (or closed).
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.readable().await,
            Stream::Unix(s) => s.readable().await,
        }
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
    async fn connects_by_unix_socket_when_the_host_is_a_directory() {
        let dir = std::env::temp_dir().join(format!("sy-socket-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = socket_path(dir.to_str().unwrap(), 7);
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let (client, endpoint) = Stream::connect(dir.to_str().unwrap(), 7).await.unwrap();
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
