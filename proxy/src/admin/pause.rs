//! The console's `PAUSE`, `RESUME` and `KILL`: how an operator restarts or upgrades a
//! PostgreSQL server under running applications without one of them seeing an error, or
//! clears a database's sessions at once.
//!
//! `PAUSE [db]` stops the pools of `db` (or every pool) from handing out server connections:
//! a transaction that starts now waits in the checkout queue, as it would for a busy pool.
//! Transactions already running keep their servers; `PAUSE` answers once they have all ended,
//! and then closes the idle server connections, so the pools hold nothing open to the servers.
//! The operator restarts the server, then `RESUME [db]` serves the queue in order, on new
//! connections. As in PgBouncer:
//! - a session-mode client, or a transaction-mode client whose session state keeps a server
//!   (see README, "Session state in transaction mode"), holds its server until it leaves, so
//!   `PAUSE` waits for it;
//! - a waiting client still gives up after `checkout_timeout_ms` (with `57P03`
//!   cannot_connect_now), so a pause should be shorter than that;
//! - the pools stay paused if the console session ends before `PAUSE` has answered, or if
//!   the wait is cancelled (a cancel request for the console session, psql's Ctrl-C: ERROR
//!   `57014`).
//!
//! `KILL db` is a pause that does not wait: every client session of `db` ends at once with
//! FATAL `57P01` (a transaction it had open is rolled back: its server connection is closed),
//! then the idle server connections are closed. New clients may log in, and their
//! transactions wait for `RESUME`, as in PgBouncer. `KILL_CLIENT pid` ends one session.
//!
//! `RECONNECT [db]` replaces server connections without a pause: idle ones are closed at once,
//! and those in use when their clients release them (at the end of the transaction, or of the
//! session in session mode); new ones are opened as needed. After a schema migration it clears
//! the servers' cached plans (PostgreSQL's "cached plan must not change result type"), after
//! an `ALTER ROLE ... SET` it makes new sessions pick the setting up.

use crate::cancel::{CancelSlot, Who};
use crate::pool::UserPool;
use crate::protocol::sqlstate;
use crate::socket::{Peeked, Stream};
use crate::Proxy;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

/// How often a `PAUSE` looks whether the transactions it waits for have ended.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// SQLSTATE `55000` object_not_in_prerequisite_state: `PAUSE` of paused pools, `RESUME` of
/// running ones.
const NOT_IN_STATE: &str = "55000";

/// SQLSTATE `42704` undefined_object: `KILL_CLIENT` of a pid no client has.
const UNDEFINED_OBJECT: &str = "42704";

/// A refusal: SQLSTATE and message.
pub(super) type Refused = (&'static str, String);

/// What a `PAUSE` or `KILL` did, once no transaction of its pools was running.
pub(super) struct Paused {
    /// Pools paused by this command.
    pub pools: usize,
    /// Client sessions ended (by `KILL`).
    pub killed: usize,
    /// Idle server connections closed.
    pub closed: usize,
}

/// The pools a command names: those of `database`, or all.
fn select(proxy: &Proxy, database: Option<&str>) -> Result<Vec<Arc<UserPool>>, Refused> {
    let pools = proxy.pools.of_database(database);
    match database {
        Some(db) if pools.is_empty() => Err((
            sqlstate::INVALID_CATALOG_NAME,
            format!("no pool serves database \"{db}\""),
        )),
        _ => Ok(pools),
    }
}

/// Pauses those of `pools` that are running; returns how many.
fn pause_running(pools: &[Arc<UserPool>]) -> usize {
    let running: Vec<_> = pools.iter().filter(|p| !p.is_paused()).collect();
    running.iter().for_each(|p| p.pause());
    running.len()
}

/// Pauses the pools of `database` (or all), then waits until none has a server connection in
/// use, and closes their idle ones. Stops waiting (the pools stay paused) when the console
/// client leaves or the proxy shuts down.
pub(super) async fn pause(
    proxy: &Proxy,
    database: Option<&str>,
    console: (&Stream, &CancelSlot),
) -> Result<Paused, Refused> {
    let pools = select(proxy, database)?;
    let paused = pause_running(&pools);
    if paused == 0 {
        return Err((NOT_IN_STATE, "already paused; RESUME first".into()));
    }
    let closed = drain(proxy, &pools, console).await?;
    Ok(Paused {
        pools: paused,
        killed: 0,
        closed,
    })
}

/// Pauses the pools of `database` and ends every client session of it now; then waits until
/// the sessions have let go of their servers, and closes the idle server connections.
pub(super) async fn kill(
    proxy: &Proxy,
    database: &str,
    console: (&Stream, &CancelSlot),
) -> Result<Paused, Refused> {
    let pools = select(proxy, Some(database))?;
    let paused = pause_running(&pools);
    let mut killed = 0;
    for (_, slot) in proxy.cancels.clients() {
        let of_database = slot
            .info
            .get()
            .is_some_and(|i| matches!(&i.who, Who::Pool(p) if p.database == database));
        if of_database {
            slot.kill();
            killed += 1;
        }
    }
    let closed = drain(proxy, &pools, console).await?;
    Ok(Paused {
        pools: paused,
        killed,
        closed,
    })
}

/// Ends one client's session now; refuses an unknown pid and a console session.
pub(super) fn kill_client(proxy: &Proxy, pid: i32) -> Result<(), Refused> {
    let slot = proxy
        .cancels
        .clients()
        .into_iter()
        .find(|(p, _)| *p == pid)
        .map(|(_, slot)| slot);
    match slot
        .as_ref()
        .and_then(|s| s.info.get().map(|i| (s, &i.who)))
    {
        Some((slot, Who::Pool(_))) => {
            slot.kill();
            Ok(())
        }
        Some((_, Who::Console(_))) => Err((
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("client {pid} is an admin console session; it cannot be killed"),
        )),
        None => Err((
            UNDEFINED_OBJECT,
            format!("no logged-in client has pid {pid} (SHOW CLIENTS lists them)"),
        )),
    }
}

/// Waits until no pool of `pools` has a server connection in use, then closes their idle
/// ones; returns how many. Gives up when the console client leaves or cancels (a cancel
/// request for its session), or the proxy shuts down.
async fn drain(
    proxy: &Proxy,
    pools: &[Arc<UserPool>],
    (console, slot): (&Stream, &CancelSlot),
) -> Result<usize, Refused> {
    let mut shutdown = proxy.shutdown.clone();
    // A cancel request that came before this command is not for it.
    slot.take_interrupt();
    while pools.iter().any(|p| p.in_use() > 0) {
        if slot.take_interrupt() {
            return Err((
                sqlstate::QUERY_CANCELED,
                "canceling statement due to user request; the pools stay paused (RESUME to serve them)"
                    .into(),
            ));
        }
        tokio::select! {
            _ = tokio::time::sleep(DRAIN_POLL) => {}
            _ = shutdown.draining() => {
                return Err((sqlstate::ADMIN_SHUTDOWN, "the proxy is shutting down".into()));
            }
            _ = left(console) => {
                return Err((sqlstate::ADMIN_SHUTDOWN, "the console session ended".into()));
            }
        }
    }
    Ok(pools.iter().map(|p| p.close_idle()).sum())
}

/// Replaces the server connections of `database` (or all); returns how many idle ones were
/// closed at once.
pub(super) fn reconnect(proxy: &Proxy, database: Option<&str>) -> Result<usize, Refused> {
    Ok(select(proxy, database)?.iter().map(|p| p.reconnect()).sum())
}

/// Resumes the paused pools of `database` (or all); returns how many.
pub(super) fn resume(proxy: &Proxy, database: Option<&str>) -> Result<usize, Refused> {
    let paused: Vec<_> = select(proxy, database)?
        .into_iter()
        .filter(|p| p.is_paused())
        .collect();
    if paused.is_empty() {
        return Err((NOT_IN_STATE, "not paused".into()));
    }
    paused.iter().for_each(|p| p.resume());
    Ok(paused.len())
}

/// Resolves when the console client has closed its connection (bytes it sends meanwhile stay
/// unread, for the session to handle after the command).
async fn left(console: &Stream) {
    std::future::poll_fn(|cx| match console.poll_peek(cx, false) {
        Poll::Ready(Peeked::Left) => Poll::Ready(()),
        // Data: the client is there. Nothing is registered then, but the drain poll comes back.
        _ => Poll::Pending,
    })
    .await
}
