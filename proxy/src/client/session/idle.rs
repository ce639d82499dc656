//! Idle clients. A session that waits for its client with nothing in flight may be closed:
//! inside a transaction after `idle_transaction_timeout_ms` (the transaction holds a server and
//! its locks), outside after `client_idle_timeout_ms`. Both are off by default, as in
//! PgBouncer, and cost nothing then.

use super::*;
use std::pin::Pin;

/// Which idle limit a waiting session is under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Idle {
    /// Inside a transaction (ReadyForQuery said `T` or `E`).
    InTransaction,
    /// Between transactions.
    Session,
}

impl Idle {
    /// How the session ends when the limit passes, in PostgreSQL's words for its own
    /// `idle_in_transaction_session_timeout` and `idle_session_timeout`. A transaction left
    /// open is rolled back when the session lets its server go (see `clean_up`).
    pub(super) fn end(self) -> End {
        match self {
            Idle::InTransaction => End::Fatal(
                sqlstate::IDLE_IN_TRANSACTION_TIMEOUT,
                "terminating connection due to idle-in-transaction timeout".into(),
            ),
            Idle::Session => End::Fatal(
                sqlstate::IDLE_SESSION_TIMEOUT,
                "terminating connection due to idle-session timeout".into(),
            ),
        }
    }
}

impl Session<'_> {
    /// Whether either idle limit is configured: when not (the default), a wait tests this one
    /// flag and nothing else of this file runs.
    pub(super) fn idle_limits_configured(g: &crate::config::General) -> bool {
        g.idle_transaction_timeout_ms > 0 || g.client_idle_timeout_ms > 0
    }

    /// [`Session::wait`], or the idle limit that applies while the session waits now, if it
    /// passes first. No limit applies while the server still owes an answer, since then the
    /// client waits, not the proxy.
    pub(super) async fn wait_or_idle(&mut self) -> Event {
        let limit = self.idle_limit();
        let armed = self.idle_timer.arm(limit);
        // Out of the session while `wait` borrows it; put back after.
        let mut timer = std::mem::take(&mut self.idle_timer);
        let event = self.wait(timer.elapsed(armed)).await;
        self.idle_timer = timer;
        event
    }

    fn idle_limit(&self) -> Option<(Duration, Idle)> {
        let g = &self.proxy.config.general;
        let status = match &self.server {
            Some(_) if !self.responses.quiet() => return None,
            Some(_) => self.responses.tx_status,
            // A deferred BEGIN: the client is inside a transaction, without a server yet.
            None => self.idle_status(),
        };
        let (ms, idle) = if status == b'I' {
            (g.client_idle_timeout_ms, Idle::Session)
        } else {
            (g.idle_transaction_timeout_ms, Idle::InTransaction)
        };
        (ms > 0).then(|| (Duration::from_millis(ms), idle))
    }
}

/// The session's idle timer: allocated the first time a limit applies (never, with both limits
/// off), then re-armed for each wait, so a session without limits pays one test per wait.
#[derive(Default)]
pub(super) struct IdleTimer(Option<Pin<Box<tokio::time::Sleep>>>);

impl IdleTimer {
    /// Arms the timer for `limit` from now, or leaves it unused without one.
    fn arm(&mut self, limit: Option<(Duration, Idle)>) -> Option<Idle> {
        let (after, idle) = limit?;
        let deadline = tokio::time::Instant::now() + after;
        match &mut self.0 {
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => self.0 = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        Some(idle)
    }

    /// Waits until the limit `armed` has passed; forever without one.
    async fn elapsed(&mut self, armed: Option<Idle>) -> Idle {
        match (armed, &mut self.0) {
            (Some(idle), Some(sleep)) => {
                sleep.as_mut().await;
                idle
            }
            _ => std::future::pending().await,
        }
    }
}
