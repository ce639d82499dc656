//! Query cancellation.
//!
//! Each client gets a proxy-issued key (`BackendKeyData`). A `CancelRequest` quoting it is sent,
//! on a new connection, to the server the client is using at that moment, and to nobody else:
//! while a cancel is on its way, the server connection is not handed to another client
//! (see [`ServerKey::cancel_pending`]).

use crate::pool::UserPool;
use crate::server::ServerKey;
use crate::socket::Stream;
use atomic_waker::AtomicWaker;
use bytes::{BufMut, BytesMut};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A connected client as the rest of the proxy reaches it: which server connection it is using
/// right now (for cancels, and the admin console's `SHOW CLIENTS`), how to wake its session
/// (for shutdown and the console's `KILL`), and who it is once logged in.
#[derive(Debug, Default)]
pub struct CancelSlot {
    server: Mutex<Option<Arc<ServerKey>>>,
    /// The session's waker while it waits; shutdown and [`CancelSlot::kill`] wake it.
    pub wake: AtomicWaker,
    /// Set by the admin console's `KILL`: the session ends with FATAL `57P01` as soon as it
    /// wakes, whatever it waits for.
    killed: AtomicBool,
    /// Set by a cancel request for an admin console session (which has no server to forward
    /// it to): the command it waits on (`PAUSE`, `KILL`) stops waiting.
    interrupted: AtomicBool,
    /// Set once, at login.
    pub info: OnceLock<ClientInfo>,
}

/// Who a logged-in client is, for `SHOW CLIENTS`.
#[derive(Debug)]
pub struct ClientInfo {
    pub who: Who,
    /// `None` on the Unix socket.
    pub peer: Option<SocketAddr>,
    /// As the client gave it at login.
    pub application_name: String,
    /// When it logged in.
    pub since: Instant,
}

/// Where a client logged in.
#[derive(Debug)]
pub enum Who {
    /// A pool (its database and user).
    Pool(Arc<UserPool>),
    /// The admin console, as this user.
    Console(String),
}

impl ClientInfo {
    /// A client logging in now.
    pub fn new(who: Who, peer: Option<SocketAddr>, application_name: &str) -> Self {
        ClientInfo {
            who,
            peer,
            application_name: application_name.to_owned(),
            since: Instant::now(),
        }
    }
}

impl CancelSlot {
    /// The server connection the client is using now, if any.
    pub fn server(&self) -> Option<Arc<ServerKey>> {
        self.server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records the server the client just checked out.
    pub fn set(&self, key: &Arc<ServerKey>) {
        *self.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(key.clone());
    }

    /// Forgets the server; after this no new cancel can aim at it for this client.
    pub fn clear(&self) {
        self.server.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Ends the client's session (the admin console's `KILL`): it is told FATAL `57P01`, and a
    /// transaction it had open is rolled back with its server connection closed.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.wake.wake();
    }

    /// Whether [`CancelSlot::kill`] was called.
    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    /// Whether a cancel request came for this (console) session since the last call; clears
    /// it.
    pub fn take_interrupt(&self) -> bool {
        self.interrupted.swap(false, Ordering::AcqRel)
    }

    /// Claims the current server for a cancel; the caller must decrement
    /// `cancels_in_flight` when done.
    fn claim(&self) -> Option<Arc<ServerKey>> {
        let guard = self.server.lock().unwrap_or_else(|e| e.into_inner());
        let key = guard.as_ref()?.clone();
        key.cancels_in_flight.fetch_add(1, Ordering::AcqRel);
        Some(key)
    }
}

/// The clients that can be cancelled, by proxy-issued pid.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    clients: Mutex<HashMap<i32, (i32, Arc<CancelSlot>)>>,
    next_pid: AtomicI32,
}

/// Removes a client from the registry when its session ends.
pub struct Registration<'a> {
    registry: &'a CancelRegistry,
    pub pid: i32,
    pub secret: i32,
    pub slot: Arc<CancelSlot>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.registry
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.pid);
    }
}

impl CancelRegistry {
    /// Issues a new unique key for a client.
    pub fn register(&self) -> Registration<'_> {
        let pid = self
            .next_pid
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1)
            & 0x7fff_ffff;
        let secret: i32 = rand::random();
        let slot = Arc::new(CancelSlot::default());
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pid, (secret, slot.clone()));
        Registration {
            registry: self,
            pid,
            secret,
            slot,
        }
    }

    /// Every connected client: its proxy-issued pid and slot, by pid.
    pub fn clients(&self) -> Vec<(i32, Arc<CancelSlot>)> {
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = clients
            .iter()
            .map(|(pid, (_, slot))| (*pid, slot.clone()))
            .collect();
        drop(clients);
        all.sort_by_key(|(pid, _)| *pid);
        all
    }

    /// Wakes every session (after a shutdown phase change).
    pub fn wake_all(&self) {
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        for (_, slot) in clients.values() {
            slot.wake.wake();
        }
    }

    /// Forwards a client's cancel request to the server running its query, if the key is valid
    /// and the client is using a server. Waits until the server has taken it (or `timeout`).
    pub async fn cancel(&self, pid: i32, secret: i32, timeout: Duration) {
        let slot = {
            let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
            match clients.get(&pid) {
                Some((s, slot)) if *s == secret => slot.clone(),
                _ => {
                    tracing::debug!(pid, "cancel request with an unknown key ignored");
                    return;
                }
            }
        };
        let Some(key) = slot.claim() else {
            let console = slot
                .info
                .get()
                .is_some_and(|i| matches!(i.who, Who::Console(_)));
            if console {
                slot.interrupted.store(true, Ordering::Release);
                slot.wake.wake();
            }
            return;
        };
        if tokio::time::timeout(timeout, send_cancel(&key))
            .await
            .is_err()
        {
            tracing::warn!(server = %key.addr, "cancel request timed out");
        }
        key.cancels_in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Sends a CancelRequest for `key` and waits for the server to close the connection, which it
/// does once the cancel signal has been delivered.
pub async fn send_cancel(key: &ServerKey) {
    let mut msg = BytesMut::with_capacity(16);
    msg.put_i32(16);
    msg.put_i32(80877102);
    msg.put_i32(key.pid);
    msg.put_i32(key.secret);
    match Stream::connect_endpoint(&key.addr).await {
        Ok(mut s) => {
            if s.write_all(&msg).await.is_ok() {
                let mut sink = [0u8; 64];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            }
        }
        Err(e) => tracing::warn!(server = %key.addr, error = %e, "cannot forward cancel request"),
    }
}
