//! `pools.<db>.max_db_connections`: a cap on the connections all the users of a database hold
//! to one server together, so that the pools of many users cannot exhaust a server's
//! `max_connections` between them (PgBouncer's `max_db_connections`; with several servers
//! per database, Switchyard caps each server apart).
//!
//! Every server connection carries a [`CapTicket`] of its server's cap from before it is
//! opened until it closes, however it closes (the ticket's `Drop`), so the count cannot drift.
//! A checkout that has to open a connection while the cap is reached closes an idle connection
//! of another user's pool to the same server, as PgBouncer evicts one, and takes over its
//! ticket once the server has closed its end (so PostgreSQL, which counts a backend until it
//! exits, never sees more than the cap); or it waits for a connection to close or go idle, up
//! to `checkout_timeout_ms`.
//!
//! None of this is on the query path: a ticket is taken when a connection opens, and a
//! checkin reads one counter to see whether anybody waits.

use super::server_pool::ServerPool;
use crate::server::ServerConn;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The connections of one database's users to one server, and their cap.
#[derive(Debug, Default)]
pub struct ServerCap {
    /// `max_db_connections`; 0: no cap (connections are still counted, so a reload that sets
    /// one starts from the true count).
    limit: AtomicU32,
    /// Connections open or being opened (tickets alive).
    open: AtomicU32,
    /// Checkouts waiting for room under the cap.
    waiting: AtomicU32,
    /// Woken when a connection closes or goes idle while checkouts wait, and when the cap
    /// changes.
    changed: Notify,
    /// The server pools (one per user) whose idle connections may be closed to make room.
    members: Mutex<Vec<Weak<ServerPool>>>,
}

/// What a checkout waiting under the cap gets.
#[derive(Debug)]
pub enum Room {
    /// A place for a new connection.
    Ticket(CapTicket),
    /// One of its own pool's connections, which went idle while it waited.
    Idle(Box<ServerConn>),
}

/// One connection's place under its server's cap, given back when dropped.
#[derive(Debug)]
pub struct CapTicket(Arc<ServerCap>);

impl CapTicket {
    /// Whether the cap has a limit now.
    pub fn limited(&self) -> bool {
        self.0.limit() > 0
    }
}

impl Drop for CapTicket {
    fn drop(&mut self) {
        let cap = &self.0;
        // SeqCst with `reserve`'s: either this sees the waiter, or the waiter sees the room.
        cap.open.fetch_sub(1, Ordering::SeqCst);
        if cap.waiting.load(Ordering::SeqCst) > 0 {
            cap.changed.notify_waiters();
        }
    }
}

/// Keeps `waiting` counted while a checkout waits, also when its future is dropped.
struct Waiting<'a>(&'a ServerCap);

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

    /// Connections open (or being opened) to the server by all the database's users.
    pub fn open(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
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

    /// A ticket if the cap leaves room now.
    pub fn try_reserve(self: &Arc<Self>) -> Option<CapTicket> {
        let limit = self.limit.load(Ordering::SeqCst);
        self.open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (limit == 0 || n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| CapTicket(self.clone()))
    }

    /// Room for a checkout of `own` that found no idle connection: a ticket at once if the
    /// cap leaves room; else `own`'s connection that went idle meanwhile; else the ticket of
    /// another member's idle connection, closed for it; else, when one closes or goes idle,
    /// the same again. Gives up after `timeout`, returning how long it waited.
    pub async fn reserve(
        self: &Arc<Self>,
        own: &ServerPool,
        timeout: Duration,
    ) -> Result<Room, Duration> {
        if let Some(t) = self.try_reserve() {
            return Ok(Room::Ticket(t));
        }
        let started = Instant::now();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(self);
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(t) = self.try_reserve() {
                return Ok(Room::Ticket(t));
            }
            if let Some(conn) = own.sound_idle() {
                return Ok(Room::Idle(conn));
            }
            if let Some(mut idle) = self.evict_idle(own) {
                // Its place becomes this checkout's once the server has let it go.
                let ticket = idle.cap_ticket.take();
                idle.close().await;
                match ticket {
                    Some(t) => return Ok(Room::Ticket(t)),
                    None => continue,
                }
            }
            let left = timeout.saturating_sub(started.elapsed());
            if tokio::time::timeout(left, changed).await.is_err() {
                return Err(started.elapsed());
            }
        }
    }

    /// Takes an idle connection of another member, to be closed to make room.
    fn evict_idle(&self, own: &ServerPool) -> Option<Box<ServerConn>> {
        let members: Vec<Arc<ServerPool>> = {
            let m = self.members.lock().unwrap_or_else(|e| e.into_inner());
            m.iter().filter_map(Weak::upgrade).collect()
        };
        for pool in members.iter().filter(|p| !std::ptr::eq(&***p, own)) {
            if let Some(conn) = pool.take_idle() {
                tracing::debug!(
                    server = %pool.name,
                    "closing an idle server connection to make room under max_db_connections"
                );
                return Some(conn);
            }
        }
        None
    }

    /// A member's connection went idle: a waiting checkout may close it.
    #[inline]
    pub fn connection_idle(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.changed.notify_waiters();
        }
    }
}

/// The caps of all servers, by (database as clients name it, server address): the pools of a
/// database's users share one per server, and a reload finds them again.
#[derive(Debug, Default)]
pub struct Caps(Mutex<HashMap<(String, String), Arc<ServerCap>>>);

impl Caps {
    /// The cap of `database`'s connections to the server at `addr` (a new one has no limit
    /// until [`Caps::set_limit`]).
    pub fn of(&self, database: &str, addr: &str) -> Arc<ServerCap> {
        let mut caps = self.0.lock().unwrap_or_else(|e| e.into_inner());
        caps.entry((database.to_owned(), addr.to_owned()))
            .or_default()
            .clone()
    }

    /// Sets the cap of each of `database`'s servers to `limit` (0: none): once the config
    /// that says so is accepted, at start or at a reload.
    pub fn set_limit(&self, database: &str, limit: u32) {
        let caps = self.0.lock().unwrap_or_else(|e| e.into_inner());
        caps.iter()
            .filter(|((db, _), _)| db == database)
            .for_each(|(_, cap)| cap.set_limit(limit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_count_open_connections_up_to_the_cap() {
        let cap = Arc::new(ServerCap::new(2));
        let a = cap.try_reserve().expect("room for one");
        let b = cap.try_reserve().expect("room for two");
        assert!(cap.try_reserve().is_none(), "the cap is 2");
        assert_eq!(cap.open(), 2);
        drop(a);
        assert_eq!(cap.open(), 1);
        let _c = cap.try_reserve().expect("a closed connection makes room");
        cap.set_limit(0);
        let _d = cap.try_reserve().expect("0 is no cap");
        assert_eq!(cap.open(), 3);
        drop(b);
        assert_eq!(cap.open(), 2);
    }

    #[test]
    fn the_pools_of_a_database_share_a_cap_per_server() {
        let caps = Caps::default();
        let a = caps.of("app", "10.0.0.1:5432");
        let b = caps.of("app", "10.0.0.1:5432");
        assert!(Arc::ptr_eq(&a, &b));
        let c = caps.of("app", "10.0.0.2:5432");
        let other = caps.of("other", "10.0.0.1:5432");
        assert!(!Arc::ptr_eq(&a, &c) && !Arc::ptr_eq(&a, &other));
        assert_eq!(a.limit(), 0, "no cap until set");
        caps.set_limit("app", 7);
        assert_eq!((a.limit(), c.limit(), other.limit()), (7, 7, 0));
    }

    #[tokio::test]
    async fn a_waiting_reservation_gets_the_room_a_closed_connection_leaves() {
        let cap = Arc::new(ServerCap::new(1));
        let held = cap.try_reserve().unwrap();
        let own = ServerPool::detached("s", crate::config::Role::Primary, 1, Duration::ZERO);
        let short = cap.reserve(&own, Duration::from_millis(50)).await;
        assert!(short.is_err(), "nothing closed within 50 ms");
        let waiter = {
            let cap = cap.clone();
            tokio::spawn(async move {
                let own =
                    ServerPool::detached("s", crate::config::Role::Primary, 1, Duration::ZERO);
                cap.reserve(&own, Duration::from_secs(5)).await.is_ok()
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        assert!(waiter.await.unwrap(), "woken by the close");
        assert_eq!(cap.waiting.load(Ordering::SeqCst), 0);
    }
}
