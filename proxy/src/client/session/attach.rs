//! Routing a transaction (or a session) and checking out the server connection it goes to,
//! with the client's session parameters applied there.

use super::*;

impl Session<'_> {
    /// The SQL a routing policy sees for a message: its own text for `Query` and `Parse`; for
    /// a `Bind` or a statement `Describe`, the text of the prepared statement it names.
    pub(super) fn sql_of<'m>(&'m self, msg: &'m [u8]) -> Option<&'m str> {
        let body = msg.get(5..)?;
        let statement = match msg.first()? {
            b'Q' | b'P' => return crate::router::classify::sql_of(msg),
            b'B' => frame::cstr(frame::cstr(body)?.1)?.0,
            b'D' if body.first() == Some(&b'S') => frame::cstr(&body[1..])?.0,
            _ => return None,
        };
        let (_, parse_rest) = self.statements.get(statement)?;
        crate::router::classify::text_of(frame::cstr(parse_rest)?.0)
    }

    /// Routes and checks out a server connection, and gives it this client's parameters.
    pub(super) async fn attach(&mut self, msg: &[u8]) -> Result<(), NoServer> {
        let pool = self.pool.clone();
        // A server that refuses a connection is marked unhealthy, which takes it out of the
        // policies' candidates: route again. When a route repeats a server that failed there
        // is no other: if it failed for a passing reason (a restart), or timed out while its
        // pool has other connections open, wait for it within checkout_timeout_ms, trying
        // again or taking a connection that comes free (`checkout_riding_out`); else fail.
        let mut failed = 0u64;
        let mut last_error: Option<(&str, String)> = None;
        // Every failure so far was a passing one.
        let mut passing = true;
        let (sql, application_name) = if pool.backends.reads_requests() {
            let app = self.params.tracked.get(TrackedParams::APPLICATION_NAME);
            (self.sql_of(msg), app)
        } else {
            (None, "")
        };
        let (mut conn, keeps) = loop {
            // Route and pick the server under one load of the pool's backends: the decision's
            // index names a server of the list its router was built for.
            let (server, bit) = {
                let backends = pool.backends.load();
                let route = backends.router.route(&RouteRequest {
                    message: msg,
                    sql,
                    session_id: self.pid,
                    database: &pool.database,
                    user: &pool.user,
                    application_name,
                    client_addr: self.peer,
                    options: &self.params.startup,
                    in_transaction: !self.deferred.is_empty(),
                    read_only_transaction: !self.deferred.is_empty() && self.deferred_read_only,
                    session_hint: &self.route_hint,
                });
                let index = pool.resolve(&backends, route)?;
                let bit = 1u64.checked_shl(index as u32).unwrap_or(0);
                (backends.servers[index].clone(), bit)
            };
            if failed & bit != 0 {
                if !passing {
                    return Err(last_error.expect("set with the bit").into());
                }
                let wait = Duration::from_millis(self.proxy.general().checkout_timeout_ms);
                // Rare (a server restarting): boxed, to keep the session future small.
                let until = std::time::Instant::now() + wait;
                let checkout = server.checkout_riding_out(until);
                let waiting = queued::unless_client_leaves(
                    &self.client,
                    &self.cancel,
                    !self.more_buffered,
                    checkout,
                );
                match Box::pin(waiting).await {
                    None => return Err(NoServer::ClientLeft),
                    Some(Ok(conn)) => break (conn, false),
                    // A reload replaced the server meanwhile: route again, afresh.
                    Some(Err(CheckoutError::Retired)) => {
                        (failed, passing, last_error) = (0, true, None);
                        continue;
                    }
                    Some(Err(e)) => return Err(checkout_error(&pool, e).into()),
                }
            }
            let parked = self
                .parked
                .iter()
                .position(|p| Arc::ptr_eq(p.conn.server(), &server));
            if let Some(i) = parked {
                let parked = self.parked.swap_remove(i);
                break (parked.conn, parked.keeps);
            }
            let checkout = server.checkout();
            let Some(checked_out) = queued::unless_client_leaves(
                &self.client,
                &self.cancel,
                !self.more_buffered,
                checkout,
            )
            .await
            else {
                return Err(NoServer::ClientLeft);
            };
            match checked_out {
                Ok(conn) => break (conn, false),
                Err(CheckoutError::Connect(e)) if bit != 0 => {
                    // `server` went into the checkout: the same list finds it again by its
                    // bit (a reload meanwhile would at worst misjudge this one wait).
                    let backends = pool.backends.load();
                    let worth = backends.servers.get(bit.trailing_zeros() as usize);
                    passing &= worth.is_some_and(|s| s.worth_waiting_after(&e, 0));
                    failed |= bit;
                    last_error = Some(checkout_error(&pool, CheckoutError::Connect(e)));
                }
                // A reload replaced the server while this waited: route again, afresh.
                Err(CheckoutError::Retired) => (failed, passing, last_error) = (0, true, None),
                Err(e) => return Err(checkout_error(&pool, e).into()),
            }
        };
        self.cancel.set(&conn.key);
        let hidden = conn.hidden_settings_of.is_some_and(|pid| pid != self.pid);
        if hidden || !self.params.in_sync(&conn) {
            let timeout = Duration::from_millis(self.proxy.general().connect_timeout_ms);
            // Rare (parameters differ): boxed to keep the session future small.
            let applied = Box::pin(apply_params(&mut conn, &mut self.params, hidden, timeout));
            if let Err((idle, code, message)) = applied.await {
                self.cancel.clear();
                if idle {
                    conn.checkin();
                }
                return Err(NoServer::Refused(code, message));
            }
        }
        self.responses.reset();
        // Statements this attachment uses are in flight from here on: never evicted under it.
        conn.prepared.start_batch();
        self.server = Some(Attached { conn, keeps });
        Ok(())
    }
}

/// Gives a server connection the client's session parameters with `set_config`. With
/// `hidden` (another client may have left custom parameters there that could not be read
/// back, `Found::opaque`), `RESET ALL` first; it leaves `role`, which the proxy knows. On
/// failure: whether the server is still idle (back to the pool) or not (closed), and the
/// SQLSTATE and message for the client.
async fn apply_params(
    conn: &mut ServerConn,
    params: &mut ClientParams,
    hidden: bool,
    timeout: Duration,
) -> Result<(), (bool, &'static str, String)> {
    if hidden {
        let outcome = maintenance::run(conn, &["RESET ALL"], timeout, |_, _| {}).await;
        settled(outcome, "reset the server's settings")?;
        let role = conn.applied_extras.get("role").map(str::to_owned);
        conn.applied_extras = ParamList::new();
        if let Some(role) = role {
            conn.applied_extras.set("role", &role);
        }
        conn.hidden_settings_of = None;
    }
    if let Some(sql) = params.sync_sql(conn) {
        let tracked = &mut params.tracked;
        let outcome = maintenance::run(conn, &[&sql], timeout, |name, value| {
            tracked.set(name, value);
        })
        .await;
        settled(outcome, "apply the session's startup parameters")?;
        conn.applied_extras = params.extras.clone();
    }
    Ok(())
}

/// A query the proxy ran at checkout, as [`apply_params`] reports it.
fn settled(
    outcome: std::io::Result<maintenance::Outcome>,
    what: &str,
) -> Result<(), (bool, &'static str, String)> {
    match outcome {
        Ok(o) if o.error.is_none() && o.tx_status == b'I' => Ok(()),
        Ok(o) => {
            let detail = o.error.as_deref().map(error_message).unwrap_or_default();
            Err((
                o.tx_status == b'I',
                sqlstate::PROTOCOL_VIOLATION,
                format!("cannot {what}: {detail}"),
            ))
        }
        Err(e) => Err((
            false,
            sqlstate::CONNECTION_FAILURE,
            format!("server connection failed while trying to {what}: {e}"),
        )),
    }
}

/// The SQLSTATE and message a client gets when no server connection could be had.
pub(super) fn checkout_error(pool: &UserPool, e: CheckoutError) -> (&'static str, String) {
    match e {
        CheckoutError::Exhausted { .. }
        | CheckoutError::Capped { .. }
        | CheckoutError::UserCapped { .. } => (
            sqlstate::TOO_MANY_CONNECTIONS,
            format!(
                "connection pool for database \"{}\" user \"{}\" is exhausted: {e}",
                pool.database, pool.user
            ),
        ),
        CheckoutError::Paused { .. } => (
            sqlstate::CANNOT_CONNECT_NOW,
            format!("database \"{}\" user \"{}\": {e}", pool.database, pool.user),
        ),
        // Retried in `attach`, so not seen here in practice.
        CheckoutError::Retired => (sqlstate::CANNOT_CONNECT_NOW, e.to_string()),
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
