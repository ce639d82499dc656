//! The shape of `switchyard.toml`, key by key, with defaults. README.md documents each key.

use crate::auth::{AuthMethod, ClientSecret};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub general: General,
    /// Client-facing databases, by the name clients put in `database`.
    #[serde(default)]
    pub pools: BTreeMap<String, PoolConfig>,
    /// The admin console (`SHOW POOLS`, `RELOAD`, ...); absent: no console.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// The directory of the config file (relative plugin paths start here).
    #[serde(skip)]
    pub base_dir: std::path::PathBuf,
}

impl Config {
    /// The `max_user_connections` of server login `login` (0: none): the value of the pool
    /// users that log in as it and set one (validation makes them agree), else the general
    /// one.
    pub fn max_user_connections(&self, login: &str) -> u32 {
        self.logins()
            .find_map(|(l, u)| (l == login).then_some(u.max_user_connections).flatten())
            .unwrap_or(self.general.max_user_connections)
    }

    /// Each pool user's server login, with the user's table.
    pub fn logins(&self) -> impl Iterator<Item = (&str, &UserConfig)> {
        self.pools
            .values()
            .flat_map(|p| p.users.iter())
            .map(|(name, u)| (u.login(name), u))
    }
}

/// Process-wide settings.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct General {
    /// Where clients connect, `host:port`.
    pub listen_addr: String,
    /// Where Prometheus scrapes `GET /metrics`, `host:port`; unset: no metrics endpoint.
    pub metrics_addr: Option<String>,
    /// A directory where clients may also connect by Unix socket, `.s.PGSQL.<port>` like
    /// PostgreSQL's (`psql -h <dir> -p <port>`); unset: TCP only.
    pub unix_socket_dir: Option<String>,
    /// Worker threads (each a single-threaded event loop); default: half the CPUs, at least 1.
    pub worker_threads: Option<usize>,
    /// Most client connections open at once; more get `53300` at login.
    pub max_client_conn: usize,
    /// Most server connections one server login holds, across all databases and servers,
    /// idle ones included (0 = no cap; PgBouncer's `max_user_connections`). A pool user's
    /// `max_user_connections` sets it for its login.
    pub max_user_connections: u32,
    /// Largest client message accepted, in bytes (PostgreSQL's own limit is 1 GiB).
    pub max_message_size: usize,
    /// How long a client waits for a server connection before `53300`.
    pub checkout_timeout_ms: u64,
    /// How long opening and logging in to a server connection may take.
    pub connect_timeout_ms: u64,
    /// An idle server connection unused this long is closed (0 = never).
    pub idle_timeout_ms: u64,
    /// A server connection older than this is closed when next idle (0 = never); ±10 % jitter.
    pub server_lifetime_ms: u64,
    /// On SIGTERM/SIGINT, how long transactions in flight may take to finish.
    pub shutdown_timeout_ms: u64,
    /// How long a forwarded cancel request may take.
    pub cancel_timeout_ms: u64,
    /// A client idle inside a transaction this long (nothing in flight) is closed with FATAL
    /// `25P03`, and its transaction rolled back, so it cannot hold a server and its locks
    /// forever (0 = never; PgBouncer's `idle_transaction_timeout`).
    pub idle_transaction_timeout_ms: u64,
    /// A client idle outside a transaction this long is closed with FATAL `57P05`
    /// (0 = never; PgBouncer's `client_idle_timeout`).
    pub client_idle_timeout_ms: u64,
    /// A request (a Query, or extended-protocol messages up to a Sync) that the server has not
    /// answered this long after it got to it is cancelled and the server connection closed;
    /// the client gets `57014` (0 = never; PgBouncer's `query_timeout`). A safety net for a
    /// server that hangs or a network that drops packets; the server's own
    /// `statement_timeout`, set a little lower, is the way to bound queries.
    pub query_timeout_ms: u64,
    /// A transaction (a statement outside a transaction block is one) that has held a server
    /// this long is ended: the client gets FATAL `25P04` and is closed, the server's work is
    /// cancelled and rolled back (0 = never; PgBouncer's `transaction_timeout`, PostgreSQL
    /// 17's `transaction_timeout`).
    pub transaction_timeout_ms: u64,
    /// Proxy-named prepared statements kept per server connection in transaction mode; past
    /// it the least recently used is closed (0 = no limit).
    pub max_prepared_statements: usize,
    /// After a failed connect, how long a server is reported unhealthy to routing policies
    /// (and left out of their candidates) before it is tried again.
    pub server_login_retry_ms: u64,
    /// `SO_KEEPALIVE` on client and server TCP connections, so a peer that vanished without
    /// a word (a crashed host, a dropped NAT or load-balancer entry) is noticed on an idle
    /// connection and its server or client slot freed. On by default, as in PgBouncer.
    pub tcp_keepalive: bool,
    /// Seconds of silence before the first probe (`TCP_KEEPIDLE`); unset: the system's
    /// (Linux: 7200).
    pub tcp_keepalive_idle_s: Option<u64>,
    /// Seconds between probes (`TCP_KEEPINTVL`); unset: the system's (Linux: 75).
    pub tcp_keepalive_interval_s: Option<u64>,
    /// Unanswered probes before the connection is dropped (`TCP_KEEPCNT`); unset: the
    /// system's (Linux: 9).
    pub tcp_keepalive_count: Option<u32>,
    /// How long data sent on a TCP connection may stay unacknowledged before the connection
    /// is dropped (`TCP_USER_TIMEOUT`, in ms; 0 = the system's, about 15 minutes of
    /// retransmissions; PgBouncer's `tcp_user_timeout`).
    pub tcp_user_timeout_ms: u64,
    /// Longest a routing policy call may run before it is stopped (and the query goes to the
    /// primary).
    pub plugin_deadline_ms: u64,
    /// Memory each routing policy instance may use, in MiB.
    pub plugin_memory_mb: u64,
    /// How often each pool with traffic logs a `stats` line: transactions and requests per
    /// second, mean transaction, request and wait times over the period (0 = never;
    /// PgBouncer's `stats_period` with `log_stats`).
    pub stats_period_ms: u64,
}

impl General {
    /// How client and server TCP connections notice a peer that is gone.
    pub fn liveness(&self) -> crate::socket::Liveness {
        crate::socket::Liveness {
            keepalive: self.keepalive(),
            user_timeout: (self.tcp_user_timeout_ms > 0)
                .then(|| std::time::Duration::from_millis(self.tcp_user_timeout_ms)),
        }
    }

    /// The keepalive settings for TCP connections; `None` with `tcp_keepalive = false`.
    pub fn keepalive(&self) -> Option<crate::socket::Keepalive> {
        let secs = |s: Option<u64>| s.map(std::time::Duration::from_secs);
        self.tcp_keepalive.then(|| crate::socket::Keepalive {
            idle: secs(self.tcp_keepalive_idle_s),
            interval: secs(self.tcp_keepalive_interval_s),
            count: self.tcp_keepalive_count,
        })
    }
}

impl Default for General {
    fn default() -> Self {
        General {
            listen_addr: "127.0.0.1:6432".into(),
            metrics_addr: None,
            unix_socket_dir: None,
            worker_threads: None,
            max_client_conn: 1000,
            max_user_connections: 0,
            max_message_size: 64 << 20,
            checkout_timeout_ms: 5000,
            connect_timeout_ms: 5000,
            idle_timeout_ms: 600_000,
            server_lifetime_ms: 3_600_000,
            shutdown_timeout_ms: 30_000,
            cancel_timeout_ms: 5000,
            idle_transaction_timeout_ms: 0,
            client_idle_timeout_ms: 0,
            query_timeout_ms: 0,
            transaction_timeout_ms: 0,
            server_login_retry_ms: 5000,
            max_prepared_statements: 200,
            tcp_keepalive: true,
            tcp_keepalive_idle_s: None,
            tcp_keepalive_interval_s: None,
            tcp_keepalive_count: None,
            tcp_user_timeout_ms: 0,
            plugin_deadline_ms: 5,
            plugin_memory_mb: 32,
            stats_period_ms: 60_000,
        }
    }
}

/// When a client holds a server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// From the client's first query until it disconnects.
    Session,
    /// From the first message of a transaction until ReadyForQuery reports idle.
    Transaction,
    /// Transaction mode for autocommit clients (PL/Proxy, PgBouncer's `statement`): each
    /// statement is its own transaction, and a transaction block is refused. A `BEGIN`, or a
    /// ReadyForQuery that reports one open, ends the session with FATAL `08P01` (the server's
    /// transaction is rolled back), so nothing a client meant to run in one runs on its own.
    Statement,
}

impl PoolMode {
    /// The name in the config file.
    pub fn name(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
            PoolMode::Statement => "statement",
        }
    }

    /// Whether a server is held per transaction, not per session.
    pub fn per_transaction(self) -> bool {
        matches!(self, PoolMode::Transaction | PoolMode::Statement)
    }
}

/// Where a query goes when its routing policy fails (traps or cannot be instantiated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FallbackReads {
    /// Everything to the primary: always safe.
    #[default]
    Primary,
    /// Statements the host's classifier finds to be plain reads outside a transaction go to a
    /// healthy replica (round robin); everything else to the primary.
    Replicas,
}

/// A database as clients see it, and the servers behind it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    #[serde(default = "default_pool_mode")]
    pub pool_mode: PoolMode,
    /// The database name on the servers; default: the pool's own name.
    #[serde(default)]
    pub server_database: Option<String>,
    /// One primary and any number of replicas.
    pub servers: Vec<ServerConfig>,
    /// Run on a server connection before it goes back to the pool in session mode ("" = none).
    #[serde(default = "default_reset_query")]
    pub reset_query: String,
    /// Transaction mode: make a client's session state follow it (settings) or keep its
    /// server (objects that cannot move). `false`: PgBouncer's behaviour, where such state
    /// stays on whichever server connection it was made on.
    #[serde(default = "default_true")]
    pub track_session_state: bool,
    /// Default server connections per user and server.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// Default connections per user and server kept open even when idle.
    #[serde(default)]
    pub min_pool_size: u32,
    /// Connections to each server that all the pool's users may hold together; 0: no cap.
    #[serde(default)]
    pub max_db_connections: u32,
    /// Routing policies (WebAssembly components), run in order; none: everything to the primary.
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
    /// Functions whose call makes a SELECT a write, for the host's classifier (on top of
    /// nextval, setval and the advisory locks).
    #[serde(default)]
    pub write_functions: Vec<String>,
    /// Where reads go when a routing policy fails.
    #[serde(default)]
    pub fallback_reads: FallbackReads,
    /// Who may connect, by user name.
    #[serde(default)]
    pub users: BTreeMap<String, UserConfig>,
}

/// A PostgreSQL server behind a pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub role: Role,
    /// A name for logs and routing policies; default `host:port`.
    #[serde(default)]
    pub name: Option<String>,
    /// Weight for weighted balancing policies; default 1.
    #[serde(default)]
    pub weight: Option<u32>,
}

/// One routing policy of a pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The component (`.wasm`), relative to the config file's directory.
    pub plugin: std::path::PathBuf,
    /// The policy's own settings: a TOML table or a string, passed to its `init` as TOML text.
    #[serde(default)]
    pub config: Option<toml::Value>,
}

impl PolicyConfig {
    /// The config as the TOML text the plugin's `init` receives.
    pub fn config_text(&self) -> String {
        match &self.config {
            None => String::new(),
            Some(toml::Value::String(s)) => s.clone(),
            Some(toml::Value::Table(t)) => toml::to_string(t).unwrap_or_default(),
            Some(other) => other.to_string(),
        }
    }
}

/// A server's part in replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
}

impl Role {
    /// The name in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

/// A user of a pool: how the client logs in, and how the proxy logs in to the servers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Plain text, `md5…` (as in pg_authid) or `SCRAM-SHA-256$…`.
    #[serde(default)]
    pub password: Option<String>,
    /// Client authentication; default: scram-sha-256 (md5 for an md5 hash, trust without password).
    #[serde(default)]
    pub auth: Option<AuthMethod>,
    /// The role used on the servers; default: the same name.
    #[serde(default)]
    pub server_user: Option<String>,
    /// The servers' password for `server_user`; default: `password` when it is plain text.
    #[serde(default)]
    pub server_password: Option<String>,
    /// Server connections per server for this user; default: the pool's `pool_size`.
    #[serde(default)]
    pub pool_size: Option<u32>,
    /// Connections kept open per server; default: the pool's `min_pool_size`.
    #[serde(default)]
    pub min_pool_size: Option<u32>,
    /// Most server connections its server login holds across all databases and servers;
    /// default: `general.max_user_connections`. Pool users with the same login must agree.
    #[serde(default)]
    pub max_user_connections: Option<u32>,
}

impl UserConfig {
    /// The role this user (named `name` in the config) logs in as on the servers.
    pub fn login<'a>(&'a self, name: &'a str) -> &'a str {
        self.server_user.as_deref().unwrap_or(name)
    }

    /// The client auth method and the parsed password, or the key suffix and message of the fault.
    pub fn client_auth(
        &self,
    ) -> Result<(AuthMethod, Option<ClientSecret>), (&'static str, String)> {
        client_auth(self.password.as_deref(), self.auth)
    }

    /// The password the proxy uses to log in to the servers, if any.
    pub fn server_password(&self) -> Option<String> {
        self.server_password.clone().or_else(|| {
            self.password
                .as_deref()
                .and_then(|p| ClientSecret::parse(p).ok())
                .and_then(|s| s.plain().map(str::to_owned))
        })
    }
}

fn default_pool_mode() -> PoolMode {
    PoolMode::Transaction
}
fn default_true() -> bool {
    true
}

fn default_reset_query() -> String {
    "DISCARD ALL".into()
}
fn default_pool_size() -> u32 {
    20
}

/// The admin console: a database name clients cannot use for a pool, where the users listed
/// here run `SHOW` commands and `RELOAD` (PgBouncer's console, in its vocabulary).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The database name to connect to; default `switchyard`.
    #[serde(default = "default_admin_database")]
    pub database: String,
    /// Who may use the console, by user name.
    #[serde(default)]
    pub users: BTreeMap<String, AdminUserConfig>,
}

/// A user of the admin console: how it logs in. No server is involved.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminUserConfig {
    /// Plain text, `md5…` or `SCRAM-SHA-256$…`, as for pool users.
    #[serde(default)]
    pub password: Option<String>,
    /// Client authentication; default as for pool users, except that a user without a
    /// password must say `auth = "trust"` explicitly.
    #[serde(default)]
    pub auth: Option<AuthMethod>,
}

impl AdminUserConfig {
    /// The auth method and the parsed password, or the key suffix and message of the fault.
    pub fn client_auth(
        &self,
    ) -> Result<(AuthMethod, Option<ClientSecret>), (&'static str, String)> {
        if self.password.is_none() && self.auth.is_none() {
            return Err((
                "password",
                "an admin user needs a password, or auth = \"trust\" to let anyone who reaches the port in".into(),
            ));
        }
        client_auth(self.password.as_deref(), self.auth)
    }
}

fn default_admin_database() -> String {
    "switchyard".into()
}

/// How a client logs in, from its configured password and method: the method (default:
/// scram-sha-256, md5 for an md5 hash, trust without password) and the parsed password, or
/// the key suffix and message of the fault.
fn client_auth(
    password: Option<&str>,
    auth: Option<AuthMethod>,
) -> Result<(AuthMethod, Option<ClientSecret>), (&'static str, String)> {
    let secret = match password {
        Some(p) => Some(ClientSecret::parse(p).map_err(|m| ("password", m))?),
        None => None,
    };
    let method = auth.unwrap_or(match &secret {
        None => AuthMethod::Trust,
        Some(ClientSecret::Md5Hash(_)) => AuthMethod::Md5,
        Some(_) => AuthMethod::ScramSha256,
    });
    match (&secret, method) {
        (_, AuthMethod::Trust) => {}
        (None, m) => {
            return Err((
                "password",
                format!("auth = \"{}\" needs a password", m.name()),
            ))
        }
        (Some(s), m) if !s.supports(m) => {
            return Err((
                "auth",
                format!(
                    "the stored password hash cannot verify auth = \"{}\"",
                    m.name()
                ),
            ))
        }
        _ => {}
    }
    Ok((method, secret))
}
