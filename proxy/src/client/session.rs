//! A logged-in client's session: reads its messages, attaches a pooled server connection when a
//! transaction (transaction mode) or the session (session mode) needs one, forwards both ways,
//! and gives the server back as soon as it is idle.
//!
//! Per transaction the fast path is: one read from the client, one write to the server, one read
//! from the server, one write to the client, plus one pool checkout and checkin (a semaphore
//! permit and an uncontended mutex each). Server bytes are forwarded from the read buffer as they
//! arrive, without copying, unless the proxy has to insert or remove a message.

use super::handshake::Login;
use super::pending_names::PendingNames;
use super::queued;
use super::responses::{self, Owed, Responses, Verdict};
use super::statements::{self, Deallocate, Statements};
use super::transaction_block::{deferrable_begin, lone_end, may_begin};
use super::ClientParams;
use crate::cancel::{CancelSlot, Registration};
use crate::config::PoolMode;
use crate::pool::{CheckoutError, Pooled, UserPool};
use crate::protocol::backend::{self, Severity};
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
    conn: Pooled,
    /// Its index in the pool's server list.
    index: usize,
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
    /// Session mode with per-statement routing: the idle servers this session keeps, at most
    /// one per backend, so its session state stays with it.
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
    /// `max_prepared_statements`: the cap per server connection.
    max_prepared: usize,
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
    /// The simple Queries the proxy answered itself. PostgreSQL drops the unnamed statement
    /// at each Query it runs: a server does so for the Queries it gets, and this count stands
    /// for the others (see `unnamed_key`).
    queries: u32,
    /// The client's unhandled messages wait for the server's answers (see the holds in
    /// `handle_client_messages`): its socket is not read meanwhile, so they cannot pile up.
    held: bool,
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

/// What woke the session up.
enum Event {
    ClientData(std::io::Result<usize>),
    ClientReadable,
    ServerData(std::io::Result<usize>),
    Phase(Phase),
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
        let per_transaction = login.pool.mode == PoolMode::Transaction
            || login.pool.router.per_statement_in_session();
        let route_hint = std::cell::Cell::new(hints::startup_hint(&login.params.extras));
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
            parked: Vec::new(),
            deferred: BytesMut::new(),
            deferred_read_only: false,
            deferred_failed: false,
            responses: Responses::default(),
            params: login.params,
            statements: Statements::default(),
            peer,
            cancel: registration.slot.clone(),
            pid: registration.pid,
            draining: shutdown.phase() >= Phase::Draining,
            seen_phase: shutdown.phase(),
            phase_waker: None,
            shutdown,
            skip_until_sync: false,
            max_message: proxy.config.general.max_message_size,
            max_prepared: proxy.config.general.max_prepared_statements,
            pending_names: PendingNames::default(),
            route_hint,
            more_buffered: false,
            violation: None,
            violation_tag: 0,
            held: false,
            queries: 0,
        }
    }

    fn transaction_mode(&self) -> bool {
        self.pool.mode == PoolMode::Transaction
    }

    /// The transaction status to report while no server is attached.
    fn idle_status(&self) -> u8 {
        match (self.deferred.is_empty(), self.deferred_failed) {
            (true, _) => b'I',
            (false, false) => b'T',
            (false, true) => b'E',
        }
    }

    /// Answers a `BEGIN` (deferring it) or the `COMMIT`/`ROLLBACK` of a deferred transaction
    /// without a server. Returns whether `msg` (a `Query`) was answered.
    fn answer_transaction_control(&mut self, msg: &[u8]) -> bool {
        // Every Query that needs a server passes here: most are ruled out by their first byte,
        // before the text is validated as UTF-8 and lexed.
        if self.deferred.is_empty() && !may_begin(msg) {
            return false;
        }
        let Some(sql) = crate::router::classify::sql_of(msg) else {
            return false;
        };
        if self.deferred.is_empty() {
            let Some(begin) = deferrable_begin(sql) else {
                return false;
            };
            self.deferred.extend_from_slice(msg);
            self.deferred_read_only = begin.read_only;
            self.deferred_failed = false;
            backend::command_complete(&mut self.to_client, begin.tag);
            backend::ready_for_query(&mut self.to_client, b'T');
            return true;
        }
        let Some(end) = lone_end(sql) else {
            return false;
        };
        // PostgreSQL answers COMMIT of a failed transaction with ROLLBACK.
        let tag = if self.deferred_failed {
            "ROLLBACK"
        } else {
            end.tag()
        };
        self.deferred.clear();
        self.deferred_failed = false;
        backend::command_complete(&mut self.to_client, tag);
        backend::ready_for_query(&mut self.to_client, b'I');
        true
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
    }

    async fn finish(&mut self, end: End) {
        if let End::Fatal(code, message) = &end {
            tracing::debug!(pid = self.pid, code, %message, "closing client");
            // What the proxy answered before (complete messages only) goes first.
            backend::error(&mut self.to_client, Severity::Fatal, code, message);
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                self.client.write_all(&self.to_client),
            )
            .await;
        }
        if matches!(end, End::Fatal(..) | End::Told) {
            super::linger_close(&mut self.client).await;
        }
        self.pool.router.session_closed(self.pid);
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
            let event = self.wait().await;
            let step = match event {
                Event::ClientData(Ok(0)) | Event::ClientData(Err(_)) => Err(End::ClientGone),
                Event::ClientData(Ok(_)) => Ok(()),
                Event::ClientReadable => {
                    // Readiness can be stale (left over from login): read into the stack first
                    // and allocate the session's buffer only once bytes really arrive.
                    let mut first = [0u8; 2048];
                    match self.client.try_read(&mut first) {
                        Ok(0) => Err(End::ClientGone),
                        Ok(n) => {
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
                Event::Phase(Phase::Closing) => Err(End::Fatal(
                    sqlstate::ADMIN_SHUTDOWN,
                    "terminating connection because switchyard is shutting down".into(),
                )),
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

    /// Waits for client bytes, server bytes or a shutdown phase change.
    async fn wait(&mut self) -> Event {
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
            },
            None => {
                if cbuf.capacity() - cbuf.len() < 1024 {
                    cbuf.reserve(8192);
                }
                tokio::select! {
                    biased;
                    r = client.read_buf(cbuf) => Event::ClientData(r),
                    p = phase_change => Event::Phase(p),
                }
            }
        }
    }

    /// Handles every complete message in the client buffer.
    async fn handle_client_messages(&mut self) -> Result<(), End> {
        let mut cbuf = std::mem::take(&mut self.cbuf);
        self.held = false;
        let result = loop {
            if self.violation.is_some() {
                self.held = true;
                break Ok(());
            }
            let f = match frame::complete(&cbuf, self.max_message) {
                Ok(Some(f)) => f,
                Ok(None) => break Ok(()),
                Err(e) => {
                    self.violated(e.to_string());
                    self.held = true;
                    break Ok(());
                }
            };
            if self
                .server
                .as_ref()
                .is_some_and(|a| a.conn.to_be_replaced())
                && self.transaction_mode()
                && self.holds_for_stale_statement()
            {
                self.held = true;
                break Ok(());
            }
            if self.waits_for_answers(f.tag, &cbuf[..f.total]) {
                self.held = true;
                break Ok(());
            }
            self.more_buffered = cbuf.len() > f.total;
            if let Err(end) = self.on_client_message(f.tag, &cbuf[..f.total]).await {
                break Err(end);
            }
            cbuf.advance(f.total);
        };
        if cbuf.is_empty() {
            cbuf.clear();
            release_if_large(&mut cbuf);
        }
        self.cbuf = cbuf;
        result
    }

    /// The client broke the protocol: see `violation`. A server with answers still to give
    /// for a batch the client did not end with Sync gets a Flush, so they come.
    fn violated(&mut self, message: String) {
        tracing::debug!(pid = self.pid, %message, "client protocol violation");
        if self.server.is_some() && !self.responses.quiet() {
            self.to_server.extend_from_slice(&[b'H', 0, 0, 0, 4]);
        }
        self.violation = Some(message);
    }

    /// Transaction mode; the attached server has a stale statement (see
    /// [`is_stale_statement`]) and is to be replaced. A client that prepares the statement
    /// again right after the error, before the server's ReadyForQuery, must not be given the
    /// stale one on this connection: its next messages wait (true) until the server has
    /// answered what it was sent; then the server is released, if the transaction is over,
    /// and they go to a fresh connection. Messages are not held while no ReadyForQuery is due
    /// (the server waits for the client's Sync).
    fn holds_for_stale_statement(&mut self) -> bool {
        if self.responses.ready_coming() {
            return true;
        }
        self.release_if_idle();
        false
    }

    /// Transaction mode: whether a message the proxy may answer itself must first wait
    /// (true) for the answers the server is sending, because PostgreSQL's answer to it
    /// depends on them:
    /// - a named Parse of a name whose earlier Parse or Close, followed by a Sync, is
    ///   unanswered: an error earlier in that batch makes the server skip it, and then the
    ///   name is free, or still taken (a duplicate within one batch is still refused at once,
    ///   as there);
    /// - a Bind or Describe of a statement whose Close, followed by a Sync, is unanswered: if
    ///   the server skipped that Close, the statement is still there;
    /// - a simple-query `DEALLOCATE`: PostgreSQL refuses it in a failed transaction, and a
    ///   skipped Parse leaves nothing to deallocate.
    fn waits_for_answers(&self, tag: u8, msg: &[u8]) -> bool {
        match tag {
            b'P' if !self.pending_names.is_empty() => {
                self.responses.ready_coming()
                    && frame::cstr(&msg[5..]).is_some_and(|(name, _)| {
                        !name.is_empty() && self.pending_names.contains(name)
                    })
            }
            b'B' | b'D' if !self.pending_names.is_empty() => {
                let body = &msg[5..];
                let statement = match tag {
                    b'B' => frame::cstr(body).and_then(|(_, rest)| frame::cstr(rest)),
                    _ => body.strip_prefix(b"S").and_then(frame::cstr),
                };
                self.responses.ready_coming()
                    && statement.is_some_and(|(name, _)| self.pending_names.closing(name))
            }
            b'Q' if self.per_transaction && self.server.is_some() => {
                statements::deallocate_target(msg).is_some() && self.responses.ready_coming()
            }
            _ => false,
        }
    }

    /// Answers a simple-query `DEALLOCATE` of the client's own statement names (see
    /// [`forget_deallocated`]): at once when no server is attached, else in turn after what the
    /// attached server still owes. False for any other query, and where PostgreSQL would not
    /// run it (a failed transaction, or a server skipping to the next Sync).
    fn answer_deallocate(&mut self, msg: &[u8]) -> bool {
        let answerable = match self.server {
            None => !self.deferred_failed,
            Some(_) => !self.responses.skipping() && self.responses.tx_status != b'E',
        };
        if !answerable {
            return false;
        }
        let Some(all) = forget_deallocated(&mut self.statements, msg) else {
            return false;
        };
        if self.server.is_none() {
            let status = self.idle_status();
            statements::write_deallocate_answer(&mut self.to_client, all, status);
        } else {
            self.responses.push(Owed::Deallocated { all });
            self.responses.emit_synthetic(&mut self.to_client);
        }
        true
    }

    async fn on_client_message(&mut self, tag: u8, msg: &[u8]) -> Result<(), End> {
        if tag == b'X' {
            return Err(End::Terminate);
        }
        if !matches!(
            tag,
            b'Q' | b'P' | b'B' | b'D' | b'E' | b'C' | b'S' | b'H' | b'F' | b'd' | b'c' | b'f'
        ) {
            self.violated(format!("invalid frontend message type {tag}"));
            self.violation_tag = tag;
            return Ok(());
        }
        if self.skip_until_sync {
            if tag != b'S' {
                return Ok(());
            }
            self.skip_until_sync = false;
            if self.server.is_none() {
                let status = self.idle_status();
                backend::ready_for_query(&mut self.to_client, status);
                return Ok(());
            }
            // The error came from the proxy while a server was attached: the server still
            // gets the Sync, and its ReadyForQuery ends the client's batch.
        }
        if tag == b'Q' && self.per_transaction && self.answer_deallocate(msg) {
            self.queries = self.queries.wrapping_add(1);
            return Ok(());
        }
        if self.server.is_none() {
            match tag {
                // Nothing is in flight: answer without a server.
                b'S' => {
                    let status = self.idle_status();
                    backend::ready_for_query(&mut self.to_client, status);
                    return Ok(());
                }
                // Flush with nothing to flush; copy messages after a COPY the server ended.
                b'H' | b'd' | b'c' | b'f' => return Ok(()),
                b'C' if self.per_transaction => {
                    if let Some(name) = named_statement(msg) {
                        self.statements.remove(name);
                        backend::empty(&mut self.to_client, b'3');
                        return Ok(());
                    }
                }
                b'Q' if self.per_transaction && self.answer_transaction_control(msg) => {
                    self.queries = self.queries.wrapping_add(1);
                    return Ok(());
                }
                _ => {}
            }
            let failed = if self.deferred_failed {
                Err(NoServer::Refused(
                    sqlstate::IN_FAILED_TRANSACTION,
                    "current transaction is aborted, commands ignored until end of transaction block"
                        .to_string(),
                ))
            } else {
                self.attach(msg).await
            };
            if let Err(no_server) = failed {
                let (code, message) = match no_server {
                    NoServer::Refused(code, message) => (code, message),
                    NoServer::ClientLeft => {
                        tracing::debug!(pid = self.pid, "client left while queued for a server");
                        return Err(End::ClientGone);
                    }
                };
                backend::error(&mut self.to_client, Severity::Error, code, &message);
                // Inside a deferred transaction the error fails it, as on a server.
                self.deferred_failed = !self.deferred.is_empty();
                if matches!(tag, b'Q' | b'F') {
                    let status = self.idle_status();
                    backend::ready_for_query(&mut self.to_client, status);
                } else {
                    self.skip_until_sync = true;
                }
                return Ok(());
            }
            if !self.deferred.is_empty() {
                // The deferred BEGIN goes first, in the same write; the client had its answer.
                self.to_server.extend_from_slice(&self.deferred);
                self.deferred.clear();
                self.responses.sent();
                self.responses.push(Owed::HiddenQuery);
            }
        }
        self.forward(tag, msg)
    }

    /// The SQL a routing policy sees for a message: its own text for `Query` and `Parse`; for
    /// a `Bind` or a statement `Describe`, the text of the prepared statement it names.
    fn sql_of<'m>(&'m self, msg: &'m [u8]) -> Option<&'m str> {
        let body = msg.get(5..)?;
        let statement = match msg.first()? {
            b'Q' | b'P' => return crate::router::classify::sql_of(msg),
            b'B' => frame::cstr(frame::cstr(body)?.1)?.0,
            b'D' if body.first() == Some(&b'S') => frame::cstr(&body[1..])?.0,
            _ => return None,
        };
        let (_, parse_rest) = self.statements.get(statement)?;
        std::str::from_utf8(frame::cstr(parse_rest)?.0).ok()
    }

    /// Routes and checks out a server connection, and gives it this client's parameters.
    async fn attach(&mut self, msg: &[u8]) -> Result<(), NoServer> {
        let pool = self.pool.clone();
        // A server that refuses a connection is marked unhealthy, which takes it out of the
        // policies' candidates: route again, until a route repeats a server that failed.
        let mut failed = 0u64;
        let mut last_error: Option<(&str, String)> = None;
        let (sql, application_name) = if pool.router.reads_requests() {
            let app = self.params.tracked.get(TrackedParams::APPLICATION_NAME);
            (self.sql_of(msg), app)
        } else {
            (None, "")
        };
        let (index, mut conn) = loop {
            let route = pool.router.route(&RouteRequest {
                message: msg,
                sql,
                session_id: self.pid,
                database: &pool.database,
                user: &pool.user,
                application_name,
                client_addr: self.peer,
                options: &self.params.extras,
                in_transaction: !self.deferred.is_empty(),
                read_only_transaction: !self.deferred.is_empty() && self.deferred_read_only,
                session_hint: &self.route_hint,
            });
            let index = pool.resolve(route)?;
            let bit = 1u64.checked_shl(index as u32).unwrap_or(0);
            if failed & bit != 0 {
                return Err(last_error.expect("set with the bit").into());
            }
            if let Some(i) = self.parked.iter().position(|p| p.index == index) {
                break (index, self.parked.swap_remove(i).conn);
            }
            let checkout = pool.servers[index].checkout();
            let Some(checked_out) =
                queued::unless_client_leaves(&self.client, !self.more_buffered, checkout).await
            else {
                return Err(NoServer::ClientLeft);
            };
            match checked_out {
                Ok(conn) => break (index, conn),
                Err(e @ CheckoutError::Connect(_)) if bit != 0 => {
                    failed |= bit;
                    last_error = Some(checkout_error(&pool, e));
                }
                Err(e) => return Err(checkout_error(&pool, e).into()),
            }
        };
        let server = &pool.servers[index];
        self.cancel.set(&conn.key);
        if let Some(sql) = self.params.sync_sql(&conn) {
            let timeout = Duration::from_millis(self.proxy.config.general.connect_timeout_ms);
            let tracked = &mut self.params.tracked;
            // Rare (parameters differ): boxed to keep the session future small.
            let outcome = Box::pin(maintenance::run(
                &mut conn,
                &[&sql],
                timeout,
                |name, value| {
                    tracked.set(name, value);
                },
            ))
            .await;
            match outcome {
                Ok(o) if o.error.is_none() && o.tx_status == b'I' => {
                    conn.applied_extras = self.params.extras.clone();
                }
                Ok(o) => {
                    self.cancel.clear();
                    let detail = o.error.as_deref().map(error_message).unwrap_or_default();
                    if o.tx_status == b'I' {
                        server.checkin(conn);
                    }
                    return Err(NoServer::Refused(
                        sqlstate::PROTOCOL_VIOLATION,
                        format!("cannot apply the session's startup parameters: {detail}"),
                    ));
                }
                Err(e) => {
                    self.cancel.clear();
                    return Err(NoServer::Refused(
                        sqlstate::CONNECTION_FAILURE,
                        format!("server connection failed while applying session parameters: {e}"),
                    ));
                }
            }
        }
        self.responses.reset();
        // Statements this attachment uses are in flight from here on: never evicted under it.
        conn.prepared.start_batch();
        self.server = Some(Attached { conn, index });
        Ok(())
    }

    /// Appends one client message for the attached server, translating statement names in
    /// transaction mode, and records what the server will owe for it.
    fn forward(&mut self, tag: u8, msg: &[u8]) -> Result<(), End> {
        let map_names = self.per_transaction;
        let att = self.server.as_mut().expect("attached before forwarding");
        let out = &mut self.to_server;
        let r = &mut self.responses;
        let skipping = r.skipping();
        r.sent();
        let body = &msg[5..];
        match tag {
            b'Q' | b'F' => {
                out.extend_from_slice(msg);
                r.push(Owed::Query);
            }
            b'S' => {
                out.extend_from_slice(msg);
                r.push(Owed::Sync);
            }
            b'H' | b'd' => out.extend_from_slice(msg),
            b'c' | b'f' => {
                out.extend_from_slice(msg);
                r.client_ended_copy();
            }
            b'E' => {
                out.extend_from_slice(msg);
                r.push(Owed::Execute);
            }
            b'P' => {
                let Some((name, rest)) = frame::cstr(body) else {
                    // Unreadable names: the server refuses it as PostgreSQL does.
                    out.extend_from_slice(msg);
                    r.push(Owed::Parse { named: None });
                    return Ok(());
                };
                if name.is_empty() || !map_names || skipping {
                    if name.is_empty() && !skipping {
                        att.conn.unnamed_owner = unnamed_key(self.pid, self.queries);
                    }
                    out.extend_from_slice(msg);
                    r.push(Owed::Parse { named: None });
                } else if let Some((old, old_rest)) = self.statements.get(name) {
                    // As PostgreSQL: a statement name must be closed before it is reused.
                    // (A name whose Parse is still in flight counts as used.) The server gets
                    // the new text under the old statement's server name, which exists there:
                    // it checks the text as PostgreSQL would (syntax, a failed transaction,
                    // analysis), and then finds the name taken (42P05, reworded for the
                    // client's name).
                    if prepare_here(&mut att.conn, out, r, self.max_prepared, old) {
                        statements::write_parse(out, old, old_rest);
                        r.push(Owed::InjectedParse(old));
                    }
                    statements::write_parse(out, old, rest);
                    let message = format!(
                        "prepared statement \"{}\" already exists",
                        String::from_utf8_lossy(name)
                    );
                    r.push_refusal(sqlstate::DUPLICATE_PREPARED_STATEMENT, &message);
                    self.skip_until_sync = true;
                    return Ok(());
                } else {
                    self.pending_names.parse(name);
                    let h = self.statements.insert(name, rest);
                    if prepare_here(&mut att.conn, out, r, self.max_prepared, h) {
                        statements::write_parse(out, h, rest);
                        r.push(Owed::Parse { named: Some(h) });
                    } else {
                        r.push(Owed::Synthetic(b'1'));
                    }
                }
            }
            b'B' => {
                let Some((portal, (stmt, bind_rest))) =
                    frame::cstr(body).and_then(|(portal, rest)| Some((portal, frame::cstr(rest)?)))
                else {
                    // Unreadable names: the server refuses it as PostgreSQL does.
                    out.extend_from_slice(msg);
                    r.push(Owed::Bind);
                    return Ok(());
                };
                let unnamed = unnamed_key(self.pid, self.queries);
                if stmt.is_empty() && att.conn.unnamed_owner != unnamed && !skipping {
                    self.refuse_unnamed();
                    return Ok(());
                }
                match self
                    .statements
                    .get(stmt)
                    .filter(|_| map_names && !skipping && !stmt.is_empty())
                {
                    Some((h, parse_rest)) => {
                        if prepare_here(&mut att.conn, out, r, self.max_prepared, h) {
                            statements::write_parse(out, h, parse_rest);
                            r.push(Owed::InjectedParse(h));
                        }
                        statements::write_bind(out, portal, h, bind_rest);
                    }
                    None => out.extend_from_slice(msg),
                }
                r.push(Owed::Bind);
            }
            b'D' => {
                let Some((kind, (name, _))) = body
                    .split_first()
                    .and_then(|(&kind, rest)| Some((kind, frame::cstr(rest)?)))
                else {
                    // Unreadable names: the server refuses it as PostgreSQL does.
                    out.extend_from_slice(msg);
                    r.push(Owed::Describe);
                    return Ok(());
                };
                if kind == b'S'
                    && name.is_empty()
                    && att.conn.unnamed_owner != unnamed_key(self.pid, self.queries)
                    && !skipping
                {
                    self.refuse_unnamed();
                    return Ok(());
                }
                let known = (kind == b'S' && map_names && !skipping && !name.is_empty())
                    .then(|| self.statements.get(name))
                    .flatten();
                match known {
                    Some((h, parse_rest)) => {
                        if prepare_here(&mut att.conn, out, r, self.max_prepared, h) {
                            statements::write_parse(out, h, parse_rest);
                            r.push(Owed::InjectedParse(h));
                        }
                        statements::write_describe(out, h);
                    }
                    None => out.extend_from_slice(msg),
                }
                r.push(Owed::Describe);
            }
            b'C' => match named_statement(msg).filter(|_| map_names && !skipping) {
                Some(name) => {
                    // The statement stays prepared on the servers for other clients. The
                    // name is forgotten now (a Bind of it later in the batch fails, as on
                    // PostgreSQL) and put back if the server skips the stand-in Close.
                    let taken = self.statements.take(name);
                    self.pending_names.close(name, taken);
                    out.extend_from_slice(responses::CLOSE_NOTHING);
                    r.push(Owed::ClosedName);
                }
                None => {
                    out.extend_from_slice(msg);
                    r.push(Owed::Close);
                }
            },
            _ => unreachable!("tags are checked before forwarding"),
        }
        r.emit_synthetic(&mut self.to_client);
        Ok(())
    }

    /// A Bind or Describe of the unnamed statement, which this client has not parsed on the
    /// attached server: what is there is another client's (or nothing). The server gets a
    /// stand-in that fails in its place ([`responses::REFUSED`]), so it fails the batch and
    /// any open transaction as PostgreSQL would have, and the client gets PostgreSQL's error
    /// in its place. The client's messages up to its Sync are dropped (the server skips them).
    fn refuse_unnamed(&mut self) {
        self.to_server.extend_from_slice(responses::REFUSED);
        let message = "unnamed prepared statement does not exist";
        let code = sqlstate::INVALID_SQL_STATEMENT_NAME;
        self.responses.push_refusal(code, message);
        self.skip_until_sync = true;
    }

    /// Writes what is pending for the server, then what is pending for the client.
    async fn flush(&mut self) -> Result<(), End> {
        if !self.to_server.is_empty() {
            let written = match self.server.as_mut() {
                Some(att) => write_all(&mut att.conn.stream, &self.to_server).await,
                None => Ok(()),
            };
            self.to_server.clear();
            release_if_large(&mut self.to_server);
            if let Err(e) = written {
                self.server_lost(&e.to_string(), false)?;
            }
        }
        if !self.to_client.is_empty() {
            let r = write_all(&mut self.client, &self.to_client).await;
            self.to_client.clear();
            release_if_large(&mut self.to_client);
            r.map_err(|_| End::ClientGone)?;
        }
        Ok(())
    }

    /// Forwards what the server sent, accounting for every complete message header in it.
    async fn relay(&mut self) -> Result<(), End> {
        let att = self.server.as_mut().expect("relay needs a server");
        let conn = &mut *att.conn;
        let r = &mut self.responses;
        let out = &mut self.to_client;
        let buf = &conn.rbuf[..];
        let mut pos = r.partial.min(buf.len());
        r.partial -= pos;
        // A FATAL error from the server; true when it blames the client's protocol.
        let mut fatal = None;
        let mut stale = false;
        // Bytes from `from` to `pos` are still to be forwarded.
        let mut from = 0;
        while pos < buf.len() {
            let f = match frame::header(&buf[pos..], usize::MAX) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    let why = format!("server sent a malformed message: {e}");
                    return self.server_lost(&why, false);
                }
            };
            let avail = buf.len() - pos;
            let complete = avail >= f.total;
            if !complete && matches!(f.tag, b'Z' | b'S' | b'C' | b'1' | b'E') {
                break; // these are small and read whole
            }
            let body = if complete {
                &buf[pos + 5..pos + f.total]
            } else {
                &[][..]
            };
            if f.tag == b'S' {
                if let Some((name, value)) = parse_parameter_status(body) {
                    conn.reported.set(name, value);
                    conn.tracked.set(name, value);
                    self.params.tracked.set(name, value);
                }
            }
            if f.tag == b'E' {
                if is_fatal(body) {
                    let code = error_field(body, b'C');
                    fatal = Some(code == Some(sqlstate::PROTOCOL_VIOLATION.as_bytes()));
                } else if !stale && is_stale_statement(body) && !conn.to_be_replaced() {
                    tracing::info!(
                        server = %self.pool.servers[att.index].name,
                        "a prepared statement's result type changed (a table it reads was \
                         altered): the server connection is replaced once released, so the \
                         statement is prepared afresh"
                    );
                    stale = true;
                }
            }
            match r.on_server_message(f.tag, body, &mut conn.prepared) {
                Verdict::Forward => {}
                Verdict::Swallow => {
                    out.extend_from_slice(&buf[from..pos]);
                    from = pos + f.total;
                }
                Verdict::Replace => {
                    out.extend_from_slice(&buf[from..pos]);
                    r.take_refusal(out);
                    from = pos + f.total;
                }
            }
            if !complete {
                r.partial = f.total - avail;
                pos = buf.len();
                break;
            }
            pos += f.total;
            if r.synthetic_next() {
                out.extend_from_slice(&buf[from..pos]);
                from = pos;
                r.emit_synthetic(out);
            }
        }
        let written = if out.is_empty() {
            write_all(&mut self.client, &buf[from..pos]).await
        } else {
            out.extend_from_slice(&buf[from..pos]);
            let w = write_all(&mut self.client, out).await;
            out.clear();
            release_if_large(out);
            w
        };
        if stale {
            conn.replace_when_released();
        }
        if std::mem::take(&mut r.discarded) && self.per_transaction {
            // The client's own names go too, as in its own session, except those it parsed
            // after (the pending ones whose outcome has not come).
            let answered = r.name_outcomes.len();
            self.pending_names.discard(answered, &mut self.statements);
        }
        conn.rbuf.advance(pos);
        written.map_err(|_| End::ClientGone)?;
        match fatal {
            // The server ended the session over the client's own protocol error (a message
            // it cannot take during COPY FROM STDIN): the client's stream is out of step with
            // any server, and PostgreSQL closes it. The client has the FATAL: close it too.
            Some(true) => {
                if let Some(att) = self.server.take() {
                    tracing::debug!(
                        pid = self.pid,
                        "the server ended the session over a client protocol error"
                    );
                    self.cancel.clear();
                    drop(att.conn);
                }
                Err(End::Told)
            }
            // The server is ending this connection; the client already has its error.
            Some(false) => self.server_lost("the server terminated the connection", true),
            None => Ok(()),
        }
    }

    /// Gives the server connection back when the transaction is over: to the pool in
    /// transaction mode, to the session's parked servers with per-statement session routing.
    ///
    /// In transaction mode a server that ran a `LISTEN` for this client stays with it until
    /// the session ends: the notifications are the client's, and another client given that
    /// server must not receive them (the session then behaves as in session mode).
    fn release_if_idle(&mut self) {
        if !self.per_transaction
            || !self
                .server
                .as_ref()
                .is_some_and(|_| self.responses.releasable())
            || (self.responses.listened && self.transaction_mode())
        {
            return;
        }
        let att = self.server.take().expect("checked above");
        self.cancel.clear();
        if self.transaction_mode() {
            self.pool.servers[att.index].checkin(att.conn);
        } else {
            self.parked.push(att);
        }
    }

    /// The server connection broke. The client gets an error for each answer it was owed and
    /// the session goes on, unless the client was inside a transaction or the session depends on
    /// that server (session mode): then, as PostgreSQL itself would, the client is closed.
    fn server_lost(&mut self, why: &str, client_told: bool) -> Result<(), End> {
        let Some(att) = self.server.take() else {
            return Ok(());
        };
        self.cancel.clear();
        self.fail_pending_names();
        tracing::warn!(
            server = %self.pool.servers[att.index].name,
            pid = self.pid,
            reason = why,
            "server connection lost"
        );
        let message = format!("server connection lost: {why}");
        let r = &self.responses;
        drop(att.conn);
        // A server holding the client's LISTEN is session state lost: end, as in session mode.
        if self.transaction_mode() && r.tx_status == b'I' && !r.listened {
            let owed = r.ready_owed();
            if owed > 0 {
                if r.partial > 0 {
                    // A message was cut in the middle: the client's stream cannot be repaired.
                    return Err(End::Fatal(sqlstate::CONNECTION_FAILURE, message));
                }
                for i in 0..owed {
                    // The request being answered already got the server's own FATAL error.
                    if i > 0 || !client_told {
                        backend::error(
                            &mut self.to_client,
                            Severity::Error,
                            sqlstate::CONNECTION_FAILURE,
                            &message,
                        );
                    }
                    backend::ready_for_query(&mut self.to_client, b'I');
                }
                return Ok(());
            }
            if r.quiet() {
                return Ok(());
            }
        }
        Err(End::Fatal(sqlstate::CONNECTION_FAILURE, message))
    }

    /// Cleans up the server connection when the session ends: a quiet connection is rolled back
    /// (and reset in session mode) and returned; one with a request in flight is cancelled and
    /// closed, so no transaction is ever left open behind a departed client.
    async fn detach_at_end(&mut self) {
        if let Some(att) = self.server.take() {
            self.clean_up(att).await;
        }
        while let Some(att) = self.parked.pop() {
            // Parked servers are idle, outside a transaction: only the reset is due.
            self.responses.reset();
            self.clean_up(att).await;
        }
    }

    /// Returns one server connection to its pool after the session, or closes it.
    async fn clean_up(&mut self, att: Attached) {
        self.cancel.clear();
        let server = &self.pool.servers[att.index];
        let mut conn = att.conn;
        if !self.responses.quiet() {
            let key = conn.key.clone();
            drop(conn);
            let timeout = Duration::from_millis(self.proxy.config.general.cancel_timeout_ms);
            tokio::spawn(async move {
                let _ = tokio::time::timeout(timeout, crate::cancel::send_cancel(&key)).await;
            });
            return;
        }
        let mut statements: Vec<&str> = Vec::with_capacity(2);
        if self.responses.tx_status != b'I' {
            statements.push("ROLLBACK");
        }
        let reset = self.pool.mode == PoolMode::Session && !self.pool.reset_query.is_empty();
        if reset {
            statements.push(&self.pool.reset_query);
        } else if self.responses.listened && self.transaction_mode() {
            // Transaction mode: the server was this session's for its LISTEN; nothing else of
            // the session is kept there that transaction mode does not already allow.
            statements.push("UNLISTEN *");
        }
        if statements.is_empty() {
            server.checkin(conn);
            return;
        }
        let timeout = Duration::from_millis(self.proxy.config.general.connect_timeout_ms);
        match Box::pin(maintenance::run(&mut conn, &statements, timeout, |_, _| {})).await {
            Ok(o) if o.error.is_none() && o.tx_status == b'I' => {
                if reset {
                    conn.applied_extras = ParamList::new();
                }
                server.checkin(conn);
            }
            Ok(o) => {
                let detail = o.error.as_deref().map(error_message).unwrap_or_default();
                tracing::warn!(server = %server.name, %detail, "reset failed; closing the server connection");
            }
            Err(e) => {
                tracing::warn!(server = %server.name, error = %e, "reset failed; closing the server connection")
            }
        }
    }
}

/// A simple-query `DEALLOCATE` of the client's own statement names (or of all of them) is the
/// proxy's to answer: those names exist only in the session, and the statements stay prepared
/// on the servers for other clients (PDO and psycopg with libpq before 17 deallocate this way;
/// forwarded, the server would answer "does not exist"). Forgets them and returns `Some(all)`;
/// `None` for any other query, including a `DEALLOCATE` of a name the client did not prepare
/// with Parse (a SQL `PREPARE`), which the server answers.
fn forget_deallocated(statements: &mut Statements, msg: &[u8]) -> Option<bool> {
    match statements::deallocate_target(msg)? {
        Deallocate::All => {
            statements.clear();
            Some(true)
        }
        Deallocate::Name(name) => statements.remove(&name).then_some(false),
    }
}

/// Who owns an unnamed statement parsed now (see `ServerConn::unnamed_owner`).
fn unnamed_key(pid: i32, queries: u32) -> u64 {
    (u64::from(pid as u32) << 32) | u64::from(queries)
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

/// Records a use of statement `h` on the server connection. Returns true when it is not
/// prepared there yet (the caller writes its Parse); past `max_prepared` the least recently
/// used statement is closed first.
fn prepare_here(
    conn: &mut ServerConn,
    out: &mut BytesMut,
    r: &mut Responses,
    max_prepared: usize,
    h: u64,
) -> bool {
    if conn.prepared.touch(h) {
        return false;
    }
    // Usually one; more when an earlier batch had to go past the cap.
    while let Some(victim) = conn.prepared.evict_for_one_more(max_prepared) {
        statements::write_close(out, victim);
        r.push(Owed::InjectedClose(victim));
    }
    conn.prepared.add(h);
    true
}

/// The SQLSTATE and message a client gets when no server connection could be had.
fn checkout_error(pool: &UserPool, e: CheckoutError) -> (&'static str, String) {
    match e {
        CheckoutError::Exhausted { .. } => (
            sqlstate::TOO_MANY_CONNECTIONS,
            format!(
                "connection pool for database \"{}\" user \"{}\" is exhausted: {e}",
                pool.database, pool.user
            ),
        ),
        CheckoutError::Connect(c) => {
            let code = if c.sqlstate() == sqlstate::CANNOT_CONNECT {
                sqlstate::CANNOT_CONNECT
            } else {
                sqlstate::CONNECTION_FAILURE
            };
            (code, c.to_string())
        }
    }
}

/// The name in a `Close` of a named statement, if that is what `msg` is.
fn named_statement(msg: &[u8]) -> Option<&[u8]> {
    let body = msg.get(5..)?;
    if body.first() != Some(&b'S') {
        return None;
    }
    let (name, _) = frame::cstr(&body[1..])?;
    (!name.is_empty()).then_some(name)
}

/// Whether an ErrorResponse body has severity FATAL or PANIC (the server closes next).
fn is_fatal(body: &[u8]) -> bool {
    error_field(body, b'V')
        .or_else(|| error_field(body, b'S'))
        .is_some_and(|s| s == b"FATAL" || s == b"PANIC")
}

/// Whether an error says that a prepared statement's result type changed under it: a
/// migration altered a table it reads, and PostgreSQL refuses with "cached plan must not
/// change result type" until the statement is prepared again. On a server connection the
/// proxy's statements are named by their text and shared by all clients, so a client that
/// prepares the same text again would be given the stale one: the connection must go.
fn is_stale_statement(body: &[u8]) -> bool {
    error_field(body, b'C') == Some(b"0A000")
        && error_field(body, b'R') == Some(b"RevalidateCachedQuery")
}

/// One field of an ErrorResponse body.
fn error_field(mut fields: &[u8], want: u8) -> Option<&[u8]> {
    while let Some((&kind, rest)) = fields.split_first() {
        if kind == 0 {
            return None;
        }
        let (value, after) = frame::cstr(rest)?;
        if kind == want {
            return Some(value);
        }
        fields = after;
    }
    None
}

/// The `M` field of a whole ErrorResponse message.
fn error_message(msg: &[u8]) -> String {
    error_field(msg.get(5..).unwrap_or_default(), b'M')
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .unwrap_or_default()
}
