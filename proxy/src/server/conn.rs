//! One open, logged-in server connection and what the proxy knows about its state.

use crate::server::params::{ParamList, TrackedParams};
use crate::server::prepared::PreparedSet;
use crate::socket::{Endpoint, Stream};
use bytes::BytesMut;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// The key PostgreSQL gave this connection, to cancel what it runs.
///
/// `cancels_in_flight` lets the pool refuse to hand the connection to another client while a
/// cancel aimed at the previous client's query may still arrive.
#[derive(Debug)]
pub struct ServerKey {
    pub addr: Endpoint,
    pub pid: i32,
    pub secret: i32,
    pub cancels_in_flight: AtomicU32,
}

impl ServerKey {
    /// Whether a cancel request for this connection is still on its way.
    pub fn cancel_pending(&self) -> bool {
        self.cancels_in_flight.load(Ordering::Acquire) > 0
    }
}

/// How long a closed connection under a `max_db_connections` or `max_user_connections` cap
/// waits for the server to close its end before it gives its place back anyway.
pub const SERVER_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A server connection past login, ready for queries.
#[derive(Debug)]
pub struct ServerConn {
    pub stream: Stream,
    /// Bytes read from the server and not yet forwarded.
    pub rbuf: BytesMut,
    pub key: Arc<ServerKey>,
    /// The server's `ParameterStatus` values as last reported.
    pub reported: ParamList,
    /// The tracked subset of `reported`, for quick comparison at checkout.
    pub tracked: TrackedParams,
    /// Startup parameters without `ParameterStatus` (search_path, ...) the proxy has SET here.
    pub applied_extras: ParamList,
    /// The client (by proxy-issued pid) that may have set custom parameters here under names
    /// the proxy could not read back (`client::session_sql::Found::opaque`). Before another
    /// client uses the connection it gets `RESET ALL`, so that client never sees them.
    pub hidden_settings_of: Option<i32>,
    /// The proxy-named prepared statements that exist on this connection.
    pub prepared: PreparedSet,
    /// Whose Parse last set the unnamed statement here (a client's proxy-issued process id
    /// and how many simple Queries it had sent, see `Session::unnamed_key`); `u64::MAX`: none.
    /// Another client binding the unnamed statement without parsing it must get "does not
    /// exist", as on a connection of its own, not that client's statement.
    pub unnamed_owner: u64,
    /// When the connection is retired (server_lifetime with jitter), if ever, in
    /// [`clock::now_ms`](crate::clock::now_ms) milliseconds.
    pub retire_at_ms: Option<u64>,
    /// When it last went idle, in `clock::now_ms` milliseconds.
    pub idle_since_ms: u64,
    /// The worker whose reactor the socket is registered with; it returns to that worker's
    /// idle list.
    pub home: usize,
    /// Its place under its `max_db_connections` and `max_user_connections` caps, given back
    /// when it closes.
    pub cap_ticket: Option<crate::pool::CapTicket>,
    /// The pool's generation when the connection was opened: the admin console's `RECONNECT`
    /// starts a new one, and a connection of an older one is closed when released.
    pub generation: u64,
}

impl ServerConn {
    /// Whether the connection is still sound while idle: no unexpected bytes, no EOF.
    ///
    /// Uses tokio's cached readiness, so for a quiet socket this costs no system call.
    pub fn idle_check(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Marks the connection to be closed, not reused, when it is next returned to the pool.
    pub fn replace_when_released(&mut self) {
        self.retire_at_ms = Some(0);
    }

    /// Whether [`ServerConn::replace_when_released`] marked the connection.
    pub fn to_be_replaced(&self) -> bool {
        self.retire_at_ms == Some(0)
    }

    /// Sends `Terminate` if the socket takes it at once, so the server logs a clean goodbye.
    ///
    /// Under a `max_db_connections` or `max_user_connections` cap the connection keeps its
    /// place until the server has
    /// closed its end (at most [`SERVER_CLOSE_WAIT`]): PostgreSQL counts a backend against
    /// its own limits until it exits, so a connection opened in its place at once could be
    /// refused, or make one more than the cap for a moment.
    pub fn terminate(self) {
        let _ = self.stream.try_write(b"X\0\0\0\x04");
        if self.cap_ticket.as_ref().is_some_and(|t| t.limited()) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(self.closed_by_server());
            }
        }
    }

    /// Sends `Terminate` and waits for the server to close its end (at most
    /// [`SERVER_CLOSE_WAIT`]): once this returns, PostgreSQL no longer counts the connection.
    pub async fn close(self) {
        let _ = self.stream.try_write(b"X\0\0\0\x04");
        self.closed_by_server().await;
    }

    /// Waits for the server's end of the connection to close; then the connection is dropped.
    async fn closed_by_server(mut self) {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 512];
        let _ = tokio::time::timeout(SERVER_CLOSE_WAIT, async {
            while let Ok(1..) = self.stream.read(&mut buf).await {}
        })
        .await;
    }
}
