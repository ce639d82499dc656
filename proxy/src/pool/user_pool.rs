//! Everything one (database, user) pair shares: how its clients log in, its servers, its router,
//! and the session parameters a fresh server connection reports.

use crate::auth::{AuthMethod, ClientSecret};
use crate::config::{PoolConfig, PoolMode, Role, UserConfig};
use crate::pool::{PoolStats, PoolTimeouts, ServerPool};
use crate::router::{Route, Router, SwappableRouter};
use crate::server::{ParamList, ServerTarget};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// The pool of one (database, user).
pub struct UserPool {
    pub database: String,
    pub user: String,
    pub mode: PoolMode,
    pub reset_query: String,
    /// Transaction mode: session state follows the client (`track_session_state`).
    pub track_session_state: bool,
    pub auth: AuthMethod,
    pub secret: Option<ClientSecret>,
    /// One pool per configured server, in config order (the router's backend indexes).
    pub servers: Arc<Vec<ServerPool>>,
    primary: usize,
    /// Its routing policies, replaced by a reload while clients are served.
    pub router: SwappableRouter,
    /// ParameterStatus of a fresh server connection, learnt from the first one.
    defaults: OnceLock<ParamList>,
    next_replica: AtomicUsize,
    /// Clients logged in to this pool now (see [`UserPool::enter`]).
    clients: AtomicUsize,
    /// Requests, transactions and waits, for the admin console's `SHOW STATS`.
    pub stats: PoolStats,
}

/// A client's place in its pool's count, given back when the client leaves.
pub struct PoolClient(Arc<UserPool>);

impl Drop for PoolClient {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for UserPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserPool")
            .field("database", &self.database)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl UserPool {
    /// Builds the pool from validated config.
    pub fn new(
        database: &str,
        user: &str,
        pool: &PoolConfig,
        u: &UserConfig,
        timeouts: PoolTimeouts,
        workers: usize,
        make_router: impl FnOnce(&Arc<Vec<ServerPool>>) -> Arc<dyn Router>,
    ) -> Self {
        let (auth, secret) = u.client_auth().expect("config was validated");
        let size = u.pool_size.unwrap_or(pool.pool_size);
        let min_size = u.min_pool_size.unwrap_or(pool.min_pool_size);
        let server_user = u.server_user.clone().unwrap_or_else(|| user.to_owned());
        let server_password = u.server_password();
        let servers: Vec<ServerPool> = pool
            .servers
            .iter()
            .map(|s| {
                let addr = if s.host.starts_with('/') {
                    crate::socket::socket_path(&s.host, s.port)
                        .display()
                        .to_string()
                } else {
                    format!("{}:{}", s.host, s.port)
                };
                let target = ServerTarget {
                    host: s.host.clone(),
                    port: s.port,
                    addr: addr.clone(),
                    user: server_user.clone(),
                    database: pool
                        .server_database
                        .clone()
                        .unwrap_or_else(|| database.to_owned()),
                    password: server_password.clone(),
                    liveness: timeouts.liveness,
                };
                ServerPool::new(
                    s.name.clone().unwrap_or(addr),
                    s.role,
                    target,
                    size,
                    min_size,
                    timeouts,
                    workers,
                )
            })
            .collect();
        let servers = Arc::new(servers);
        let router = SwappableRouter::new(make_router(&servers));
        let primary = servers
            .iter()
            .position(|s| s.role == Role::Primary)
            .expect("validated");
        UserPool {
            database: database.to_owned(),
            user: user.to_owned(),
            mode: pool.pool_mode,
            reset_query: pool.reset_query.clone(),
            track_session_state: pool.track_session_state,
            auth,
            secret,
            servers,
            primary,
            router,
            defaults: OnceLock::new(),
            next_replica: AtomicUsize::new(0),
            clients: AtomicUsize::new(0),
            stats: PoolStats::new(workers),
        }
    }

    /// Turns a routing decision into a server index, or the SQLSTATE and message for the client.
    pub fn resolve(&self, route: Route) -> Result<usize, (&'static str, String)> {
        match route {
            Route::Primary => Ok(self.primary),
            Route::Backend(i) if i < self.servers.len() => Ok(i),
            Route::Backend(i) => Err((
                crate::protocol::sqlstate::INTERNAL_ERROR,
                format!(
                    "routing policy chose server {i}, but pool \"{}\" has {} servers",
                    self.database,
                    self.servers.len()
                ),
            )),
            Route::AnyReplica => {
                let replicas = self
                    .servers
                    .iter()
                    .filter(|s| s.role == Role::Replica)
                    .count();
                if replicas == 0 {
                    return Ok(self.primary);
                }
                let n = self.next_replica.fetch_add(1, Ordering::Relaxed) % replicas;
                Ok(self
                    .servers
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.role == Role::Replica)
                    .nth(n)
                    .map(|(i, _)| i)
                    .unwrap_or(self.primary))
            }
            Route::Reject(msg) => Err((crate::protocol::sqlstate::ROUTING_REJECTED, msg)),
        }
    }

    /// Counts a logged-in client until the returned guard is dropped (once per session, for
    /// the admin console's `SHOW POOLS`).
    pub fn enter(self: &Arc<Self>) -> PoolClient {
        self.clients.fetch_add(1, Ordering::Relaxed);
        PoolClient(self.clone())
    }

    /// Clients logged in to this pool now.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// Stops handing out server connections (the admin console's `PAUSE`): new transactions
    /// wait in line; those running keep their servers until they end.
    pub fn pause(&self) {
        self.servers.iter().for_each(ServerPool::pause);
    }

    /// Serves the transactions that waited during a pause (the admin console's `RESUME`).
    pub fn resume(&self) {
        self.servers.iter().for_each(ServerPool::resume);
    }

    /// Whether the pool is paused.
    pub fn is_paused(&self) -> bool {
        self.servers.iter().any(ServerPool::is_paused)
    }

    /// Replaces every server connection (the admin console's `RECONNECT`): idle ones now,
    /// those in use when released. Returns how many idle ones were closed.
    pub fn reconnect(&self) -> usize {
        self.servers.iter().map(ServerPool::reconnect).sum()
    }

    /// Server connections checked out now, over all servers.
    pub fn in_use(&self) -> usize {
        self.servers.iter().map(ServerPool::in_use).sum()
    }

    /// Closes every idle server connection; returns how many.
    pub fn close_idle(&self) -> usize {
        self.servers.iter().map(ServerPool::close_idle).sum()
    }

    /// The index of the primary.
    pub fn primary(&self) -> usize {
        self.primary
    }

    /// The parameters a fresh server connection reports, once known.
    pub fn defaults(&self) -> Option<&ParamList> {
        self.defaults.get()
    }

    /// Records the parameters of a fresh server connection (first writer wins).
    pub fn learn_defaults(&self, params: &ParamList) {
        let _ = self.defaults.set(params.clone());
    }
}
