//! The end of a session: its server connections rolled back, reset and returned to the pool,
//! or closed when a request is still in flight.

use super::*;

impl Session<'_> {
    /// Cleans up the server connection when the session ends: a quiet connection is rolled back
    /// (and reset in session mode) and returned; one with a request in flight is cancelled and
    /// closed, so no transaction is ever left open behind a departed client.
    pub(super) async fn detach_at_end(&mut self) {
        if let Some(att) = self.server.take() {
            self.clean_up(att).await;
            self.found = Found::default();
        }
        while let Some(att) = self.parked.pop() {
            // Parked servers are idle, outside a transaction: only the reset is due.
            self.responses.reset();
            self.clean_up(att).await;
        }
    }

    /// Returns one server connection to its pool after the session, or closes it.
    pub(super) async fn clean_up(&mut self, att: Attached) {
        self.cancel.clear();
        let mut conn = att.conn;
        if !self.responses.quiet() {
            let key = conn.key.clone();
            drop(conn);
            let timeout = Duration::from_millis(self.proxy.general().cancel_timeout_ms);
            tokio::spawn(async move {
                let _ = tokio::time::timeout(timeout, crate::cancel::send_cancel(&key)).await;
            });
            return;
        }
        let mut statements: Vec<&str> = Vec::with_capacity(2);
        if self.responses.tx_status != b'I' {
            statements.push("ROLLBACK");
        }
        let rules = self.pool.rules();
        let reset = self.mode == PoolMode::Session && !rules.reset_query.is_empty();
        // Transaction mode: the server holds state of this session that could not move, or
        // settings the session changed that were not read back yet.
        let discard = self.transaction_mode() && (att.keeps || self.found.probe_due());
        if reset {
            statements.push(&rules.reset_query);
        } else if discard {
            statements.push("DISCARD ALL");
        } else if self.responses.listened && self.transaction_mode() {
            // Transaction mode: the server was this session's for its LISTEN; nothing else of
            // the session is kept there that transaction mode does not already allow.
            statements.push("UNLISTEN *");
        }
        if statements.is_empty() {
            conn.checkin();
            return;
        }
        let timeout = Duration::from_millis(self.proxy.general().connect_timeout_ms);
        match Box::pin(maintenance::run(&mut conn, &statements, timeout, |_, _| {})).await {
            Ok(o) if o.error.is_none() && o.tx_status == b'I' => {
                if reset || discard {
                    conn.applied_extras = ParamList::new();
                    conn.hidden_settings_of = None;
                }
                conn.checkin();
            }
            Ok(o) => {
                let detail = o.error.as_deref().map(error_message).unwrap_or_default();
                tracing::warn!(server = %conn.server().name, %detail, "reset failed; closing the server connection");
            }
            Err(e) => {
                tracing::warn!(server = %conn.server().name, error = %e, "reset failed; closing the server connection")
            }
        }
    }
}
