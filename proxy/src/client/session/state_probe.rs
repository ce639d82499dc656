//! Transaction mode: session state the client leaves on a server, followed or kept. Statements
//! that may change it are spotted as they are forwarded (`session_sql`); after their
//! transaction the server is asked what the session holds (`server::session_probe`) before it
//! goes back to the pool.

use super::*;
use crate::client::session_sql;
use crate::server::session_probe;

impl Session<'_> {
    /// Notes SQL on its way to the server: if it may change the session's state, the server
    /// is asked about it before it is released. For almost every query this is a first-word
    /// test and a byte scan (see [`session_sql::may_change_session`]).
    pub(super) fn note_sql(&mut self, tag: u8, msg: &[u8]) {
        if self.probe_due || !self.transaction_mode() {
            return;
        }
        let body = &msg[5..];
        let sql = match tag {
            b'Q' => frame::cstr(body).map(|(sql, _)| sql),
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
        let Ok(sql) = std::str::from_utf8(sql) else {
            return;
        };
        self.probe_due = session_sql::changes_session(sql, &mut self.custom_settings);
    }

    /// Asks the attached server, idle and outside a transaction, what the session holds now:
    /// the client's settings follow it from here on, and state that cannot move keeps the
    /// server with the client. If the server cannot answer it is treated as lost.
    pub(super) async fn probe_session_state(&mut self) -> Result<(), End> {
        self.probe_due = false;
        let mut custom = std::mem::take(&mut self.custom_settings);
        for (name, _) in self.params.extras.iter() {
            if name.contains('.') && !custom.iter().any(|c| c.eq_ignore_ascii_case(name)) {
                custom.push(name.to_owned());
            }
        }
        custom.sort_unstable();
        custom.dedup();
        let timeout = Duration::from_millis(self.proxy.config.general.connect_timeout_ms);
        let att = self.server.as_mut().expect("probed while attached");
        match session_probe::probe(&mut att.conn, &custom, timeout).await {
            Ok(snapshot) => {
                att.conn.applied_extras = self.params.adopt_session_settings(&snapshot.settings);
                if let Some(what) = snapshot.kept {
                    if !att.keeps {
                        tracing::debug!(
                            pid = self.pid,
                            server = %self.pool.servers[att.index].name,
                            kept = %what,
                            "the session keeps state on this server connection: it stays with \
                             the client until the client leaves"
                        );
                        att.keeps = true;
                    }
                }
                Ok(())
            }
            Err(e) => self.server_lost(&e.to_string(), true),
        }
    }
}
