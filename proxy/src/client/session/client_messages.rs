//! The client's messages, one by one: what the proxy answers itself (a deferred `BEGIN`, a
//! `DEALLOCATE` of the client's own names), what waits for the server's answers, and what
//! needs a server (see `attach`) and is forwarded (see `forward`).

use super::*;
use crate::client::extended_deallocate::Execution;
use crate::server::session_probe::kept;

impl Session<'_> {
    /// Answers a `BEGIN` (deferring it) or the `COMMIT`/`ROLLBACK` of a deferred transaction
    /// without a server. Returns whether `msg` (a `Query`) was answered.
    pub(super) fn answer_transaction_control(&mut self, msg: &[u8]) -> bool {
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
            if self.statement_mode() {
                // Refused before it runs. FATAL, as PgBouncer does: the statements the client
                // sent behind it must not run one by one, outside the transaction it meant.
                self.violated(NO_TRANSACTION_BLOCKS.to_string());
                return true;
            }
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

    /// Handles every complete message in the client buffer.
    pub(super) async fn handle_client_messages(&mut self) -> Result<(), End> {
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
                if !self.responses.ready_coming() && !self.flush_asked {
                    // Answers the server keeps until a Sync or Flush (a held DEALLOCATE
                    // behind unsynced messages): have them sent, once. An error was sent
                    // already.
                    self.to_server.extend_from_slice(&[b'H', 0, 0, 0, 4]);
                    self.flush_asked = true;
                }
                self.held = true;
                break Ok(());
            }
            self.flush_asked = false;
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
    pub(super) fn violated(&mut self, message: String) {
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
    pub(super) fn holds_for_stale_statement(&mut self) -> bool {
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
    ///   as there); and of a name in use while a Query or Sync is unanswered: a `DISCARD ALL`
    ///   there frees it;
    /// - a Bind or Describe of a statement whose Parse or Close, followed by a Sync, is
    ///   unanswered: if the server skipped that Parse, the statement does not exist; if it
    ///   skipped that Close, the statement is still there;
    /// - a Bind or Describe of the unnamed statement while the client's Parse of it, followed
    ///   by a Sync, is unanswered: a skipped Parse leaves the server's unnamed statement as it
    ///   was (another client's, maybe);
    /// - a simple-query `DEALLOCATE`: PostgreSQL refuses it in a failed transaction, a
    ///   skipped Parse leaves nothing to deallocate, and behind extended messages with no
    ///   Sync between it is skipped if one of them failed;
    /// - the Execute of an extended-protocol `DEALLOCATE` (see `extended_deallocate`), for
    ///   the same reasons.
    pub(super) fn waits_for_answers(&self, tag: u8, msg: &[u8]) -> bool {
        match tag {
            b'P' => {
                frame::cstr(&msg[5..]).is_some_and(|(name, _)| {
                    !name.is_empty()
                        && (self.pending_names.contains(name)
                            || (self.per_transaction && self.statements.get(name).is_some()))
                }) && self.responses.ready_coming()
            }
            // Whether the unnamed statement is the client's follows from that Parse's answer.
            b'B' | b'D'
                if self.responses.ready_coming()
                    && self.responses.unnamed_parse_pending()
                    && unnamed_use(tag, msg) =>
            {
                true
            }
            b'B' | b'D' if !self.pending_names.is_empty() => {
                let body = &msg[5..];
                let statement = match tag {
                    b'B' => frame::cstr(body).and_then(|(_, rest)| frame::cstr(rest)),
                    _ => body.strip_prefix(b"S").and_then(frame::cstr),
                };
                self.responses.ready_coming()
                    && statement.is_some_and(|(name, _)| self.pending_names.contains(name))
            }
            b'Q' if self.per_transaction && self.server.is_some() => {
                statements::deallocate_target(msg).is_some()
                    && (self.responses.ready_coming() || !self.responses.settled())
            }
            b'E' if self.per_transaction && self.server.is_some() => {
                self.extended_deallocate.executes(msg).is_some()
                    && (self.responses.ready_coming() || !self.responses.settled())
            }
            _ => false,
        }
    }

    /// Answers a simple-query `DEALLOCATE` of the client's own statement names (see
    /// [`forget_deallocated`]): at once when no server is attached and no transaction is
    /// deferred, else in turn after what the attached server still owes. False for any other
    /// query, and where PostgreSQL would not run it (a failed transaction, or a server
    /// skipping to the next Sync).
    pub(super) fn answer_deallocate(&mut self, msg: &[u8]) -> bool {
        let answerable = match self.server {
            // In a deferred transaction it takes the snapshot there (see `DEALLOCATE_STAND_IN`),
            // so it waits for the server and its stand-in.
            None => !self.deferred_failed && self.deferred.is_empty(),
            Some(_) => !self.responses.skipping() && self.responses.tx_status != b'E',
        };
        if !answerable || (self.may_hold_sql_prepared() && deallocates_all(msg)) {
            return false;
        }
        let Some(all) = forget_deallocated(&mut self.statements, msg) else {
            return false;
        };
        // Like any Query, it drops the unnamed statement.
        self.extended_deallocate.query();
        if self.server.is_none() {
            let status = self.idle_status();
            statements::write_deallocate_answer(&mut self.to_client, all, status);
            // A Query drops the unnamed statement (see `unnamed_key`).
            self.queries = self.queries.wrapping_add(1);
        } else {
            // The server runs a stand-in, or skips it as it would the DEALLOCATE.
            self.to_server
                .extend_from_slice(responses::DEALLOCATE_STAND_IN);
            self.responses.sent();
            self.responses.push(Owed::Deallocated { all });
        }
        true
    }

    /// Answers the Execute of an extended-protocol `DEALLOCATE` of the client's own statement
    /// names (see `extended_deallocate`), once the server has answered all before it (see
    /// `waits_for_answers`). The server runs a stand-in that takes a snapshot, as the
    /// `DEALLOCATE` would have. False where PostgreSQL would not run it (a failed
    /// transaction, a server skipping to the next Sync), or would refuse it (a name the client
    /// does not have: the server refuses it in PostgreSQL's words).
    fn answer_extended_deallocate(&mut self, msg: &[u8]) -> bool {
        if self.server.is_none() || self.responses.skipping() || self.responses.tx_status == b'E' {
            return false;
        }
        let r = &self.responses;
        if r.deallocate_bound != Some(r.portal_epoch) {
            return false; // the portal's Bind failed, or its transaction is over
        }
        let all = match self.extended_deallocate.executes(msg) {
            None => return false,
            Some(Execution::RanAlready) => {
                self.refuse_run_portal(msg);
                return true;
            }
            Some(Execution::Runs(Deallocate::All)) if self.may_hold_sql_prepared() => {
                return false;
            }
            Some(Execution::Runs(Deallocate::All)) => {
                self.statements.clear();
                true
            }
            Some(Execution::Runs(Deallocate::Name(name))) => {
                if !self.statements.remove(name) {
                    return false;
                }
                false
            }
        };
        self.extended_deallocate.ran();
        statements::write_snapshot_stand_in(&mut self.to_server);
        let r = &mut self.responses;
        r.sent();
        r.push(Owed::Hidden);
        r.push(Owed::Hidden);
        r.push(Owed::ExtendedDeallocated { all });
        r.push(Owed::Hidden);
        r.push(Owed::Hidden);
        true
    }

    /// A second Execute of a `DEALLOCATE` portal the proxy answered: PostgreSQL runs a
    /// utility statement's portal once, and refuses to run it again (`55000`). The server's
    /// portal never ran, so it gets a stand-in that fails in its place (as in
    /// `refuse_unnamed`), and the client's messages up to its Sync are dropped.
    fn refuse_run_portal(&mut self, msg: &[u8]) {
        let portal = frame::cstr(&msg[5..]).map_or(&[][..], |(name, _)| name);
        let message = format!(
            "portal \"{}\" cannot be run",
            String::from_utf8_lossy(portal)
        );
        self.refuse(sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE, &message);
    }

    /// Whether the client may have statements of its own from a SQL `PREPARE` on a server
    /// it keeps: its `DEALLOCATE ALL` then goes to that server, which drops them with the
    /// rest (the proxy then forgets the client's names, and that connection's statements,
    /// as after a `DISCARD ALL`).
    fn may_hold_sql_prepared(&self) -> bool {
        self.found.kept & kept::PREPARED != 0
            || !self.parked.is_empty()
            || self.server.as_ref().is_some_and(|att| att.keeps)
    }

    pub(super) async fn on_client_message(&mut self, tag: u8, msg: &[u8]) -> Result<(), End> {
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
            return Ok(());
        }
        if tag == b'E' && self.per_transaction && self.answer_extended_deallocate(msg) {
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
                    NoServer::ClientLeft if self.cancel.is_killed() => return Err(killed()),
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
                if tag == b'Q' && self.answer_deallocate(msg) {
                    return Ok(());
                }
            }
        }
        self.forward(tag, msg)
    }
}

/// Statement mode's answer to a transaction block, in PgBouncer's words (with its SQLSTATE,
/// `08P01`), which clients such as PostgREST recognize.
pub(super) const NO_TRANSACTION_BLOCKS: &str =
    "transaction blocks not allowed in statement pooling mode";

/// A simple-query `DEALLOCATE` of the client's own statement names (or of all of them) is the
/// proxy's to answer: those names exist only in the session, and the statements stay prepared
/// on the servers for other clients (PDO and psycopg with libpq before 17 deallocate this way;
/// forwarded, the server would answer "does not exist"). Forgets them and returns `Some(all)`;
/// `None` for any other query, including a `DEALLOCATE` of a name the client did not prepare
/// with Parse (a SQL `PREPARE`), which the server answers.
pub(super) fn forget_deallocated(statements: &mut Statements, msg: &[u8]) -> Option<bool> {
    match statements::deallocate_target(msg)? {
        Deallocate::All => {
            statements.clear();
            Some(true)
        }
        Deallocate::Name(name) => statements.remove(&name).then_some(false),
    }
}

/// Whether a simple Query is a `DEALLOCATE ALL`.
fn deallocates_all(msg: &[u8]) -> bool {
    statements::deallocate_target(msg) == Some(Deallocate::All)
}

/// Whether a Bind (`B`) or Describe (`D`) message uses the unnamed statement.
fn unnamed_use(tag: u8, msg: &[u8]) -> bool {
    let body = &msg[5..];
    match tag {
        b'B' => frame::cstr(body)
            .and_then(|(_, rest)| frame::cstr(rest))
            .is_some_and(|(stmt, _)| stmt.is_empty()),
        _ => body.starts_with(b"S\0"),
    }
}
