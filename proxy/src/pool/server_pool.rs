//! The connections of one (database, user) to one server.
//!
//! [`Slots`] bound the connections checked out to `pool_size` and queue the checkouts that wait.
//! Idle connections wait on one LIFO stack per worker thread (the warmest is reused first, the
//! coldest can time out); a worker takes from its own stack first, so a transaction normally
//! stays on one thread, and from the others before opening a new connection, so `pool_size` is
//! never exceeded. The fast path of a checkout and of a checkin is two uncontended locks each
//! (the slots, the idle stack): no allocation, no syscall, no timer.
//!
//! A reload that changes a server (its address, credentials or pool size) or removes it
//! retires its pool ([`ServerPool::retire`]): the idle connections close at once, those in use
//! when their transaction ends, and checkouts still queued there are told to route again.

use super::handoff::{Handoff, SLOW_CONNECT};
use super::server_cap::{CapKind, CapTicket, ConnCaps, Room};
use super::slots::{Expired, Slots, WaitTotal};
use super::PoolTimeouts;
use crate::config::{General, Role};
use crate::server::{connect, ConnectError, ServerConn, ServerTarget};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Boxed connections: moving one in and out of the pool copies a pointer, not ~300 bytes.
#[allow(clippy::vec_box)]
type IdleStack = Vec<Box<ServerConn>>;

/// How often a checkout that rides out a server's restart tries to connect again: often
/// enough to add little to a restart of a second or two, and at most `pool_size` attempts per
/// pool each time.
pub const RIDE_OUT_RETRY: Duration = Duration::from_millis(200);

/// Why no connection could be handed out.
#[derive(Debug, Error)]
pub enum CheckoutError {
    #[error(
        "no server connection to {server} became free within {waited_ms} ms (pool_size {size})"
    )]
    Exhausted {
        server: String,
        waited_ms: u128,
        size: u32,
    },
    /// The pool was paused (the admin console's `PAUSE`) for the whole wait.
    #[error(
        "the pool is paused (PAUSE on the admin console) and was not resumed within {waited_ms} ms"
    )]
    Paused { waited_ms: u128 },
    /// The database's users together hold `max_db_connections` connections to the server,
    /// none idle, and none closed or went idle within the wait.
    #[error(
        "no server connection to {server} could be opened within {waited_ms} ms: the database's users hold max_db_connections ({max}) there"
    )]
    Capped {
        server: String,
        waited_ms: u128,
        max: u32,
    },
    /// The server login holds `max_user_connections` connections across its databases and
    /// servers, none idle, and none closed or went idle within the wait.
    #[error(
        "no server connection to {server} could be opened within {waited_ms} ms: user {user} holds max_user_connections ({max}) across its databases"
    )]
    UserCapped {
        server: String,
        user: String,
        waited_ms: u128,
        max: u32,
    },
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A reload replaced this server's pool while the checkout waited: route again, in the
    /// pool's new server list.
    #[error("the server was removed or changed by a reload")]
    Retired,
}

/// A pool's servers in config order: the indexes a router's decision names. Each server's
/// pool is shared, so a reload can keep the unchanged ones (with their connections) in the
/// next list.
pub type Servers = Arc<Vec<Arc<ServerPool>>>;

/// Connections to one server for one (database, user).
#[derive(Debug)]
pub struct ServerPool {
    /// A name for logs and routing: the configured name or `host:port`.
    pub name: String,
    pub role: Role,
    pub target: ServerTarget,
    pub size: u32,
    pub min_size: u32,
    timeouts: Arc<PoolTimeouts>,
    /// Idle connections, one stack per worker (by `ServerConn::home`).
    idle: Vec<Mutex<IdleStack>>,
    slots: Arc<Slots>,
    /// Connections opened since start, for tests and stats.
    pub opened: AtomicU64,
    /// Until when (coarse clock, ms) the server counts as down after a failed connect; 0 = up.
    down_until_ms: AtomicU64,
    /// Bumped by [`ServerPool::reconnect`]: connections opened before are closed when released.
    generation: AtomicU64,
    /// Set by [`ServerPool::retire`]: a reload took the server out of its pool's list.
    retired: AtomicBool,
    /// The caps its connections count under: the server's `max_db_connections`, shared with
    /// the database's other users' pools, and its login's `max_user_connections`, shared with
    /// the login's pools of other databases and servers.
    caps: ConnCaps,
    /// Checkouts whose connect is slow, waiting also for a connection given back.
    handoff: Handoff,
}

/// A checked-out connection, with the pool it came from (which holds its slot). Dropping it
/// closes the connection; [`Pooled::checkin`] returns it. Either way its slot goes back to
/// the pool (after the connection went to the idle list).
#[derive(Debug)]
pub struct Pooled {
    conn: Option<Box<ServerConn>>,
    pool: Arc<ServerPool>,
}

impl Pooled {
    /// The pool this connection belongs to.
    pub fn server(&self) -> &Arc<ServerPool> {
        &self.pool
    }

    /// The connection and its pool, borrowed together.
    pub fn split(&mut self) -> (&mut ServerConn, &ServerPool) {
        let conn = self
            .conn
            .as_mut()
            .expect("connection present until checkin");
        (conn, &self.pool)
    }

    /// Gives a slot its connection: a sound idle one, else a new one (once the caps leave
    /// room). On an error the slot stays held, without a connection.
    async fn fill(&mut self) -> Result<(), CheckoutError> {
        match self.pool.sound_idle() {
            Some(conn) => {
                self.conn = Some(conn);
                Ok(())
            }
            None => Box::pin(self.open_or_take_freed()).await,
        }
    }

    /// Opens a connection for this slot. When the connect is slow, the first of the pool's
    /// connections given back meanwhile is taken instead, and the connect goes on by itself
    /// (see `handoff`). On an error the slot stays held, without a connection.
    async fn open_or_take_freed(&mut self) -> Result<(), CheckoutError> {
        let pool = self.pool.clone();
        let mut open = Box::pin(pool.clone().open_under_cap());
        let mut waiter = tokio::select! {
            opened = &mut open => {
                self.conn = Some(opened?);
                return Ok(());
            }
            () = tokio::time::sleep(SLOW_CONNECT) => pool.handoff.wait(),
        };
        // One that went idle just before this checkout joined the queue is taken too.
        let first = match pool.sound_idle() {
            Some(idle) => Err(idle),
            None => tokio::select! {
                opened = &mut open => Ok(opened),
                handed = waiter.handed() => Err(handed),
            },
        };
        let conn = match (first, waiter.leave()) {
            (Ok(Ok(opened)), handed) => {
                if let Some(handed) = handed {
                    pool.put_back(handed);
                }
                opened
            }
            (Ok(Err(_)), Some(handed)) => handed,
            (Ok(Err(e)), None) => return Err(e),
            (Err(handed), also) => {
                if let Some(also) = also {
                    pool.put_back(also);
                }
                let joins = pool.clone();
                tokio::spawn(async move {
                    if let Ok(conn) = open.await {
                        joins.keep_if_room(conn);
                    }
                });
                handed
            }
        };
        self.conn = Some(conn);
        Ok(())
    }

    /// Returns the connection to its pool's idle list, or closes it if it has outlived
    /// `server_lifetime`, a cancel may still hit it, or its pool was retired or reconnected.
    pub fn checkin(mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.put_back(conn);
        }
    }
}

impl Deref for Pooled {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        self.conn
            .as_ref()
            .expect("connection present until checkin")
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut ServerConn {
        self.conn
            .as_mut()
            .expect("connection present until checkin")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            c.terminate();
        }
        self.pool.slots.give_back();
    }
}

impl ServerPool {
    pub fn new(
        name: String,
        role: Role,
        target: ServerTarget,
        size: u32,
        min_size: u32,
        timeouts: Arc<PoolTimeouts>,
        workers: usize,
    ) -> Self {
        ServerPool {
            name,
            role,
            target,
            size,
            min_size,
            timeouts,
            idle: (0..workers.max(1))
                .map(|_| Mutex::new(Vec::with_capacity(size as usize)))
                .collect(),
            slots: Arc::new(Slots::new(size)),
            opened: AtomicU64::new(0),
            down_until_ms: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            retired: AtomicBool::new(false),
            caps: ConnCaps::default(),
            handoff: Handoff::default(),
        }
    }

    /// Counts its connections under `caps`, which it shares with other pools (see
    /// `server_cap`). For a pool just made.
    pub fn capped_by(mut self, caps: ConnCaps) -> Self {
        self.caps = caps;
        self
    }

    /// Adds the time its checkouts wait to `total`, the (database, user) pool's, which all its
    /// servers share. For a pool just made: its slots are replaced by fresh ones.
    pub fn counting_waits_in(mut self, total: WaitTotal) -> Self {
        let mut slots = Slots::new(self.size);
        slots.count_waits_in(total);
        self.slots = Arc::new(slots);
        self
    }

    /// A pool for a server on 127.0.0.1:`port` that routing may choose but nothing has
    /// connected to yet: for benchmarks and tests of routing alone.
    #[doc(hidden)]
    pub fn detached(name: &str, role: Role, port: u16, login_retry: Duration) -> ServerPool {
        let timeouts = Arc::new(PoolTimeouts::from_general(&General {
            checkout_timeout_ms: 1000,
            connect_timeout_ms: 1000,
            idle_timeout_ms: 0,
            server_lifetime_ms: 0,
            server_login_retry_ms: login_retry.as_millis() as u64,
            ..General::default()
        }));
        let target = ServerTarget {
            host: "127.0.0.1".into(),
            port,
            addr: format!("127.0.0.1:{port}"),
            user: "u".into(),
            database: "d".into(),
            password: None,
            liveness: Default::default(),
        };
        ServerPool::new(name.into(), role, target, 20, 0, timeouts, 1)
    }

    /// Whether the server is healthy as far as the pool knows: its last connect did not fail
    /// within `server_login_retry_ms`. (One atomic load.)
    pub fn healthy(&self, now_ms: u64) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    fn shard(&self, i: usize) -> std::sync::MutexGuard<'_, IdleStack> {
        self.idle[i % self.idle.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// An idle connection: this worker's own first, then another worker's.
    fn pop_idle(&self) -> Option<Box<ServerConn>> {
        let n = self.idle.len();
        let home = crate::workers::current();
        (0..n).find_map(|i| self.shard(home + i).pop())
    }

    /// The coldest idle connection of any worker, to be closed to make room under the
    /// server's cap for another user's pool.
    pub(super) fn take_idle(&self) -> Option<Box<ServerConn>> {
        (0..self.idle.len()).find_map(|i| {
            let mut stack = self.shard(i);
            (!stack.is_empty()).then(|| stack.remove(0))
        })
    }

    /// The caps its connections count under.
    pub fn caps(&self) -> &ConnCaps {
        &self.caps
    }

    /// Hands out a connection: an idle one if any is sound, else a new one. Waits up to
    /// `checkout_timeout` for a free slot.
    pub async fn checkout(self: Arc<Self>) -> Result<Pooled, CheckoutError> {
        // The fast path is written out (no nested futures): it runs for every transaction.
        let taken = self.slots.take(self.timeouts.checkout()).await;
        let mut pooled = self.held(taken)?;
        match pooled.pool.sound_idle() {
            Some(conn) => pooled.conn = Some(conn),
            // Rare: boxed, so its large login state is not part of every session's future.
            None => Box::pin(pooled.open_or_take_freed()).await?,
        }
        Ok(pooled)
    }

    /// Waits up to `timeout` for a slot; the [`Pooled`] that holds it has no connection yet
    /// (see [`Pooled::fill`]).
    async fn slot(self: Arc<Self>, timeout: Duration) -> Result<Pooled, CheckoutError> {
        let taken = self.slots.take(timeout).await;
        self.held(taken)
    }

    /// The outcome of a wait for a slot: a [`Pooled`] without a connection that holds the
    /// slot (dropped so, it gives the slot back), or why there is none.
    #[inline]
    fn held(self: Arc<Self>, taken: Result<(), Expired>) -> Result<Pooled, CheckoutError> {
        if self.retired.load(Ordering::Relaxed) {
            if taken.is_ok() {
                self.slots.give_back();
            }
            return Err(CheckoutError::Retired);
        }
        if let Err(Expired(waited)) = taken {
            if self.slots.is_paused() {
                return Err(CheckoutError::Paused {
                    waited_ms: waited.as_millis(),
                });
            }
            return Err(CheckoutError::Exhausted {
                server: self.name.clone(),
                waited_ms: waited.as_millis(),
                size: self.size,
            });
        }
        Ok(Pooled {
            conn: None,
            pool: self,
        })
    }

    /// An idle connection that is still sound; broken ones found on the way are closed.
    #[inline]
    pub(super) fn sound_idle(&self) -> Option<Box<ServerConn>> {
        while let Some(mut conn) = self.pop_idle() {
            if conn.idle_check() && conn.generation == self.generation.load(Ordering::Relaxed) {
                return Some(conn);
            }
            tracing::debug!(server = %self.name, "discarding a broken idle server connection");
        }
        None
    }

    /// Opens a connection once the server's cap leaves room for it, or hands out one of the
    /// pool's own that went idle meanwhile (see `server_cap`).
    async fn open_under_cap(self: Arc<Self>) -> Result<Box<ServerConn>, CheckoutError> {
        let ticket = match self.caps.reserve(&self, self.timeouts.checkout()).await {
            Ok(Room::Ticket(t)) => t,
            Ok(Room::Idle(conn)) => return Ok(conn),
            Err((waited, CapKind::Database)) => {
                return Err(CheckoutError::Capped {
                    server: self.name.clone(),
                    waited_ms: waited.as_millis(),
                    max: self.caps.database.limit(),
                })
            }
            Err((waited, CapKind::User)) => {
                return Err(CheckoutError::UserCapped {
                    server: self.name.clone(),
                    user: self.target.user.clone(),
                    waited_ms: waited.as_millis(),
                    max: self.caps.user.limit(),
                })
            }
        };
        self.caps.join(&self);
        Ok(self.open(ticket).await?)
    }

    /// Fails the checkouts that have waited past `checkout_timeout` at `now`
    /// ([`crate::clock::now_ns`]); returns how many.
    pub fn expire_waiters(&self, now: u64) -> usize {
        self.slots.expire(now)
    }

    async fn open(&self, ticket: CapTicket) -> Result<Box<ServerConn>, ConnectError> {
        // Read before connecting: a `RECONNECT` meanwhile retires this connection too.
        let generation = self.generation.load(Ordering::Relaxed);
        match connect(
            &self.target,
            self.timeouts.connect(),
            self.timeouts.lifetime(),
        )
        .await
        {
            Ok(mut conn) => {
                conn.generation = generation;
                conn.cap_ticket = Some(ticket);
                self.opened.fetch_add(1, Ordering::Relaxed);
                self.down_until_ms.store(0, Ordering::Relaxed);
                Ok(conn)
            }
            Err(e) => {
                let now = crate::clock::read_ms();
                let until = now + self.timeouts.login_retry().as_millis() as u64;
                if self.down_until_ms.swap(until, Ordering::Relaxed) <= now {
                    tracing::warn!(server = %self.name, error = %e, "server marked unhealthy");
                }
                Err(e)
            }
        }
    }

    /// [`ServerPool::checkout`] for a client that no other server will do: a server that
    /// cannot be reached for a passing reason ([`ConnectError::passing`]: a restart, say) is
    /// tried again every [`RIDE_OUT_RETRY`] until `until`, so the client waits instead of
    /// failing. The client keeps its slot between tries: it keeps its place before the
    /// clients that came after it, and at most `pool_size` clients of a pool try at once.
    pub async fn checkout_riding_out(
        self: Arc<Self>,
        until: Instant,
    ) -> Result<Pooled, CheckoutError> {
        let left = || until.saturating_duration_since(Instant::now());
        let mut pooled = self.clone().slot(left()).await?;
        loop {
            let failed = match pooled.fill().await {
                Ok(()) => return Ok(pooled),
                // The slot held here counts as one in use: others are open beyond it.
                Err(CheckoutError::Connect(e))
                    if self.worth_waiting_after(&e, 1)
                        && Instant::now() + RIDE_OUT_RETRY < until =>
                {
                    tracing::debug!(server = %self.name, error = %e, "waiting for the server");
                    tokio::time::sleep(RIDE_OUT_RETRY).await;
                    e
                }
                Err(e) => return Err(e),
            };
            // A `PAUSE` or a reload meanwhile is met as a new checkout meets it: the slot goes
            // back, and the next take waits for `RESUME` or answers that the server is retired.
            // A client that waits only for the pool's other connections (its connect timed
            // out) gives its slot back too: a client that gives a connection back hands its
            // slot, with the connection, to the next in line, where this one now stands.
            let for_others = !failed.passing() && self.open_count() > 1;
            if self.slots.is_paused() || self.retired.load(Ordering::Relaxed) || for_others {
                drop(pooled);
                pooled = match self.clone().slot(left()).await {
                    Ok(p) => p,
                    // Out of time in line: the connect's failure says more than "exhausted".
                    Err(CheckoutError::Exhausted { .. }) => {
                        return Err(CheckoutError::Connect(failed))
                    }
                    Err(e) => return Err(e),
                };
            }
        }
    }

    /// Whether a client whose connect failed with `e` should wait and try again rather than
    /// fail: the failure may pass by itself ([`ConnectError::passing`]), or the connect timed
    /// out while the pool has other connections open (more than `held`, the slots the caller
    /// itself holds), one of which may come free meanwhile. A server slow to let one more
    /// connection in (a stalled postmaster, a full listen queue that drops the handshake)
    /// then costs that client a wait, not an error, as the others go on working.
    pub fn worth_waiting_after(&self, e: &ConnectError, held: usize) -> bool {
        e.passing() || (matches!(e, ConnectError::Timeout(_)) && self.open_count() > held)
    }

    /// Puts a connection back on the idle list (see [`Pooled::checkin`]).
    fn put_back(&self, conn: Box<ServerConn>) {
        let now = crate::clock::now_ms();
        if conn.retire_at_ms.is_some_and(|t| now >= t)
            || conn.key.cancel_pending()
            || conn.generation != self.generation.load(Ordering::Relaxed)
            || self.retired.load(Ordering::Relaxed)
        {
            conn.terminate();
            return;
        }
        // A checkout whose connect is slow takes it first (see `handoff`).
        let Some(mut conn) = self.handoff.offer(conn) else {
            return;
        };
        conn.idle_since_ms = now;
        let home = conn.home;
        self.shard(home).push(conn);
        self.caps.connection_idle();
        super::reaper::connection_idle();
    }

    /// A connection opened for a checkout that took one given back meanwhile (`handoff`):
    /// kept if the pool has room for it under `pool_size`, else closed.
    fn keep_if_room(&self, conn: Box<ServerConn>) {
        if self.open_count() < self.size as usize {
            self.put_back(conn);
        } else {
            conn.terminate();
        }
    }

    /// Closes idle connections past their idle timeout or lifetime; returns how many.
    pub fn reap(&self, now: u64) -> usize {
        let keep_min = self.min_size as usize;
        let mut idle_total = self.idle_count();
        let idle_timeout = self.timeouts.idle();
        let mut closed = Vec::new();
        for shard in 0..self.idle.len() {
            let mut idle = self.shard(shard);
            let mut i = 0;
            while i < idle.len() {
                let c = &idle[i];
                let retired = c.retire_at_ms.is_some_and(|t| now >= t);
                let idle_too_long = idle_timeout
                    .is_some_and(|t| now.saturating_sub(c.idle_since_ms) >= t.as_millis() as u64)
                    && idle_total > keep_min;
                if retired || idle_too_long {
                    closed.push(idle.swap_remove(i));
                    idle_total -= 1;
                } else {
                    i += 1;
                }
            }
        }
        let n = closed.len();
        closed.into_iter().for_each(|c| c.terminate());
        n
    }

    /// The earliest time after `now` at which an idle connection reaches its lifetime or idle
    /// timeout (clock milliseconds), if any: when the resting reaper looks again.
    pub fn next_reap(&self, now: u64) -> Option<u64> {
        let idle_timeout = self.timeouts.idle().map(|t| t.as_millis() as u64);
        let mut due = None::<u64>;
        for shard in 0..self.idle.len() {
            for c in self.shard(shard).iter() {
                let idle_due = idle_timeout.map(|t| c.idle_since_ms.saturating_add(t));
                for at in [c.retire_at_ms, idle_due].into_iter().flatten() {
                    if at > now {
                        due = Some(due.map_or(at, |d| d.min(at)));
                    }
                }
            }
        }
        due
    }

    /// Stops handing out connections (the admin console's `PAUSE`): checkouts wait in line
    /// until [`ServerPool::resume`]; connections in use stay with their clients.
    pub fn pause(&self) {
        self.slots.pause();
    }

    /// Serves the checkouts that waited during a pause, in order.
    pub fn resume(&self) {
        self.slots.resume();
    }

    /// Whether the pool is paused.
    pub fn is_paused(&self) -> bool {
        self.slots.is_paused()
    }

    /// Closes every idle connection; returns how many. A paused pool that no client uses any
    /// more holds no connection to its server then, which may restart or move meanwhile.
    pub fn close_idle(&self) -> usize {
        let mut closed = 0;
        for shard in 0..self.idle.len() {
            let conns = std::mem::take(&mut *self.shard(shard));
            closed += conns.len();
            conns.into_iter().for_each(|c| c.terminate());
        }
        closed
    }

    /// Replaces every connection (the admin console's `RECONNECT`): the idle ones are closed
    /// now, those in use when their client releases them; new ones are opened as needed.
    /// Returns how many idle ones were closed.
    pub fn reconnect(&self) -> usize {
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.close_idle()
    }

    /// Takes the server out of service after a reload removed or changed it: checkouts waiting
    /// for a slot are told to route again ([`CheckoutError::Retired`]), the idle connections
    /// close now, and those in use when released. A pause no longer holds its queue.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        self.slots.expire_all();
        self.slots.resume();
        self.reconnect();
    }

    /// Whether a reload took this server out of service.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// Whether `other` would be this pool again: the same server, reached the same way, as the
    /// same user, with the same limits. A reload keeps such a pool and its connections.
    pub fn same_as(&self, other: &ServerPool) -> bool {
        let (a, b) = (&self.target, &other.target);
        self.name == other.name
            && self.role == other.role
            && self.size == other.size
            && self.min_size == other.min_size
            && (&a.host, a.port, &a.addr, &a.user, &a.database, &a.password)
                == (&b.host, b.port, &b.addr, &b.user, &b.database, &b.password)
    }

    /// Opens connections until `min_pool_size` are open (idle or in use). False when some are
    /// still missing (no free slot, a cap, a failed connect): the reaper tries again soon.
    pub async fn fill_to_min(self: &Arc<Self>) -> bool {
        while self.open_count() < self.min_size as usize && !self.is_retired() {
            if !self.slots.try_take() {
                return false;
            }
            let mut pooled = Pooled {
                conn: None,
                pool: self.clone(),
            };
            let Some(ticket) = self.caps.try_reserve() else {
                tracing::debug!(server = %self.name, "min_pool_size not filled: max_db_connections or max_user_connections reached");
                return false;
            };
            self.caps.join(self);
            match self.open(ticket).await {
                Ok(conn) => {
                    pooled.conn = Some(conn);
                    pooled.checkin();
                }
                Err(e) => {
                    tracing::warn!(server = %self.name, error = %e, "cannot open min_pool_size connection");
                    return false;
                }
            }
        }
        true
    }

    /// Connections open now: idle plus checked out.
    pub fn open_count(&self) -> usize {
        self.idle_count() + self.in_use()
    }

    /// Connections checked out now (queries or transactions in flight).
    pub fn in_use(&self) -> usize {
        self.size.saturating_sub(self.slots.free()) as usize
    }

    /// Checkouts waiting for a free slot now.
    pub fn waiting(&self) -> usize {
        self.slots.waiting()
    }

    /// Idle connections now.
    pub fn idle_count(&self) -> usize {
        (0..self.idle.len()).map(|i| self.shard(i).len()).sum()
    }
}
