//! Client to server: each message as the server must see it (statement names translated in
//! transaction mode, Parses added where the server lacks a statement), and what the server
//! will owe for it.

use super::*;

impl Session<'_> {
    /// Appends one client message for the attached server, translating statement names in
    /// transaction mode, and records what the server will owe for it.
    pub(super) fn forward(&mut self, tag: u8, msg: &[u8]) -> Result<(), End> {
        if matches!(tag, b'Q' | b'P' | b'B') {
            self.note_sql(tag, msg);
        }
        let map_names = self.per_transaction;
        let max_prepared = self.max_prepared();
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
                if tag == b'Q' {
                    self.extended_deallocate.query();
                }
            }
            b'S' => {
                out.extend_from_slice(msg);
                r.push(Owed::Sync);
                self.extended_deallocate.batch_ended();
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
                if name.is_empty() || !map_names || skipping || refused_name(&att.conn, name) {
                    out.extend_from_slice(msg);
                    if name.is_empty() && !skipping {
                        // Whose the unnamed statement is follows from the server's answer.
                        let mut key = unnamed_key(self.pid, self.queries);
                        if map_names {
                            let taken = || taken_marks(&att.conn, r, key);
                            if let Some(mark) = self.extended_deallocate.parsed_unnamed(rest, taken)
                            {
                                key = marked(key, mark);
                            }
                        }
                        r.push(Owed::UnnamedParse(key));
                    } else {
                        r.push(Owed::Parse { named: None });
                    }
                } else if let Some((old, old_rest)) = self.statements.get(name) {
                    // As PostgreSQL: a statement name must be closed before it is reused.
                    // (A name whose Parse is still in flight counts as used.) The server gets
                    // the new text under the old statement's server name, which exists there:
                    // it checks the text as PostgreSQL would (syntax, a failed transaction,
                    // analysis), and then finds the name taken (42P05, reworded for the
                    // client's name).
                    if prepare_here(&mut att.conn, out, r, max_prepared, old) {
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
                    if prepare_here(&mut att.conn, out, r, max_prepared, h) {
                        statements::write_parse(out, h, rest);
                        r.push(Owed::Parse { named: Some(h) });
                    } else {
                        // The server has the statement. It still checks the text as
                        // PostgreSQL would check the client's Parse (a failed transaction,
                        // an object dropped since, a batch it skips after an error).
                        statements::write_stand_in(out, rest);
                        r.push(Owed::StandInParse);
                        r.push(Owed::Hidden);
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
                let owner = unnamed_owner(&att.conn, self.pid, self.queries);
                if stmt.is_empty() && owner.is_none() && !r.unnamed_parse_pending() && !skipping {
                    self.refuse_unnamed();
                    return Ok(());
                }
                let mut deallocates = false;
                let known = self
                    .statements
                    .get(stmt)
                    .filter(|_| map_names && !skipping && !stmt.is_empty());
                match known {
                    Some((h, parse_rest)) => {
                        if !att.conn.prepared.touch(h) {
                            // PostgreSQL checks a Bind's parameter count first, also in a
                            // failed transaction, where the Parse added here would be refused
                            // (`25P02`) before the server saw the Bind. Fewer values than the
                            // Parse declared types is surely wrong: refused as PostgreSQL
                            // refuses it.
                            let declared = statements::declared_params(parse_rest).unwrap_or(0);
                            let supplied =
                                statements::supplied_params(bind_rest).unwrap_or(declared);
                            if supplied < declared {
                                let message = format!(
                                    "bind message supplies {supplied} parameters, but prepared statement \"{}\" requires {declared}",
                                    String::from_utf8_lossy(stmt)
                                );
                                self.refuse(sqlstate::PROTOCOL_VIOLATION, &message);
                                return Ok(());
                            }
                            add_here(&mut att.conn, out, r, max_prepared, h);
                            statements::write_parse(out, h, parse_rest);
                            r.push(Owed::InjectedParse(h));
                        }
                        statements::write_bind(out, portal, h, bind_rest);
                        let target = statements::deallocate_parsed(parse_rest);
                        deallocates = target.is_some();
                        self.extended_deallocate.bound(portal, target);
                    }
                    None => {
                        out.extend_from_slice(msg);
                        if map_names && !skipping {
                            // The unnamed statement, or a name the client does not have.
                            let ed = &mut self.extended_deallocate;
                            let target = if stmt.is_empty() {
                                ed.unnamed_target(owner.flatten())
                            } else {
                                None
                            };
                            deallocates = target.is_some();
                            ed.bound(portal, target);
                        }
                    }
                }
                r.push(if deallocates {
                    Owed::DeallocateBind
                } else {
                    Owed::Bind
                });
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
                    && unnamed_owner(&att.conn, self.pid, self.queries).is_none()
                    && !r.unnamed_parse_pending()
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
                        if prepare_here(&mut att.conn, out, r, max_prepared, h) {
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
                    // Closing the portal bound to a `DEALLOCATE` ends it once the server
                    // answers (see `Responses::deallocate_bound`).
                    let portal = body.strip_prefix(b"P").and_then(frame::cstr);
                    r.push(match portal {
                        Some((name, _)) if self.extended_deallocate.is_bound(name) => {
                            Owed::DeallocateClose
                        }
                        _ => Owed::Close,
                    });
                }
            },
            _ => unreachable!("tags are checked before forwarding"),
        }
        Ok(())
    }

    /// A Bind or Describe of the unnamed statement, which this client has not parsed on the
    /// attached server: what is there is another client's (or nothing). The server gets a
    /// stand-in that fails in its place ([`responses::REFUSED`]), so it fails the batch and
    /// any open transaction as PostgreSQL would have, and the client gets PostgreSQL's error
    /// in its place. The client's messages up to its Sync are dropped (the server skips them).
    pub(super) fn refuse_unnamed(&mut self) {
        let message = "unnamed prepared statement does not exist";
        self.refuse(sqlstate::INVALID_SQL_STATEMENT_NAME, message);
    }

    /// Refuses a client message with PostgreSQL's error: the server gets a stand-in that
    /// fails in its place ([`responses::REFUSED`], `26000`), so it fails the batch and any
    /// open transaction, and the client's messages up to its Sync are dropped.
    pub(super) fn refuse(&mut self, code: &'static str, message: &str) {
        self.to_server.extend_from_slice(responses::REFUSED);
        self.responses.sent();
        let expected = sqlstate::INVALID_SQL_STATEMENT_NAME;
        self.responses.push_refusal_of(expected, code, message);
        self.skip_until_sync = true;
    }

    /// Writes what is pending for the server, then what is pending for the client.
    pub(super) async fn flush(&mut self) -> Result<(), End> {
        if !self.to_server.is_empty() {
            let written = match self.server.as_mut() {
                Some(att) => {
                    self.timing.sent();
                    write_all(&mut att.conn.stream, &self.to_server).await
                }
                None => Ok(()),
            };
            self.to_server.clear();
            release_if_large(&mut self.to_server);
            if let Err(e) = written {
                // The server closed. It may have said why first (a FATAL error over a message
                // it could not take during COPY FROM STDIN, say): the client gets that, as
                // from PostgreSQL, before the proxy's error. Reading the server gives what it
                // sent, then the end of the connection, which is acted on there (`relay`,
                // `server_lost`). Meanwhile the connection must not go back to the pool.
                tracing::debug!(pid = self.pid, error = %e, "write to the server failed");
                if let Some(att) = self.server.as_mut() {
                    att.conn.replace_when_released();
                }
            }
        }
        if !self.to_client.is_empty() {
            self.traffic.sent(self.to_client.len());
            let r = write_all(&mut self.client, &self.to_client).await;
            self.to_client.clear();
            release_if_large(&mut self.to_client);
            r.map_err(|_| End::ClientGone)?;
        }
        Ok(())
    }
}

/// A statement name PostgreSQL refuses for its encoding (`22021`): not UTF-8, where client
/// and server both speak UTF-8. The server gets the client's Parse as it is and refuses it in
/// PostgreSQL's words (under a proxy name its text would be checked instead). With other
/// encodings the server might take the name, so it stays the proxy's.
fn refused_name(conn: &ServerConn, name: &[u8]) -> bool {
    std::str::from_utf8(name).is_err()
        && conn.reported.get("client_encoding") == Some("UTF8")
        && conn.reported.get("server_encoding") == Some("UTF8")
}

/// Records a use of statement `h` on the server connection. Returns true when it is not
/// prepared there yet (the caller writes its Parse); past `max_prepared` the least recently
/// used statement is closed first.
pub(super) fn prepare_here(
    conn: &mut ServerConn,
    out: &mut BytesMut,
    r: &mut Responses,
    max_prepared: usize,
    h: u64,
) -> bool {
    if conn.prepared.touch(h) {
        return false;
    }
    add_here(conn, out, r, max_prepared, h);
    true
}

/// Records statement `h`, not prepared on the server connection yet, as prepared there (the
/// caller writes its Parse); past `max_prepared` the least recently used statement is closed
/// first.
pub(super) fn add_here(
    conn: &mut ServerConn,
    out: &mut BytesMut,
    r: &mut Responses,
    max_prepared: usize,
    h: u64,
) {
    // Usually one; more when an earlier batch had to go past the cap.
    while let Some(victim) = conn.prepared.evict_for_one_more(max_prepared) {
        statements::write_close(out, victim);
        r.push(Owed::InjectedClose(victim));
    }
    conn.prepared.add(h);
}

/// The name in a `Close` of a named statement, if that is what `msg` is.
pub(super) fn named_statement(msg: &[u8]) -> Option<&[u8]> {
    let body = msg.get(5..)?;
    if body.first() != Some(&b'S') {
        return None;
    }
    let (name, _) = frame::cstr(&body[1..])?;
    (!name.is_empty()).then_some(name)
}
