//! Transaction mode (and session mode with per-statement routing): session state the client
//! leaves on a server, followed or kept. Statements that may change it are spotted as they
//! are forwarded (`session_sql`); after their transaction, before the server is released, the
//! server is asked what the session holds (`server::session_probe`).

use super::*;
use crate::client::session_sql;
use crate::server::session_probe;

impl Session<'_> {
    /// Notes SQL on its way to the server (see [`session_sql`]). For almost every query this
    /// is a first-word test and a byte scan ([`session_sql::may_change_session`]).
    pub(super) fn note_sql(&mut self, tag: u8, msg: &[u8]) {
        if !self.per_transaction || !self.track_session_state {
            return;
        }
        let body = &msg[5..];
        let sql = match tag {
            b'Q' => Some(body.strip_suffix(b"\0").unwrap_or(body)),
            b'P' => frame::cstr(body)
                .and_then(|(_, rest)| frame::cstr(rest))
                .map(|(sql, _)| sql),
            // A named statement runs again: its text was seen at its Parse, maybe in a
            // transaction that did not change the session then.
            b'B' => frame::cstr(body)
                .and_then(|(_, rest)| frame::cstr(rest))
                .filter(|(name, _)| !name.is_empty())
                .and_then(|(name, _)| self.statements.get(name))
                .and_then(|(_, parse_rest)| frame::cstr(parse_rest))
                .map(|(sql, _)| sql),
            _ => None,
        };
        let Some(sql) = sql else {
            return;
        };
        if !session_sql::may_change_session(sql) {
            return;
        }
        if let Ok(sql) = std::str::from_utf8(sql) {
            session_sql::scan(sql, &mut self.found);
        }
    }

    /// Asks the attached server, idle and outside a transaction, what the client's statements
    /// left (see `Found`): the settings follow the client from here on, and objects that
    /// cannot move keep the server with it. A server that refuses to answer stays with the
    /// client (its state is unknown); one that cannot answer is treated as lost.
    pub(super) async fn probe_session(&mut self) -> Result<(), End> {
        let found = std::mem::take(&mut self.found);
        let att = self.server.as_mut().expect("probed while attached");
        if found.opaque {
            att.conn.hidden_settings_of = Some(self.pid);
        }
        let kept = if att.keeps { 0 } else { found.kept };
        let mut names = found.names;
        if found.all {
            // The server does not list custom parameters: ask for the client's by name.
            for (name, _) in self.params.extras.iter() {
                if name.contains('.') && !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                    names.push(name.to_ascii_lowercase());
                }
            }
        }
        if !found.all && names.is_empty() && kept == 0 {
            return Ok(());
        }
        let questions = session_probe::Questions {
            names: &names,
            all: found.all,
            kept,
        };
        let timeout = Duration::from_millis(self.proxy.general().connect_timeout_ms);
        match session_probe::probe(&mut att.conn, &questions, timeout).await {
            Ok(Ok(snapshot)) => {
                if !names.is_empty() || found.all {
                    self.params.adopt_settings(
                        &snapshot.settings,
                        found.all,
                        &mut att.conn.applied_extras,
                    );
                }
                if !snapshot.kept.is_empty() {
                    tracing::debug!(
                        pid = self.pid,
                        server = %att.conn.server().name,
                        kept = %snapshot.kept.join(", "),
                        "the session keeps objects on this server connection: it stays with \
                         the client until the client leaves"
                    );
                    att.keeps = true;
                }
                Ok(())
            }
            Ok(Err(refused)) => {
                tracing::warn!(
                    pid = self.pid,
                    server = %att.conn.server().name,
                    error = %refused,
                    "could not read the session's state after statements that change it: \
                     the server stays with the client until the client leaves"
                );
                att.keeps = true;
                Ok(())
            }
            Err(e) => self.server_lost(&format!("session probe: {e}"), true),
        }
    }
}
