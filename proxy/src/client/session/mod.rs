//! A logged-in client's session: reads its messages, attaches a pooled server connection when a
//! transaction (transaction mode) or the session (session mode) needs one, forwards both ways,
//! and gives the server back as soon as it is idle.
//!
//! Per transaction the fast path is: one read from the client, one write to the server, one read
//! from the server, one write to the client, plus one pool checkout and checkin (a semaphore
//! permit and an uncontended mutex each). Server bytes are forwarded from the read buffer as they
//! arrive, without copying, unless the proxy has to insert or remove a message.
//!
//! This file holds the session's state and its loop; the rest follows the data path:
//! `client_messages` (each message from the client), `attach` (routing and checkout),
//! `forward` (client to server), `relay` (server to client) and `clean_up` (the end).

mod attach;
mod clean_up;
mod client_messages;
mod forward;
mod relay;
mod state_probe;
mod time_limits;
mod timing;
mod traffic;
mod unnamed_key;

use forward::named_statement;
use unnamed_key::{marked, taken_marks, unnamed_key, unnamed_owner};

use super::extended_deallocate::ExtendedDeallocate;
use super::handshake::Login;
use super::pending_names::PendingNames;
use super::queued;
use super::responses::{self, Owed, Responses, Verdict};
use super::server_names;
use super::session_sql::Found;
use super::statements::{self, Deallocate, Statements};
use super::transaction_block::{deferrable_begin, lone_end, may_begin};
use super::ClientParams;
use crate::cancel::{CancelSlot, Registration};
use crate::config::PoolMode;
use crate::pool::{CheckoutError, Pooled, UserPool};
use crate::protocol::backend::{self, error_message, Severity};
use crate::protocol::{frame, sqlstate};
use crate::router::{hints, Hint, RouteRequest};
use crate::server::maintenance;
use crate::server::params::parse_parameter_status;
use crate::server::params::TrackedParams;
use crate::server::{ParamList, ServerConn};
use crate::shutdown::{Phase, Shutdown};
use crate::socket::Stream;
use crate::Proxy;
use bytes::{Buf, BytesMut};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why forwarding stopped.
#[derive(Debug)]
enum End {
    /// The client sent Terminate.
    Terminate,
    /// The client's socket closed or failed.
    ClientGone,
    /// Tell the client this FATAL error and close.
    Fatal(&'static str, String),
    /// The client has its FATAL error already, the server's own: close.
    Told,
}

/// A server connection attached to the session.
struct Attached {
    /// The connection, with the server pool it goes back to.
    conn: Pooled,
    /// Transaction mode: the client's session keeps state on it that cannot move (see
    /// `session_sql`), so it stays with the client, parked between transactions, until the
    /// session ends.
    keeps: bool,
}

/// One client's session.
pub(crate) struct Session<'p> {
    proxy: &'p Proxy,
    pool: Arc<UserPool>,
    client: Stream,
    /// Client bytes not yet handled.
    cbuf: BytesMut,
    /// Messages the proxy writes to the client itself (errors, synthetic answers), and server
    /// bytes when a message had to be inserted or removed.
    to_client: BytesMut,
    /// Messages for the attached server.
    to_server: BytesMut,
    server: Option<Attached>,
    /// Routing happens per transaction: in transaction mode, and in session mode when the
    /// pool's policy asks for per-statement routing.
    per_transaction: bool,
    /// The pool's rules when the session started (a reload changes them for later sessions).
    mode: PoolMode,
    track_session_state: bool,
    /// The idle servers this session keeps, at most one per backend, so its session state
    /// stays with it: in session mode with per-statement routing, and in transaction mode those
    /// that hold state which cannot move (`Attached::keeps`).
    parked: Vec<Attached>,
    /// A `BEGIN` the proxy answered and will send ahead of the transaction's first statement
    /// (empty: none). See `transaction_block`.
    deferred: BytesMut,
    deferred_read_only: bool,
    /// The deferred transaction failed before reaching a server: it waits for ROLLBACK.
    deferred_failed: bool,
    /// What the attached server still owes (kept here so its queue is reused, not reallocated,
    /// on every checkout).
    responses: Responses,
    params: ClientParams,
    statements: Statements,
    /// Transaction mode: `DEALLOCATE`s sent through the extended protocol.
    extended_deallocate: ExtendedDeallocate,
    cancel: Arc<CancelSlot>,
    pid: i32,
    peer: Option<std::net::SocketAddr>,
    shutdown: Shutdown,
    /// The shutdown phase this session has acted on.
    seen_phase: Phase,
    /// The waker last registered in the client's slot for shutdown phase changes.
    phase_waker: Option<std::task::Waker>,
    draining: bool,
    /// The proxy answered an extended-protocol message with an error: drop messages to Sync.
    skip_until_sync: bool,
    max_message: usize,
    /// The client's named Parses and Closes whose outcome is not known yet.
    pending_names: PendingNames,
    /// The session's routing hint (`SET switchyard.route`, or the startup option).
    route_hint: std::cell::Cell<Hint>,
    /// The client buffer holds more bytes after the message being handled.
    more_buffered: bool,
    /// The client broke the protocol (the FATAL message to send): none of its later bytes
    /// are read, and the session ends once the server has answered what came before, as
    /// PostgreSQL answers a stream in order up to the bad message.
    violation: Option<String>,
    /// The type of the message that broke the protocol, when it was one of unknown type.
    violation_tag: u8,
    /// The simple Queries the proxy answered itself, without a server. PostgreSQL drops the unnamed statement
    /// at each Query it runs: a server does so for the Queries it gets, and this count stands
    /// for the others (see `unnamed_key`).
    queries: u32,
    /// The client's unhandled messages wait for the server's answers (see the holds in
    /// `handle_client_messages`): its socket is not read meanwhile, so they cannot pile up.
    held: bool,
    /// A held message had the server asked for a Flush (see `handle_client_messages`).
    flush_asked: bool,
    /// Transaction mode: the session state that statements sent to the attached server
    /// left, as far as their SQL tells (see `state_probe`).
    found: Found,
    /// `idle_transaction_timeout_ms`, `client_idle_timeout_ms`, `query_timeout_ms` and
    /// `transaction_timeout_ms` (see `time_limits`): whether any is set, and the timer.
    time_limits: bool,
    limit_timer: time_limits::LimitTimer,
    /// How long the attached server works for the client (see `timing`).
    timing: timing::Timing,
    /// Bytes from and to the client not yet in the pool's counters (see `traffic`).
    traffic: traffic::Traffic,
}

/// Why a message got no server.
enum NoServer {
    /// An error for the client (SQLSTATE, message); the session goes on.
    Refused(&'static str, String),
    /// The client left while it waited in the checkout queue (see [`queued`]).
    ClientLeft,
}

impl From<(&'static str, String)> for NoServer {
    fn from((code, message): (&'static str, String)) -> Self {
        NoServer::Refused(code, message)
    }
}

/// How a session ends after the admin console's `KILL`: PostgreSQL's words for
/// `pg_terminate_backend`, and its SQLSTATE.
fn killed() -> End {
    End::Fatal(
        sqlstate::ADMIN_SHUTDOWN,
        "terminating connection due to administrator command (KILL on the switchyard admin console)"
            .into(),
    )
}

/// What woke the session up.
enum Event {
    ClientData(std::io::Result<usize>),
    ClientReadable,
    ServerData(std::io::Result<usize>),
    Phase(Phase),
    /// A time limit passed: the client stayed idle, or the server did not answer.
    Limit(time_limits::Limit),
}

impl<'p> Session<'p> {
    pub(crate) fn new(
        proxy: &'p Proxy,
        client: Stream,
        peer: Option<std::net::SocketAddr>,
        leftover: BytesMut,
        login: Login,
        registration: &Registration<'_>,
    ) -> Self {
        let shutdown = proxy.shutdown.clone();
        let rules = login.pool.rules();
        let per_transaction =
            rules.mode.per_transaction() || login.pool.backends.per_statement_in_session();
        let route_hint = std::cell::Cell::new(hints::startup_hint(&login.params.startup));
        Session {
            proxy,
            pool: login.pool,
            client,
            cbuf: if leftover.is_empty() {
                BytesMut::new()
            } else {
                leftover
            },
            to_client: BytesMut::new(),
            to_server: BytesMut::new(),
            server: None,
            per_transaction,
            mode: rules.mode,
            track_session_state: rules.track_session_state,
            parked: Vec::new(),
            deferred: BytesMut::new(),
            deferred_read_only: false,
            deferred_failed: false,
            responses: Responses::default(),
            params: login.params,
            statements: Statements::default(),
            extended_deallocate: ExtendedDeallocate::default(),
            peer,
            cancel: registration.slot.clone(),
            pid: registration.pid,
            draining: shutdown.phase() >= Phase::Draining,
            seen_phase: shutdown.phase(),
            phase_waker: None,
            shutdown,
            skip_until_sync: false,
            max_message: proxy.general().max_message_size,
            pending_names: PendingNames::default(),
            route_hint,
            more_buffered: false,
            violation: None,
            violation_tag: 0,
            held: false,
            flush_asked: false,
            queries: 0,
            found: Found::default(),
            time_limits: Self::time_limits_configured(&proxy.general()),
            limit_timer: time_limits::LimitTimer::default(),
            timing: timing::Timing::default(),
            traffic: traffic::Traffic::default(),
        }
    }

    /// Transaction mode, or statement mode (transaction mode that refuses transaction blocks).
    fn transaction_mode(&self) -> bool {
        self.mode.per_transaction()
    }

    /// `max_prepared_statements`: the cap per server connection.
    fn max_prepared(&self) -> usize {
        self.proxy.config.general.max_prepared_statements
    }

    fn statement_mode(&self) -> bool {
        self.mode == PoolMode::Statement
    }

    /// The transaction status to report while no server is attached.
    fn idle_status(&self) -> u8 {
        match (self.deferred.is_empty(), self.deferred_failed) {
            (true, _) => b'I',
            (false, false) => b'T',
            (false, true) => b'E',
        }
    }

    /// Runs the session to its end and cleans up its server connection.
    ///
    /// Takes `&mut self`, not `self`: a future that owns its `self` holds it twice (the
    /// argument and the binding), and every connected client's task carries that future.
    pub(crate) async fn run(&mut self) {
        let end = self.forward_loop().await;
        // The end of a session is cold: boxed so that its state (timers, a cleanup query) is not
        // part of the future every connected client keeps in memory.
        Box::pin(self.finish(end)).await;
        let t = self.traffic.take();
        self.pool.stats.add(&crate::pool::Batch {
            received: t.received,
            sent: t.sent,
            ..Default::default()
        });
    }

    async fn finish(&mut self, end: End) {
        if let End::Fatal(code, message) = &end {
            tracing::debug!(pid = self.pid, code, %message, "closing client");
            // What the proxy answered before (complete messages only) goes first.
            backend::error(&mut self.to_client, Severity::Fatal, code, message);
            self.traffic.sent(self.to_client.len());
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                self.client.write_all(&self.to_client),
            )
            .await;
        }
        if matches!(end, End::Fatal(..) | End::Told) {
            super::linger_close(&mut self.client).await;
        }
        self.pool.backends.session_closed(self.pid);
        self.detach_at_end().await;
    }

    /// Applies the outcomes of the client's named Parses and Closes: a name whose Parse the
    /// server refused or skipped does not exist, and a statement whose Close it skipped still
    /// does, as in PostgreSQL.
    fn settle_names(&mut self) {
        while let Some(done) = self.responses.name_outcomes.pop_front() {
            self.pending_names.settle(done, &mut self.statements);
        }
    }

    /// The server connection is gone with Parses in flight: their names do not exist.
    fn fail_pending_names(&mut self) {
        self.settle_names();
        self.pending_names.fail_all(&mut self.statements);
    }

    async fn forward_loop(&mut self) -> End {
        loop {
            if !self.responses.name_outcomes.is_empty() {
                self.settle_names();
            }
            if let Err(end) = self.handle_client_messages().await {
                return end;
            }
            if let Err(end) = self.flush().await {
                return end;
            }
            if self.violation.is_some()
                && self
                    .server
                    .as_ref()
                    .is_none_or(|_| self.responses.settled())
            {
                if self.violation_tag != 0 && self.server.is_some() && self.responses.copying_in() {
                    // A server in COPY FROM STDIN answers a message of an unknown type itself,
                    // as PostgreSQL does (ERROR, then FATAL 08P01, which `relay` acts on).
                    let tag = std::mem::take(&mut self.violation_tag);
                    self.to_server.extend_from_slice(&[tag, 0, 0, 0, 4]);
                    self.responses.client_ended_copy();
                    continue;
                }
                let message = self.violation.take().unwrap_or_default();
                return End::Fatal(sqlstate::PROTOCOL_VIOLATION, message);
            }
            if self.found.probe_due() && self.server.is_some() && self.responses.releasable() {
                if let Err(end) = Box::pin(self.probe_session()).await {
                    return end;
                }
            }
            self.release_if_idle();
            if self.draining
                && self.deferred.is_empty()
                && self
                    .server
                    .as_ref()
                    .is_none_or(|_| self.responses.quiet() && self.responses.tx_status == b'I')
            {
                return End::Fatal(
                    sqlstate::ADMIN_SHUTDOWN,
                    "terminating connection because switchyard is shutting down".into(),
                );
            }
            let event = if self.time_limits {
                // Only with a time limit configured: boxed, so that the session future (and
                // the default path) stays as it is without one.
                Box::pin(self.wait_limited()).await
            } else {
                // No time limit: a branch that never fires, which the compiler removes.
                self.wait(std::future::pending()).await
            };
            let step = match event {
                Event::ClientData(Ok(0)) | Event::ClientData(Err(_)) => Err(End::ClientGone),
                Event::ClientData(Ok(n)) => {
                    self.traffic.received(n);
                    Ok(())
                }
                Event::ClientReadable => {
                    // Readiness can be stale (left over from login): read into the stack first
                    // and allocate the session's buffer only once bytes really arrive.
                    let mut first = [0u8; 2048];
                    match self.client.try_read(&mut first) {
                        Ok(0) => Err(End::ClientGone),
                        Ok(n) => {
                            self.traffic.received(n);
                            self.cbuf.reserve(8192);
                            self.cbuf.extend_from_slice(&first[..n]);
                            Ok(())
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
                        Err(_) => Err(End::ClientGone),
                    }
                }
                Event::ServerData(Ok(n)) if n > 0 => self.relay().await,
                Event::ServerData(r) => {
                    let why = match r {
                        Err(e) => e.to_string(),
                        Ok(_) => "server closed the connection".into(),
                    };
                    self.server_lost(&why, false)
                }
                Event::Phase(Phase::Closing) if self.cancel.is_killed() => Err(killed()),
                Event::Phase(Phase::Closing) => Err(End::Fatal(
                    sqlstate::ADMIN_SHUTDOWN,
                    "terminating connection because switchyard is shutting down".into(),
                )),
                Event::Limit(limit) => self.limit_passed(limit),
                Event::Phase(p) => {
                    self.seen_phase = p;
                    self.phase_waker = None;
                    self.draining = p >= Phase::Draining;
                    Ok(())
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Waits for client bytes, server bytes, a shutdown phase change or `limit` (see
    /// `time_limits`). Generic, so that the default path, without a limit, is compiled on its
    /// own.
    async fn wait<L: std::future::Future<Output = time_limits::Limit>>(
        &mut self,
        limit: L,
    ) -> Event {
        let client = &mut self.client;
        let cbuf = &mut self.cbuf;
        // Shutdown: one atomic load per poll; the session's waker sits in its registry slot,
        // which shutdown wakes. No lock, no allocation.
        let (shutdown, slot, seen) = (&self.shutdown, &self.cancel, self.seen_phase);
        let registered = &mut self.phase_waker;
        let phase_change = std::future::poll_fn(|cx| {
            let p = shutdown.phase();
            if p != seen {
                return std::task::Poll::Ready(p);
            }
            // The console's KILL acts as a shutdown of this session alone.
            if slot.is_killed() {
                return std::task::Poll::Ready(Phase::Closing);
            }
            // The slot keeps the waker until shutdown wakes it, which only follows a phase
            // change: register again only when the waker differs from the one left there.
            if !registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                slot.wake.register(cx.waker());
                *registered = Some(cx.waker().clone());
            }
            match shutdown.phase() {
                p if p != seen => std::task::Poll::Ready(p),
                _ => std::task::Poll::Pending,
            }
        });
        let held = self.held;
        match self.server.as_mut() {
            Some(att) => {
                let conn = &mut *att.conn;
                if conn.rbuf.capacity() - conn.rbuf.len() < 4096 {
                    conn.rbuf.reserve(16384);
                }
                if held {
                    // The client's messages wait for the server: its socket is not read.
                    return tokio::select! {
                        biased;
                        r = conn.stream.read_buf(&mut conn.rbuf) => Event::ServerData(r),
                        p = phase_change => Event::Phase(p),
                        l = limit => Event::Limit(l),
                    };
                }
                if cbuf.capacity() - cbuf.len() < 1024 {
                    cbuf.reserve(8192);
                }
                tokio::select! {
                    biased;
                    r = conn.stream.read_buf(&mut conn.rbuf) => Event::ServerData(r),
                    r = client.read_buf(cbuf) => Event::ClientData(r),
                    p = phase_change => Event::Phase(p),
                    l = limit => Event::Limit(l),
                }
            }
            // A client that has not sent a query yet waits without a read buffer, so idle
            // clients cost little memory. After that the buffer is kept and read with
            // `read_buf`, which (unlike `try_read_buf`) lets tokio skip the EAGAIN read.
            None if cbuf.capacity() == 0 => tokio::select! {
                biased;
                r = client.readable() => match r {
                    Ok(()) => Event::ClientReadable,
                    Err(e) => Event::ClientData(Err(e)),
                },
                p = phase_change => Event::Phase(p),
                l = limit => Event::Limit(l),
            },
            None => {
                if cbuf.capacity() - cbuf.len() < 1024 {
                    cbuf.reserve(8192);
                }
                tokio::select! {
                    biased;
                    r = client.read_buf(cbuf) => Event::ClientData(r),
                    p = phase_change => Event::Phase(p),
                    l = limit => Event::Limit(l),
                }
            }
        }
    }
}

/// Buffers keep their memory between transactions (no allocation per query), except after a
/// message far larger than usual: then the memory goes back, so one 100 MiB COPY row does not
/// stay with the session for its lifetime.
fn release_if_large(buf: &mut BytesMut) {
    const KEEP: usize = 256 * 1024;
    if buf.is_empty() && buf.capacity() > KEEP {
        *buf = BytesMut::new();
    }
}

/// Writes all of `buf`. The socket almost always takes it at once: one `try_write` on tokio's
/// cached readiness, without the future and budget machinery of `write_all`, which only runs
/// when the socket is full.
async fn write_all(stream: &mut Stream, buf: &[u8]) -> std::io::Result<()> {
    match stream.try_write(buf) {
        Ok(n) if n == buf.len() => Ok(()),
        Ok(n) => stream.write_all(&buf[n..]).await,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => stream.write_all(buf).await,
        Err(e) => Err(e),
    }
}
