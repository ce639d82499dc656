//! Server connection pools.
//!
//! Clients are grouped by (database, user) into a [`UserPool`]; it holds one [`ServerPool`] per
//! configured server (the primary and each replica) and the [`Router`](crate::router::Router) that
//! picks among them. A `ServerPool` hands out logged-in connections, at most `pool_size` at once.

mod reaper;
mod server_pool;
mod slots;
mod stats;
mod user_pool;

pub use reaper::{expire_waiters, reaper};
pub use server_pool::{CheckoutError, PoolTimeouts, Pooled, ServerPool};
pub use stats::{PoolStats, Totals};
pub use user_pool::{PoolClient, UserPool};

use crate::config::{Config, PoolConfig};
use crate::router::classify::Classifier;
use crate::router::wasm::{LoadError, LoadedPlugin, PolicyChain};
use crate::router::{PrimaryOnly, Router};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Every pool of the running config, found by (database, user) at client login.
#[derive(Debug)]
pub struct Pools {
    /// database → user → pool: two lookups by borrowed name, no key built per login.
    by_database: HashMap<String, HashMap<String, Arc<UserPool>>>,
}

impl Pools {
    /// Builds the pools of a validated config for `workers` worker threads, loading each
    /// pool's routing policies (compiled once per pool, checked, `init` run on a canary). No
    /// server connection is opened here.
    pub fn from_config(config: &Config, workers: usize) -> Result<Self, LoadError> {
        let timeouts = PoolTimeouts::from_general(&config.general);
        let mut by_database: HashMap<String, HashMap<String, Arc<UserPool>>> = HashMap::new();
        for (db, pool) in &config.pools {
            let plugins = load_policies(config, pool)?;
            for (user, u) in &pool.users {
                let up = UserPool::new(db, user, pool, u, timeouts, workers, |servers| {
                    router(config, pool, &plugins, servers)
                });
                by_database
                    .entry(db.clone())
                    .or_default()
                    .insert(user.clone(), Arc::new(up));
            }
        }
        Ok(Pools { by_database })
    }

    /// Replaces the routing policies of every pool with those of `config` (the config file
    /// read again), all or nothing: every policy is loaded and checked (compiled, its imports
    /// checked, `init` run on a canary) before any is published. A pool that `config` no longer
    /// has, or whose servers changed, keeps its policies: those changes need a restart. Returns
    /// a note for each pool left as it was.
    ///
    /// Compiles, so it blocks for milliseconds per plugin: call it off the tokio workers.
    pub fn reload_policies(&self, config: &Config) -> Result<Vec<String>, LoadError> {
        let mut notes = Vec::new();
        let mut ready = Vec::new();
        for (db, users) in &self.by_database {
            let Some(pool) = config.pools.get(db) else {
                notes.push(format!(
                    "pools.{db}: gone from the config; kept as it was until a restart"
                ));
                continue;
            };
            let running = users.values().next().map(|u| &u.servers);
            if running.is_some_and(|servers| !same_servers(servers, pool)) {
                notes.push(format!(
                    "pools.{db}.servers: changed; the pool keeps its policies until a restart"
                ));
                continue;
            }
            ready.push((users, pool, load_policies(config, pool)?));
        }
        for (users, pool, plugins) in ready {
            for up in users.values() {
                up.router
                    .replace(router(config, pool, &plugins, &up.servers));
            }
        }
        Ok(notes)
    }

    /// The pool for a client's (database, user).
    pub fn get(&self, database: &str, user: &str) -> Option<&Arc<UserPool>> {
        self.by_database.get(database)?.get(user)
    }

    /// Whether any pool serves `database`.
    pub fn has_database(&self, database: &str) -> bool {
        self.by_database.contains_key(database)
    }

    /// The pools of `database`, or every pool when `None` (the admin console's `PAUSE` and
    /// `RESUME` name a database or none).
    pub fn of_database(&self, database: Option<&str>) -> Vec<&Arc<UserPool>> {
        match database {
            Some(db) => self
                .by_database
                .get(db)
                .map(|users| users.values().collect())
                .unwrap_or_default(),
            None => self.all().collect(),
        }
    }

    /// Every pool, for maintenance.
    pub fn all(&self) -> impl Iterator<Item = &Arc<UserPool>> {
        self.by_database.values().flat_map(|users| users.values())
    }
}

/// Loads the routing policies `pool` names (relative paths start at the config's directory).
fn load_policies(config: &Config, pool: &PoolConfig) -> Result<Vec<Arc<LoadedPlugin>>, LoadError> {
    let memory = (config.general.plugin_memory_mb as usize) << 20;
    pool.policies
        .iter()
        .map(|p| LoadedPlugin::load(&config.base_dir.join(&p.plugin), p.config_text(), memory))
        .collect()
}

/// The router of one (database, user) pool: its policy chain, or everything to the primary
/// when it names no policy.
fn router(
    config: &Config,
    pool: &PoolConfig,
    plugins: &[Arc<LoadedPlugin>],
    servers: &Arc<Vec<ServerPool>>,
) -> Arc<dyn Router> {
    if plugins.is_empty() {
        return Arc::new(PrimaryOnly);
    }
    let weights: Vec<u32> = pool.servers.iter().map(|s| s.weight.unwrap_or(1)).collect();
    Arc::new(PolicyChain::new(
        plugins.to_vec(),
        servers.clone(),
        weights,
        Classifier::new(&pool.write_functions),
        Duration::from_millis(config.general.plugin_deadline_ms.max(1)),
        pool.fallback_reads,
    ))
}

/// Whether the running `servers` are the ones `pool` lists, in the same order (a policy's
/// backend ids are indexes into that list).
fn same_servers(servers: &[ServerPool], pool: &PoolConfig) -> bool {
    servers.len() == pool.servers.len()
        && servers.iter().zip(&pool.servers).all(|(running, s)| {
            running.role == s.role && running.target.host == s.host && running.target.port == s.port
        })
}
