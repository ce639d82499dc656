//! Caps on the server connections that several server pools hold together:
//! `pools.<db>.max_db_connections`, what all the users of a database hold to one server (so
//! that the pools of many users cannot exhaust a server's `max_connections` between them;
//! PgBouncer's, which Switchyard applies per server since a pool may have several), and
//! `max_user_connections`, what one server login holds across all databases and servers
//! (PgBouncer's; PostgreSQL's `CONNECTION LIMIT` of a role counts the same way).
//!
//! Every server connection carries a [`CapTicket`] of both its caps from before it is opened
//! until it closes, however it closes (the ticket's `Drop`), so the counts cannot drift.
//! A checkout that has to open a connection while a cap is reached closes an idle connection
//! of another pool under that cap, as PgBouncer evicts one, and takes its place once the
//! server has closed its end (so PostgreSQL, which counts a backend until it exits, never sees
//! more than the cap); or it waits for a connection to close or go idle, up to
//! `checkout_timeout_ms`.
//!
//! None of this is on the query path: a ticket is taken when a connection opens, and a
//! checkin reads two counters to see whether anybody waits.

use super::server_pool::ServerPool;
use crate::server::ServerConn;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Server connections that several server pools hold together, and their cap.
#[derive(Debug, Default)]
pub struct ServerCap {
    /// The cap; 0: none (connections are still counted, so a reload that sets one starts
    /// from the true count).
    limit: AtomicU32,
    /// Connections open or being opened (tickets alive).
    open: AtomicU32,
    /// Checkouts waiting for room under the cap.
    waiting: AtomicU32,
    /// Woken when a connection closes or goes idle while checkouts wait, and when the cap
    /// changes.
    changed: Notify,
    /// The server pools whose idle connections may be closed to make room.
    members: Mutex<Vec<Weak<ServerPool>>>,
}

/// Which of a connection's two caps left no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapKind {
    /// `max_db_connections`: the database's users on this server.
    Database,
    /// `max_user_connections`: the server login across databases and servers.
    User,
}

/// What a checkout waiting under the caps gets.
#[derive(Debug)]
pub enum Room {
    /// A place for a new connection.
    Ticket(CapTicket),
    /// One of its own pool's connections, which went idle while it waited.
    Idle(Box<ServerConn>),
}

/// The two caps a server pool's connections count under: its database's on its server, and
/// its server login's.
#[derive(Debug, Clone, Default)]
pub struct ConnCaps {
    pub database: Arc<ServerCap>,
    pub user: Arc<ServerCap>,
}

/// One connection's place under both its caps, given back when dropped.
#[derive(Debug)]
pub struct CapTicket(ConnCaps);

impl CapTicket {
    /// Whether either cap has a limit now.
    pub fn limited(&self) -> bool {
        self.0.database.limit() > 0 || self.0.user.limit() > 0
    }
}

impl Drop for CapTicket {
    fn drop(&mut self) {
        self.0.database.give_back();
        self.0.user.give_back();
    }
}

/// Keeps `waiting` counted while a checkout waits, also when its future is dropped.
struct Waiting<'a>(&'a ServerCap);

impl<'a> Waiting<'a> {
    fn on(cap: &'a ServerCap) -> Self {
        cap.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(cap)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ServerCap {
    /// A cap of `limit` connections (0: none).
    pub fn new(limit: u32) -> Self {
        let cap = ServerCap::default();
        cap.limit.store(limit, Ordering::Relaxed);
        cap
    }

    /// The cap (0: none).
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Connections open (or being opened) under the cap.
    pub fn open(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }

    /// Whether the cap is reached.
    fn full(&self) -> bool {
        let limit = self.limit.load(Ordering::SeqCst);
        limit > 0 && self.open.load(Ordering::SeqCst) >= limit
    }

    /// Changes the cap (a reload); checkouts waiting look again.
    pub fn set_limit(&self, limit: u32) {
        if self.limit.swap(limit, Ordering::SeqCst) != limit {
            self.changed.notify_waiters();
        }
    }

    /// Lists `pool` among those whose idle connections can make room (once; done when a pool
    /// opens a connection, before which it has none to give).
    pub fn join(&self, pool: &Arc<ServerPool>) {
        let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        members.retain(|m| m.strong_count() > 0);
        if !members
            .iter()
            .any(|m| std::ptr::eq(m.as_ptr(), Arc::as_ptr(pool)))
        {
            members.push(Arc::downgrade(pool));
        }
    }

    /// Counts one more connection if the cap leaves room now.
    fn take(&self) -> bool {
        let limit = self.limit.load(Ordering::SeqCst);
        self.open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (limit == 0 || n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Counts one connection less, and wakes the checkouts waiting for room.
    fn give_back(&self) {
        // SeqCst with `reserve`'s: either this sees the waiter, or the waiter sees the room.
        self.open.fetch_sub(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.changed.notify_waiters();
        }
    }

    /// Takes an idle connection of a member other than `own`, to be closed to make room.
    fn evict_idle(&self, own: &ServerPool, kind: CapKind) -> Option<Box<ServerConn>> {
        let members: Vec<Arc<ServerPool>> = {
            let m = self.members.lock().unwrap_or_else(|e| e.into_inner());
            m.iter().filter_map(Weak::upgrade).collect()
        };
        for pool in members.iter().filter(|p| !std::ptr::eq(&***p, own)) {
            if let Some(conn) = pool.take_idle() {
                tracing::debug!(
                    server = %pool.name,
                    cap = ?kind,
                    "closing an idle server connection to make room under the cap"
                );
                return Some(conn);
            }
        }
        None
    }

    /// A member's connection went idle: a waiting checkout may close it.
    #[inline]
    fn connection_idle(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.changed.notify_waiters();
        }
    }
}

impl ConnCaps {
    /// A ticket if both caps leave room now.
    pub fn try_reserve(&self) -> Option<CapTicket> {
        if !self.database.take() {
            return None;
        }
        if !self.user.take() {
            self.database.give_back();
            return None;
        }
        Some(CapTicket(self.clone()))
    }

    /// Lists `pool` under both caps as one whose idle connections can make room.
    pub fn join(&self, pool: &Arc<ServerPool>) {
        self.database.join(pool);
        self.user.join(pool);
    }

    /// A connection of a member went idle: a checkout waiting under either cap may take it.
    #[inline]
    pub fn connection_idle(&self) {
        self.database.connection_idle();
        self.user.connection_idle();
    }

    /// The cap that is reached now, if one is (the database's first).
    fn full(&self) -> Option<(&ServerCap, CapKind)> {
        if self.database.full() {
            Some((&self.database, CapKind::Database))
        } else if self.user.full() {
            Some((&self.user, CapKind::User))
        } else {
            None
        }
    }

    /// Room for a checkout of `own` that found no idle connection: a ticket at once if both
    /// caps leave room; else `own`'s connection that went idle meanwhile; else, for the cap
    /// that is reached, another member's idle connection is closed and its place taken once
    /// the server has let it go; else, when a connection closes or goes idle, the same again.
    /// Gives up after `timeout`, returning how long it waited and which cap was reached.
    pub async fn reserve(
        &self,
        own: &ServerPool,
        timeout: Duration,
    ) -> Result<Room, (Duration, CapKind)> {
        if let Some(t) = self.try_reserve() {
            return Ok(Room::Ticket(t));
        }
        let started = Instant::now();
        let _waiting = (Waiting::on(&self.database), Waiting::on(&self.user));
        loop {
            // Only the cap that is reached can make room; a connection of `own` going idle
            // wakes both of its caps. (Listening to the other cap too would spin: a failed
            // `try_reserve` gives back the place it took there, which wakes its waiters, this
            // checkout among them. That give-back must wake: another checkout may have found
            // no room because of the place held for that moment.)
            let Some((full, kind)) = self.full() else {
                if let Some(t) = self.try_reserve() {
                    return Ok(Room::Ticket(t));
                }
                tokio::task::yield_now().await;
                continue;
            };
            let changed = full.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(t) = self.try_reserve() {
                return Ok(Room::Ticket(t));
            }
            if let Some(conn) = own.sound_idle() {
                return Ok(Room::Idle(conn));
            }
            if let Some(idle) = full.evict_idle(own, kind) {
                // Its tickets are given back once the server has let it go; then the room
                // is this checkout's (tried again at once, before any other await).
                idle.close().await;
                continue;
            }
            let left = timeout.saturating_sub(started.elapsed());
            if tokio::time::timeout(left, changed).await.is_err() {
                return Err((started.elapsed(), kind));
            }
        }
    }
}

/// Caps by key, so that the pools that share one find it, also those a reload makes: the
/// databases' caps by (database as clients name it, server address), the server logins'
/// caps by login.
#[derive(Debug)]
pub struct Caps<K>(Mutex<HashMap<K, Arc<ServerCap>>>);

impl<K> Default for Caps<K> {
    fn default() -> Self {
        Caps(Mutex::new(HashMap::new()))
    }
}

impl<K: Hash + Eq> Caps<K> {
    /// The cap for `key` (a new one has no limit until [`Caps::set_limits`]).
    pub fn of(&self, key: K) -> Arc<ServerCap> {
        let mut caps = self.0.lock().unwrap_or_else(|e| e.into_inner());
        caps.entry(key).or_default().clone()
    }

    /// Sets each cap's limit to `limit(key)` (0: none): once the config that says so is
    /// accepted, at start or at a reload.
    pub fn set_limits(&self, limit: impl Fn(&K) -> u32) {
        let caps = self.0.lock().unwrap_or_else(|e| e.into_inner());
        caps.iter().for_each(|(k, cap)| cap.set_limit(limit(k)));
    }
}

/// The caps of every pool: one per database and server, one per server login.
#[derive(Debug, Default)]
pub struct AllCaps {
    databases: Caps<(String, String)>,
    users: Caps<String>,
}

impl AllCaps {
    /// The caps of a pool of `database` (as clients name it) on the server at `addr`, logged
    /// in as `login`.
    pub fn of(&self, database: &str, addr: &str, login: &str) -> ConnCaps {
        ConnCaps {
            database: self.databases.of((database.to_owned(), addr.to_owned())),
            user: self.users.of(login.to_owned()),
        }
    }

    /// Sets every cap to what `config` says: at start, and at each reload it accepts.
    pub fn apply(&self, config: &crate::config::Config) {
        self.databases.set_limits(|(db, _)| {
            config
                .pools
                .get(db)
                .map_or(0, |pool| pool.max_db_connections)
        });
        self.users
            .set_limits(|login| config.max_user_connections(login));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(database: u32, user: u32) -> ConnCaps {
        ConnCaps {
            database: Arc::new(ServerCap::new(database)),
            user: Arc::new(ServerCap::new(user)),
        }
    }

    #[test]
    fn tickets_count_open_connections_up_to_the_cap() {
        let caps = caps(2, 0);
        let a = caps.try_reserve().expect("room for one");
        let b = caps.try_reserve().expect("room for two");
        assert!(caps.try_reserve().is_none(), "the cap is 2");
        assert_eq!(caps.database.open(), 2);
        drop(a);
        assert_eq!(caps.database.open(), 1);
        let _c = caps.try_reserve().expect("a closed connection makes room");
        caps.database.set_limit(0);
        let _d = caps.try_reserve().expect("0 is no cap");
        assert_eq!(caps.database.open(), 3);
        drop(b);
        assert_eq!(caps.database.open(), 2);
    }

    #[test]
    fn a_ticket_needs_room_under_both_caps_and_a_refusal_counts_nothing() {
        let user = Arc::new(ServerCap::new(2));
        let app = ConnCaps {
            database: Arc::new(ServerCap::new(5)),
            user: user.clone(),
        };
        let other = ConnCaps {
            database: Arc::new(ServerCap::new(5)),
            user: user.clone(),
        };
        let a = app.try_reserve().unwrap();
        let _b = other.try_reserve().unwrap();
        assert!(
            app.try_reserve().is_none(),
            "the login's cap of 2 spans databases"
        );
        assert_eq!(
            app.database.open(),
            1,
            "the refused ticket gave its place back"
        );
        assert_eq!(app.full().map(|(_, k)| k), Some(CapKind::User));
        drop(a);
        assert_eq!((app.database.open(), user.open()), (0, 1));
        assert!(app.try_reserve().is_some());
    }

    #[test]
    fn the_pools_that_share_a_key_share_its_cap() {
        let caps = Caps::default();
        let a = caps.of(("app".to_owned(), "10.0.0.1:5432".to_owned()));
        let b = caps.of(("app".to_owned(), "10.0.0.1:5432".to_owned()));
        assert!(Arc::ptr_eq(&a, &b));
        let c = caps.of(("app".to_owned(), "10.0.0.2:5432".to_owned()));
        let other = caps.of(("other".to_owned(), "10.0.0.1:5432".to_owned()));
        assert!(!Arc::ptr_eq(&a, &c) && !Arc::ptr_eq(&a, &other));
        assert_eq!(a.limit(), 0, "no cap until set");
        caps.set_limits(|(db, _)| if db == "app" { 7 } else { 0 });
        assert_eq!((a.limit(), c.limit(), other.limit()), (7, 7, 0));
    }

    #[tokio::test]
    async fn a_waiting_reservation_gets_the_room_a_closed_connection_leaves() {
        let caps = caps(0, 1);
        let held = caps.try_reserve().unwrap();
        let own = ServerPool::detached("s", crate::config::Role::Primary, 1, Duration::ZERO);
        let short = caps.reserve(&own, Duration::from_millis(50)).await;
        assert_eq!(short.err().map(|(_, k)| k), Some(CapKind::User));
        let waiter = {
            let caps = caps.clone();
            tokio::spawn(async move {
                let own =
                    ServerPool::detached("s", crate::config::Role::Primary, 1, Duration::ZERO);
                caps.reserve(&own, Duration::from_secs(5)).await.is_ok()
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        assert!(waiter.await.unwrap(), "woken by the close");
        assert_eq!(caps.user.waiting.load(Ordering::SeqCst), 0);
        assert_eq!(caps.database.waiting.load(Ordering::SeqCst), 0);
    }
}
