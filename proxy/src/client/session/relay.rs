//! Server to client: the server's answers forwarded as they come, accounted for message by
//! message; the server given back when idle, or lost.

use super::*;

impl Session<'_> {
    /// Forwards what the server sent, accounting for every complete message header in it.
    pub(super) async fn relay(&mut self) -> Result<(), End> {
        let transaction_mode = self.transaction_mode();
        let statement_mode = self.statement_mode();
        let map_names = self.per_transaction;
        let att = self.server.as_mut().expect("relay needs a server");
        let (conn, server) = att.conn.split();
        let r = &mut self.responses;
        let out = &mut self.to_client;
        let buf = &conn.rbuf[..];
        let mut pos = r.partial.min(buf.len());
        r.partial -= pos;
        // A FATAL error from the server; true when it blames the client's protocol.
        let mut fatal = None;
        let mut stale = false;
        // Statement mode: the server reported a transaction block open (see below).
        let mut block_opened = false;
        // Bytes from `from` to `pos` are still to be forwarded.
        let mut from = 0;
        // ReadyForQuery messages forwarded, and those that end a transaction.
        let (mut answered, mut ended) = (0u64, 0u64);
        // Any ReadyForQuery (the proxy's own too), and one with status idle: for `timing`.
        let (mut ready, mut idle) = (false, false);
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
                    // `SET SESSION AUTHORIZATION`: the session is another user's now, which
                    // only that server connection can carry.
                    att.keeps |= transaction_mode
                        && name == "session_authorization"
                        && self.track_session_state;
                }
            }
            let unasked =
                |r: &Responses| transaction_mode && r.quiet() && r.tx_status == b'I' && !r.listened;
            if f.tag == b'E' && unasked(r) && !att.keeps && is_fatal(body) {
                // Nothing was asked of this server, which holds nothing of the client's: its
                // FATAL (a restart, `pg_terminate_backend`) ends the server's session, not the
                // client's. Forwarded, it would reach a client that asked nothing, and a
                // driver such as tokio-postgres closes on an unsolicited error.
                out.extend_from_slice(&buf[from..pos]);
                pos += f.total;
                from = pos;
                fatal = Some(false);
                continue;
            }
            if f.tag == b'E' {
                if is_fatal(body) {
                    let code = backend::error_field(body, b'C');
                    fatal = Some(code == Some(sqlstate::PROTOCOL_VIOLATION.as_bytes()));
                } else if !stale && is_stale_statement(body) && !conn.to_be_replaced() {
                    tracing::info!(
                        server = %server.name,
                        "a prepared statement's result type changed (a table it reads was \
                         altered): the server connection is replaced once released, so the \
                         statement is prepared afresh"
                    );
                    stale = true;
                }
            }
            if statement_mode && f.tag == b'Z' && body.first() != Some(&b'I') {
                // A transaction block the proxy did not see coming (`BEGIN` inside a longer
                // string, or sent with the extended protocol). The client gets what came
                // before this ReadyForQuery, then FATAL; closing the server rolls it back.
                block_opened = true;
                break;
            }
            let verdict = r.on_server_message(f.tag, body, &mut conn.prepared);
            if r.unnamed_owner_update != 0 {
                conn.unnamed_owner = std::mem::take(&mut r.unnamed_owner_update);
            }
            if f.tag == b'Z' {
                let now_idle = body.first() == Some(&b'I');
                ready = true;
                idle |= now_idle;
                if !matches!(verdict, Verdict::Swallow) {
                    // For `SHOW STATS`: a request answered, and maybe a transaction ended.
                    // (The proxy's own queries' ReadyForQuery messages are swallowed, not
                    // counted.)
                    answered += 1;
                    ended += u64::from(now_idle);
                }
            }
            match verdict {
                Verdict::Forward => {
                    // An error that names a statement by the proxy's name for it.
                    if f.tag == b'E' && map_names && complete {
                        if let Some(own) = server_names::reworded(body, &self.statements) {
                            out.extend_from_slice(&buf[from..pos]);
                            out.extend_from_slice(&own);
                            from = pos + f.total;
                        }
                    }
                }
                Verdict::Swallow => {
                    out.extend_from_slice(&buf[from..pos]);
                    from = pos + f.total;
                }
                Verdict::Replace => {
                    out.extend_from_slice(&buf[from..pos]);
                    r.take_refusal(out);
                    from = pos + f.total;
                }
                Verdict::Reword => {
                    out.extend_from_slice(&buf[from..pos]);
                    let own = &buf[pos..pos + f.total];
                    let instead = backend::error_field(body, b'M')
                        .and_then(server_names::named_statement)
                        .and_then(|(_, h)| conn.prepared.refusal_for(h))
                        .unwrap_or(own);
                    out.extend_from_slice(instead);
                    from = pos + f.total;
                }
                Verdict::Complete(command) => {
                    out.extend_from_slice(&buf[from..pos]);
                    backend::command_complete(out, command);
                    from = pos + f.total;
                }
            }
            if !complete {
                r.partial = f.total - avail;
                pos = buf.len();
                break;
            }
            pos += f.total;
        }
        self.traffic.sent(out.len() + (pos - from));
        if ready {
            let took = self.timing.answered(idle, !r.quiet());
            let bytes = self.traffic.take();
            self.pool.stats.add(&crate::pool::Batch {
                requests: answered,
                transactions: ended,
                request_us: took.request_us,
                transaction_us: took.transaction_us,
                received: bytes.received,
                sent: bytes.sent,
            });
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
        if let Some(answered) = r.discarded.take().filter(|_| self.per_transaction) {
            // The client's own names go too, as in its own session, except those it parsed
            // after (the pending ones whose outcome came after it).
            self.pending_names
                .discard(answered as usize, &mut self.statements);
        }
        conn.rbuf.advance(pos);
        written.map_err(|_| End::ClientGone)?;
        if block_opened {
            if let Some(att) = self.server.take() {
                self.cancel.clear();
                drop(att.conn);
            }
            return Err(End::Fatal(
                sqlstate::PROTOCOL_VIOLATION,
                super::client_messages::NO_TRANSACTION_BLOCKS.into(),
            ));
        }
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
    /// server must not receive them (the session then behaves as in session mode). A server
    /// that holds other session state that cannot move (`Attached::keeps`) is parked. A server
    /// whose session may have changed is released once it was asked about it (`state_probe`).
    pub(super) fn release_if_idle(&mut self) {
        if !self.per_transaction
            || self.found.probe_due()
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
        if self.transaction_mode() && !att.keeps {
            att.conn.checkin();
        } else {
            self.parked.push(att);
        }
    }

    /// The server connection broke. The client gets an error for each answer it was owed and
    /// the session goes on, unless the client was inside a transaction or the session depends on
    /// that server (session mode): then, as PostgreSQL itself would, the client is closed.
    pub(super) fn server_lost(&mut self, why: &str, client_told: bool) -> Result<(), End> {
        let Some(att) = &self.server else {
            return Ok(());
        };
        tracing::warn!(
            server = %att.conn.server().name,
            pid = self.pid,
            reason = why,
            "server connection lost"
        );
        let message = format!("server connection lost: {why}");
        self.give_up_server(sqlstate::CONNECTION_FAILURE, message, client_told)
    }

    /// Drops the attached server connection with what it owed. The client gets the error
    /// `code`, `message` in place of each answer it was owed and the session goes on, unless
    /// that loses more than those answers (see [`Session::server_lost`]); then the same error
    /// ends it. `client_told`: the request being answered already got the server's own
    /// FATAL error.
    pub(super) fn give_up_server(
        &mut self,
        code: &'static str,
        message: String,
        client_told: bool,
    ) -> Result<(), End> {
        let Some(att) = self.server.take() else {
            return Ok(());
        };
        self.cancel.clear();
        self.timing.stop();
        self.fail_pending_names();
        // What the statements left went with the server.
        self.found = Found::default();
        let r = &self.responses;
        drop(att.conn);
        // A server holding the client's LISTEN, or other state that could not move, is session
        // state lost: end, as in session mode.
        if self.transaction_mode() && r.tx_status == b'I' && !r.listened && !att.keeps {
            let owed = r.ready_owed();
            if owed > 0 {
                if r.partial > 0 {
                    // A message was cut in the middle: the client's stream cannot be repaired.
                    return Err(End::Fatal(code, message));
                }
                for i in 0..owed {
                    if i > 0 || !client_told {
                        backend::error(&mut self.to_client, Severity::Error, code, &message);
                    }
                    backend::ready_for_query(&mut self.to_client, b'I');
                }
                return Ok(());
            }
            if r.quiet() {
                return Ok(());
            }
        }
        Err(End::Fatal(code, message))
    }
}

/// Whether an ErrorResponse body has severity FATAL or PANIC (the server closes next).
pub(super) fn is_fatal(body: &[u8]) -> bool {
    backend::error_field(body, b'V')
        .or_else(|| backend::error_field(body, b'S'))
        .is_some_and(|s| s == b"FATAL" || s == b"PANIC")
}

/// Whether an error says that a prepared statement's result type changed under it: a
/// migration altered a table it reads, and PostgreSQL refuses with "cached plan must not
/// change result type" until the statement is prepared again. On a server connection the
/// proxy's statements are named by their text and shared by all clients, so a client that
/// prepares the same text again would be given the stale one: the connection must go.
pub(super) fn is_stale_statement(body: &[u8]) -> bool {
    backend::error_field(body, b'C') == Some(b"0A000")
        && backend::error_field(body, b'R') == Some(b"RevalidateCachedQuery")
}
