//! Server connection pools.
//!
//! Clients are grouped by (database, user) into a [`UserPool`]; it holds one [`ServerPool`] per
//! configured server (the primary and each replica) and the [`Router`](crate::router::Router) that
//! picks among them. A `ServerPool` hands out logged-in connections, at most `pool_size` at once.

mod reaper;
mod server_pool;
mod slots;
mod user_pool;

pub use reaper::{expire_waiters, reaper};
pub use server_pool::{CheckoutError, PoolTimeouts, Pooled, ServerPool};
pub use user_pool::UserPool;

use crate::config::Config;
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
        let g = &config.general;
        let timeouts = PoolTimeouts::from_general(g);
        let deadline = Duration::from_millis(g.plugin_deadline_ms.max(1));
        let memory = (g.plugin_memory_mb as usize) << 20;
        let mut by_database: HashMap<String, HashMap<String, Arc<UserPool>>> = HashMap::new();
        for (db, pool) in &config.pools {
            let plugins: Vec<Arc<LoadedPlugin>> = pool
                .policies
                .iter()
                .map(|p| {
                    LoadedPlugin::load(&config.base_dir.join(&p.plugin), p.config_text(), memory)
                })
                .collect::<Result<_, _>>()?;
            let weights: Vec<u32> = pool.servers.iter().map(|s| s.weight.unwrap_or(1)).collect();
            for (user, u) in &pool.users {
                let up = UserPool::new(db, user, pool, u, timeouts, workers, |servers| {
                    if plugins.is_empty() {
                        Arc::new(PrimaryOnly) as Arc<dyn Router>
                    } else {
                        Arc::new(PolicyChain::new(
                            plugins.clone(),
                            servers.clone(),
                            weights.clone(),
                            Classifier::new(&pool.write_functions),
                            deadline,
                            pool.fallback_reads,
                        ))
                    }
                });
                by_database
                    .entry(db.clone())
                    .or_default()
                    .insert(user.clone(), Arc::new(up));
            }
        }
        Ok(Pools { by_database })
    }

    /// The pool for a client's (database, user).
    pub fn get(&self, database: &str, user: &str) -> Option<&Arc<UserPool>> {
        self.by_database.get(database)?.get(user)
    }

    /// Whether any pool serves `database`.
    pub fn has_database(&self, database: &str) -> bool {
        self.by_database.contains_key(database)
    }

    /// Every pool, for maintenance.
    pub fn all(&self) -> impl Iterator<Item = &Arc<UserPool>> {
        self.by_database.values().flat_map(|users| users.values())
    }
}
