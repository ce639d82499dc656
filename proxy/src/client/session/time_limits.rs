//! Time limits on a waiting session. While the session waits for its client with nothing in
//! flight, the client may be closed: inside a transaction after `idle_transaction_timeout_ms`
//! (the transaction holds a server and its locks), outside after `client_idle_timeout_ms`.
//! While it waits for its server, the server may be given up: a request not answered within
//! `query_timeout_ms` is cancelled and its server connection closed, so a server that hangs or
//! a network that drops packets without a reset cannot hold a client forever. A transaction
//! that has held a server past `transaction_timeout_ms`, working or idle, is ended and its
//! client closed. All four are off by default, as in PgBouncer, and cost nothing then.

use super::*;
use std::pin::Pin;

/// Which limit a waiting session is under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Limit {
    /// The client is idle inside a transaction (ReadyForQuery said `T` or `E`).
    IdleInTransaction,
    /// The client is idle between transactions.
    IdleSession,
    /// The server owes an answer.
    Query,
    /// The transaction has held its server too long.
    Transaction,
}

impl Session<'_> {
    /// Whether any limit is configured: when none is (the default), a wait tests this one flag
    /// and nothing else of this file runs.
    pub(super) fn time_limits_configured(g: &crate::config::General) -> bool {
        g.idle_transaction_timeout_ms > 0
            || g.client_idle_timeout_ms > 0
            || g.query_timeout_ms > 0
            || g.transaction_timeout_ms > 0
    }

    /// [`Session::wait`], or the limit that applies while the session waits now, if it passes
    /// first.
    pub(super) async fn wait_limited(&mut self) -> Event {
        let limit = self.time_limit();
        let armed = self.limit_timer.arm(limit, self.responses.progress);
        // Out of the session while `wait` borrows it; put back after.
        let mut timer = std::mem::take(&mut self.limit_timer);
        let event = self.wait(timer.elapsed(armed)).await;
        self.limit_timer = timer;
        event
    }

    /// The limit that passes first now: the transaction's, or the one of the wait.
    fn time_limit(&self) -> Option<(Duration, Limit)> {
        let g = self.proxy.general();
        let wait = self.wait_limit(&g);
        match (wait, self.transaction_limit(&g)) {
            (Some(w), Some(t)) => Some(if t.0 < w.0 { t } else { w }),
            (w, t) => w.or(t),
        }
    }

    /// What is left of `transaction_timeout_ms` for the transaction being timed: from its
    /// first request sent to a server (a `BEGIN` the proxy answered holds no server yet, and
    /// `idle_transaction_timeout_ms` is the limit for that).
    fn transaction_limit(&self, g: &crate::config::General) -> Option<(Duration, Limit)> {
        let ms = g.transaction_timeout_ms;
        if ms == 0 || self.server.is_none() {
            return None;
        }
        let started = self.timing.transaction_started()?;
        let held = Duration::from_nanos(crate::clock::now_ns().saturating_sub(started));
        Some((
            Duration::from_millis(ms).saturating_sub(held),
            Limit::Transaction,
        ))
    }

    /// The limit of the wait. The idle limits apply while the server owes nothing, since
    /// otherwise the client waits, not the proxy; the query limit applies while it owes.
    fn wait_limit(&self, g: &crate::config::General) -> Option<(Duration, Limit)> {
        let status = match &self.server {
            Some(_) if !self.responses.quiet() => {
                let ms = g.query_timeout_ms;
                return (ms > 0).then(|| (Duration::from_millis(ms), Limit::Query));
            }
            Some(_) => self.responses.tx_status,
            // A deferred BEGIN: the client is inside a transaction, without a server yet.
            None => self.idle_status(),
        };
        let (ms, limit) = if status == b'I' {
            (g.client_idle_timeout_ms, Limit::IdleSession)
        } else {
            (g.idle_transaction_timeout_ms, Limit::IdleInTransaction)
        };
        (ms > 0).then(|| (Duration::from_millis(ms), limit))
    }

    /// A limit passed. An idle client is closed, in PostgreSQL's words for its own
    /// `idle_in_transaction_session_timeout` and `idle_session_timeout` (a transaction left
    /// open is rolled back when the session lets its server go, see `clean_up`).
    ///
    /// A server past `query_timeout_ms` is sent a cancel and its connection is closed, which
    /// rolls back whatever it had open. The client gets `57014` in place of each answer it
    /// was owed and goes on where that loses nothing (transaction mode, outside a
    /// transaction); otherwise, as when a server connection breaks, it gets a FATAL `57014`
    /// and is closed.
    pub(super) fn limit_passed(&mut self, limit: Limit) -> Result<(), End> {
        match limit {
            Limit::IdleInTransaction => Err(End::Fatal(
                sqlstate::IDLE_IN_TRANSACTION_TIMEOUT,
                "terminating connection due to idle-in-transaction timeout".into(),
            )),
            Limit::IdleSession => Err(End::Fatal(
                sqlstate::IDLE_SESSION_TIMEOUT,
                "terminating connection due to idle-session timeout".into(),
            )),
            Limit::Transaction => {
                // The end of the session rolls it back: a server that still works on it is
                // sent a cancel and closed, an idle one gets ROLLBACK (see `clean_up`).
                tracing::info!(
                    pid = self.pid,
                    transaction_timeout_ms = self.proxy.general().transaction_timeout_ms,
                    "closing a client whose transaction held its server too long"
                );
                Err(End::Fatal(
                    sqlstate::TRANSACTION_TIMEOUT,
                    "terminating connection due to transaction timeout".into(),
                ))
            }
            Limit::Query => {
                let Some(att) = &self.server else {
                    return Ok(());
                };
                let ms = self.proxy.general().query_timeout_ms;
                tracing::warn!(
                    server = %att.conn.server().name,
                    pid = self.pid,
                    query_timeout_ms = ms,
                    "no answer from the server in time; cancelling and closing its connection"
                );
                let key = att.conn.key.clone();
                let timeout = Duration::from_millis(self.proxy.general().cancel_timeout_ms);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(timeout, crate::cancel::send_cancel(&key)).await;
                });
                let message = format!(
                    "canceling statement due to query timeout: the server did not answer \
                     within {ms} ms (switchyard's query_timeout_ms)"
                );
                self.give_up_server(sqlstate::QUERY_CANCELED, message, false)
            }
        }
    }
}

/// The session's limit timer: allocated the first time a limit applies (never, with all
/// limits off). One pointer in the session, whose future every connected client keeps.
///
/// Deadlines move later with every request or wait, and moving a tokio timer means a trip to
/// the timer wheel under its lock. So the timer is moved only when a deadline comes earlier
/// than it is set for; set too early, it fires, finds the deadline later, and is moved then, at
/// most once per limit's length.
#[derive(Default)]
pub(super) struct LimitTimer(Option<Box<Armed>>);

struct Armed {
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// When the armed limit passes (the sleep may be set earlier).
    deadline: tokio::time::Instant,
    /// The limit the deadline was set for.
    limit: Option<Limit>,
    /// `Responses::progress` when the query limit was armed: the deadline stands while the
    /// server has answered nothing more since.
    progress: u16,
}

impl LimitTimer {
    /// Arms the timer for `limit`, or leaves it unused without one. An idle limit runs from
    /// now; the query limit from when the server last answered a request in full, or was
    /// given its first one (the deadline stands across the waits in between).
    fn arm(&mut self, limit: Option<(Duration, Limit)>, progress: u16) -> Option<Limit> {
        let Some((after, limit)) = limit else {
            if let Some(a) = &mut self.0 {
                a.limit = None;
            }
            return None;
        };
        let deadline = tokio::time::Instant::now() + after;
        let a = self.0.get_or_insert_with(|| {
            Box::new(Armed {
                sleep: Box::pin(tokio::time::sleep_until(deadline)),
                deadline,
                limit: None,
                progress,
            })
        });
        let same_request =
            limit == Limit::Query && a.limit == Some(Limit::Query) && a.progress == progress;
        if !same_request {
            a.deadline = deadline;
            a.limit = Some(limit);
            a.progress = progress;
            if a.sleep.deadline() > deadline {
                a.sleep.as_mut().reset(deadline);
            }
        }
        Some(limit)
    }

    /// Waits until the limit `armed` has passed; forever without one. Once it has, the
    /// timer is disarmed, so the next limit starts afresh.
    async fn elapsed(&mut self, armed: Option<Limit>) -> Limit {
        match (armed, &mut self.0) {
            (Some(limit), Some(a)) => {
                loop {
                    a.sleep.as_mut().await;
                    if a.sleep.deadline() >= a.deadline {
                        break;
                    }
                    // Set early (see above): on to the deadline.
                    let deadline = a.deadline;
                    a.sleep.as_mut().reset(deadline);
                }
                a.limit = None;
                limit
            }
            _ => std::future::pending().await,
        }
    }
}
