//! Everything one (database, user) pair shares: how its clients log in, its servers, its router,
//! and the session parameters a fresh server connection reports.

use crate::auth::{AuthMethod, ClientSecret};
use crate::config::{PoolConfig, PoolMode, Role, UserConfig};
use crate::pool::{
    AllCaps, Backends, LiveBackends, PoolStats, PoolTimeouts, ServerPool, Servers, Shared,
};
use crate::router::{Route, Router};
use crate::server::{ParamList, ServerTarget};
use arc_swap::{ArcSwap, ArcSwapOption};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The pool of one (database, user).
pub struct UserPool {
    pub database: String,
    pub user: String,
    /// How its sessions use their servers; a reload replaces it for the sessions that start
    /// from then on.
    rules: ArcSwap<SessionRules>,
    /// How its clients log in; a reload replaces it (a new password counts for the next login).
    credentials: ArcSwap<Credentials>,
    /// Its servers and routing policies, replaced together by a reload while clients are
    /// served.
    pub backends: LiveBackends,
    /// ParameterStatus of a fresh server connection, learnt from the first one, and again
    /// after a reload replaced the primary (it may run another version).
    defaults: ArcSwapOption<ParamList>,
    next_replica: AtomicUsize,
    /// Servers a reload retired that still had connections in use: the admin console shows
    /// them, and `PAUSE` waits for them, until their last transaction ends.
    retiring: Mutex<Vec<Arc<ServerPool>>>,
    /// Clients logged in to this pool now (see [`UserPool::enter`]).
    clients: AtomicUsize,
    /// Requests, transactions and waits, for the admin console's `SHOW STATS`.
    pub stats: PoolStats,
}

/// How a pool's sessions use their servers. A session takes the rules in force when it
/// starts and keeps them to its end; a reload changes them for the sessions that follow.
#[derive(Debug, Clone)]
pub struct SessionRules {
    pub mode: PoolMode,
    /// Session mode: run on a server before it goes back to the pool (`reset_query`).
    pub reset_query: String,
    /// Transaction mode: session state follows the client (`track_session_state`).
    pub track_session_state: bool,
}

impl SessionRules {
    fn of(pool: &PoolConfig) -> SessionRules {
        SessionRules {
            mode: pool.pool_mode,
            reset_query: pool.reset_query.clone(),
            track_session_state: pool.track_session_state,
        }
    }
}

/// How a pool's clients prove who they are.
pub struct Credentials {
    pub auth: AuthMethod,
    pub secret: Option<ClientSecret>,
}

impl Credentials {
    fn of(u: &UserConfig) -> Credentials {
        let (auth, secret) = u.client_auth().expect("config was validated");
        Credentials { auth, secret }
    }
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
        shared: &Shared,
        make_router: impl FnOnce(&Servers) -> Arc<dyn Router>,
    ) -> Self {
        let stats = PoolStats::new(shared.workers);
        let servers: Servers = Arc::new(
            server_pools(
                database,
                user,
                pool,
                u,
                &shared.timeouts,
                &stats,
                &shared.caps,
            )
            .into_iter()
            .map(Arc::new)
            .collect(),
        );
        let router = make_router(&servers);
        UserPool {
            database: database.to_owned(),
            user: user.to_owned(),
            rules: ArcSwap::from_pointee(SessionRules::of(pool)),
            credentials: ArcSwap::from_pointee(Credentials::of(u)),
            backends: LiveBackends::new(Backends::new(servers, router)),
            defaults: ArcSwapOption::empty(),
            next_replica: AtomicUsize::new(0),
            retiring: Mutex::new(Vec::new()),
            clients: AtomicUsize::new(0),
            stats,
        }
    }

    /// How a client logs in now.
    pub fn credentials(&self) -> Arc<Credentials> {
        self.credentials.load_full()
    }

    /// Takes the client authentication of `u` (a reload): for logins from now on.
    pub fn set_credentials(&self, u: &UserConfig) {
        self.credentials.store(Arc::new(Credentials::of(u)));
    }

    /// The rules a session that starts now follows.
    pub fn rules(&self) -> Arc<SessionRules> {
        self.rules.load_full()
    }

    /// Takes the session rules of `pool` (a reload): for sessions that start from now on.
    pub fn set_rules(&self, pool: &PoolConfig) {
        self.rules.store(Arc::new(SessionRules::of(pool)));
    }

    /// The servers in use now (a snapshot: a reload may publish others meanwhile).
    pub fn servers(&self) -> Servers {
        self.backends.load().servers.clone()
    }

    /// Turns a routing decision of `backends`' router into an index in its servers, or the
    /// SQLSTATE and message for the client.
    pub fn resolve(
        &self,
        backends: &Backends,
        route: Route,
    ) -> Result<usize, (&'static str, String)> {
        let servers = &backends.servers;
        match route {
            Route::Primary => Ok(backends.primary),
            Route::Backend(i) if i < servers.len() => Ok(i),
            Route::Backend(i) => Err((
                crate::protocol::sqlstate::INTERNAL_ERROR,
                format!(
                    "routing policy chose server {i}, but pool \"{}\" has {} servers",
                    self.database,
                    servers.len()
                ),
            )),
            Route::AnyReplica => {
                let replicas = servers.iter().filter(|s| s.role == Role::Replica).count();
                if replicas == 0 {
                    return Ok(backends.primary);
                }
                let n = self.next_replica.fetch_add(1, Ordering::Relaxed) % replicas;
                Ok(servers
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.role == Role::Replica)
                    .nth(n)
                    .map(|(i, _)| i)
                    .unwrap_or(backends.primary))
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
        self.servers().iter().for_each(|s| s.pause());
    }

    /// Serves the transactions that waited during a pause (the admin console's `RESUME`).
    pub fn resume(&self) {
        self.servers().iter().for_each(|s| s.resume());
    }

    /// Whether the pool is paused.
    pub fn is_paused(&self) -> bool {
        self.servers().iter().any(|s| s.is_paused())
    }

    /// Replaces every server connection (the admin console's `RECONNECT`): idle ones now,
    /// those in use when released. Returns how many idle ones were closed.
    pub fn reconnect(&self) -> usize {
        self.servers().iter().map(|s| s.reconnect()).sum()
    }

    /// Server connections checked out now, over all servers, retired ones included.
    pub fn in_use(&self) -> usize {
        let retiring: usize = self.retiring().iter().map(|s| s.in_use()).sum();
        retiring + self.servers().iter().map(|s| s.in_use()).sum::<usize>()
    }

    /// Takes `server`, which a reload just retired, into [`UserPool::retiring`] if it still
    /// has connections in use.
    pub fn retiring_server(&self, server: Arc<ServerPool>) {
        if server.in_use() > 0 {
            self.lock_retiring().push(server);
        }
    }

    /// Retired servers with connections still in use (those that have none left are dropped
    /// from the list here).
    pub fn retiring(&self) -> Vec<Arc<ServerPool>> {
        let mut list = self.lock_retiring();
        list.retain(|s| s.in_use() > 0);
        list.clone()
    }

    fn lock_retiring(&self) -> std::sync::MutexGuard<'_, Vec<Arc<ServerPool>>> {
        self.retiring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes every idle server connection; returns how many.
    pub fn close_idle(&self) -> usize {
        self.servers().iter().map(|s| s.close_idle()).sum()
    }

    /// The parameters a fresh server connection reports, once known.
    pub fn defaults(&self) -> Option<Arc<ParamList>> {
        self.defaults.load_full()
    }

    /// Records the parameters of a fresh server connection.
    pub fn learn_defaults(&self, params: &ParamList) {
        self.defaults.store(Some(Arc::new(params.clone())));
    }

    /// Forgets the parameters learnt (a reload replaced the primary): the next login asks the
    /// new one.
    pub fn forget_defaults(&self) {
        self.defaults.store(None);
    }
}

/// The server pools `pool` configures for (`database`, `user`), in config order, none
/// connected yet, counting their checkout waits in `stats`.
pub(super) fn server_pools(
    database: &str,
    user: &str,
    pool: &PoolConfig,
    u: &UserConfig,
    timeouts: &Arc<PoolTimeouts>,
    stats: &PoolStats,
    caps: &AllCaps,
) -> Vec<ServerPool> {
    let workers = stats.workers();
    let size = u.pool_size.unwrap_or(pool.pool_size);
    let min_size = u.min_pool_size.unwrap_or(pool.min_pool_size);
    let server_user = u.login(user).to_owned();
    let server_password = u.server_password();
    pool.servers
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
            let caps = caps.of(database, &addr, &server_user);
            ServerPool::new(
                s.name.clone().unwrap_or(addr),
                s.role,
                target,
                size,
                min_size,
                timeouts.clone(),
                workers,
            )
            .capped_by(caps)
            .counting_waits_in(stats.wait_total())
        })
        .collect()
}
