//! The connections of one (database, user) to one server.
//!
//! A semaphore with `pool_size` permits bounds the connections checked out; idle connections wait
//! on a LIFO stack, so the warmest one is reused first and the coldest can time out. The fast
//! path of a checkout is one `try_acquire` and one uncontended mutex: no allocation, no syscall.

use crate::config::{General, Role};
use crate::server::{connect, ConnectError, ServerConn, ServerTarget};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The timeouts that govern every pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolTimeouts {
    pub checkout: Duration,
    pub connect: Duration,
    pub idle: Option<Duration>,
    pub lifetime: Option<Duration>,
}

impl PoolTimeouts {
    pub fn from_general(g: &General) -> Self {
        let opt = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
        PoolTimeouts {
            checkout: Duration::from_millis(g.checkout_timeout_ms),
            connect: Duration::from_millis(g.connect_timeout_ms),
            idle: opt(g.idle_timeout_ms),
            lifetime: opt(g.server_lifetime_ms),
        }
    }
}

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
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

/// Connections to one server for one (database, user).
#[derive(Debug)]
pub struct ServerPool {
    /// A name for logs and routing: the configured name or `host:port`.
    pub name: String,
    pub role: Role,
    pub target: ServerTarget,
    pub size: u32,
    pub min_size: u32,
    timeouts: PoolTimeouts,
    idle: Mutex<Vec<ServerConn>>,
    permits: Arc<Semaphore>,
    /// Connections opened since start, for tests and stats.
    pub opened: AtomicU64,
}

/// A checked-out connection. Dropping it closes the connection; [`ServerPool::checkin`] returns it.
#[derive(Debug)]
pub struct Pooled {
    conn: Option<ServerConn>,
    _permit: OwnedSemaphorePermit,
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
    }
}

impl ServerPool {
    pub fn new(
        name: String,
        role: Role,
        target: ServerTarget,
        size: u32,
        min_size: u32,
        timeouts: PoolTimeouts,
    ) -> Self {
        ServerPool {
            name,
            role,
            target,
            size,
            min_size,
            timeouts,
            idle: Mutex::new(Vec::with_capacity(size as usize)),
            permits: Arc::new(Semaphore::new(size as usize)),
            opened: AtomicU64::new(0),
        }
    }

    fn idle_list(&self) -> std::sync::MutexGuard<'_, Vec<ServerConn>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands out a connection: an idle one if any is sound, else a new one. Waits up to
    /// `checkout_timeout` for a free slot.
    pub async fn checkout(&self) -> Result<Pooled, CheckoutError> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let started = Instant::now();
                match tokio::time::timeout(
                    self.timeouts.checkout,
                    self.permits.clone().acquire_owned(),
                )
                .await
                {
                    Ok(Ok(p)) => p,
                    _ => {
                        return Err(CheckoutError::Exhausted {
                            server: self.name.clone(),
                            waited_ms: started.elapsed().as_millis(),
                            size: self.size,
                        })
                    }
                }
            }
        };
        while let Some(mut conn) = self.idle_list().pop() {
            if conn.idle_check() {
                return Ok(Pooled {
                    conn: Some(conn),
                    _permit: permit,
                });
            }
            tracing::debug!(server = %self.name, "discarding a broken idle server connection");
        }
        let conn = self.open().await?;
        Ok(Pooled {
            conn: Some(conn),
            _permit: permit,
        })
    }

    async fn open(&self) -> Result<ServerConn, ConnectError> {
        let conn = connect(&self.target, self.timeouts.connect, self.timeouts.lifetime).await?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(conn)
    }

    /// Returns a connection to the idle list, or closes it if it has outlived `server_lifetime`
    /// or a cancel may still hit it.
    pub fn checkin(&self, mut pooled: Pooled) {
        let Some(mut conn) = pooled.conn.take() else {
            return;
        };
        let now = Instant::now();
        if conn.retire_at.is_some_and(|t| now >= t) || conn.key.cancel_pending() {
            conn.terminate();
            return;
        }
        conn.idle_since = now;
        self.idle_list().push(conn);
    }

    /// Closes idle connections past their idle timeout or lifetime; returns how many.
    pub fn reap(&self, now: Instant) -> usize {
        let mut closed = Vec::new();
        {
            let mut idle = self.idle_list();
            let keep_min = self.min_size as usize;
            let mut i = 0;
            while i < idle.len() {
                let c = &idle[i];
                let retired = c.retire_at.is_some_and(|t| now >= t);
                let idle_too_long = self
                    .timeouts
                    .idle
                    .is_some_and(|t| now.duration_since(c.idle_since) >= t)
                    && idle.len() > keep_min;
                if retired || idle_too_long {
                    closed.push(idle.swap_remove(i));
                } else {
                    i += 1;
                }
            }
        }
        let n = closed.len();
        closed.into_iter().for_each(ServerConn::terminate);
        n
    }

    /// Opens connections until `min_pool_size` are open (idle or in use).
    pub async fn fill_to_min(&self) {
        while self.open_count() < self.min_size as usize {
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                return;
            };
            match self.open().await {
                Ok(conn) => self.checkin(Pooled {
                    conn: Some(conn),
                    _permit: permit,
                }),
                Err(e) => {
                    tracing::warn!(server = %self.name, error = %e, "cannot open min_pool_size connection");
                    return;
                }
            }
        }
    }

    /// Connections open now: idle plus checked out.
    pub fn open_count(&self) -> usize {
        self.idle_list().len() + (self.size as usize - self.permits.available_permits())
    }

    /// Idle connections now.
    pub fn idle_count(&self) -> usize {
        self.idle_list().len()
    }
}
