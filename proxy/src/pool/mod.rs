//! Server connection pools.
//!
//! Clients are grouped by (database, user) into a [`UserPool`]; it holds one [`ServerPool`] per
//! configured server (the primary and each replica) and the [`Router`](crate::router::Router) that
//! picks among them. A `ServerPool` hands out logged-in connections, at most `pool_size` at once.

mod backends;
mod handoff;
mod reaper;
mod server_cap;
mod server_pool;
mod slots;
mod stats;
mod stats_log;
mod timeouts;
mod user_pool;

pub use backends::{Backends, LiveBackends};
pub use reaper::{expire_waiters, reaper};
pub use server_cap::{AllCaps, CapTicket};
pub use server_pool::{CheckoutError, Pooled, ServerPool, Servers};
pub use stats::{Batch, PoolStats, Totals};
pub use stats_log::{stats_log, Period};
pub use timeouts::PoolTimeouts;
pub use user_pool::{PoolClient, SessionRules, UserPool};

use user_pool::server_pools;

use crate::config::{Config, PoolConfig};
use crate::router::classify::Classifier;
use crate::router::wasm::{LoadError, LoadedPlugin, PolicyChain};
use crate::router::{PrimaryOnly, Router};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// database → user → pool: two lookups by borrowed name, no key built per login.
type PoolMap = HashMap<String, HashMap<String, Arc<UserPool>>>;

/// Every pool of the running config, found by (database, user) at client login.
#[derive(Debug)]
pub struct Pools {
    /// Replaced whole when a reload adds pools: a login sees the old map or the new one.
    by_database: ArcSwap<PoolMap>,
    /// What the server pools share, also those a reload adds.
    shared: Shared,
}

/// What all the server pools share: the timeouts they follow (a reload changes them in
/// place), the caps their connections count under (`max_db_connections`, one per database and
/// server across its users; `max_user_connections`, one per server login across databases)
/// and the worker count.
#[derive(Debug)]
pub struct Shared {
    pub timeouts: Arc<PoolTimeouts>,
    pub caps: AllCaps,
    pub workers: usize,
}

impl Pools {
    /// Builds the pools of a validated config for `workers` worker threads, loading each
    /// pool's routing policies (compiled once per pool, checked, `init` run on a canary). No
    /// server connection is opened here.
    pub fn from_config(config: &Config, workers: usize) -> Result<Self, LoadError> {
        let shared = Shared {
            timeouts: Arc::new(PoolTimeouts::from_general(&config.general)),
            caps: AllCaps::default(),
            workers,
        };
        let mut by_database = PoolMap::new();
        for (db, pool) in &config.pools {
            let plugins = load_policies(config, pool)?;
            for (user, u) in &pool.users {
                let up = UserPool::new(db, user, pool, u, &shared, |servers| {
                    router(config, pool, &plugins, servers)
                });
                by_database
                    .entry(db.clone())
                    .or_default()
                    .insert(user.clone(), Arc::new(up));
            }
        }
        shared.caps.apply(config);
        Ok(Pools {
            by_database: ArcSwap::from_pointee(by_database),
            shared,
        })
    }

    /// Applies `config` (the config file read again) to the running pools, all or nothing:
    /// every policy is loaded and checked (compiled, its imports checked, `init` run on a
    /// canary) before anything is published. Then, pool by pool, in one atomic swap each (see
    /// [`LiveBackends`]): the new server list (a server whose address, credentials or pool
    /// size are unchanged keeps its pool and connections; the others are retired, see
    /// [`ServerPool::retire`]) with the new policy chain over it; the clients' passwords and
    /// the session rules (`pool_mode`, ..., for sessions that start from then on); and the
    /// pools' timeouts, in place. Pools and users the config adds serve the next login; those it removes stay as they
    /// are until a restart. Returns notes for the log: what changed, and what was left as it
    /// was.
    ///
    /// Compiles, so it blocks for milliseconds per plugin: call it off the tokio workers.
    pub fn reload(&self, config: &Config) -> Result<Vec<String>, LoadError> {
        let running = self.by_database.load_full();
        let mut notes = Vec::new();
        let mut ready = Vec::new();
        let mut added = PoolMap::new();
        for (db, users) in running.iter() {
            if !config.pools.contains_key(db) {
                notes.push(format!(
                    "pools.{db}: gone from the config; kept as it was until a restart"
                ));
            }
            for user in users.keys() {
                if config
                    .pools
                    .get(db)
                    .is_some_and(|p| !p.users.contains_key(user))
                {
                    notes.push(format!(
                        "pools.{db}.users.{user}: gone from the config; kept as it was until a restart"
                    ));
                }
            }
        }
        for (db, pool) in &config.pools {
            let plugins = load_policies(config, pool)?;
            for (user, u) in &pool.users {
                let Some(up) = running.get(db).and_then(|users| users.get(user)) else {
                    let up = UserPool::new(db, user, pool, u, &self.shared, |s| {
                        router(config, pool, &plugins, s)
                    });
                    notes.push(format!("pools.{db}.users.{user}: added"));
                    added
                        .entry(db.clone())
                        .or_default()
                        .insert(user.clone(), Arc::new(up));
                    continue;
                };
                let fresh = server_pools(
                    db,
                    user,
                    pool,
                    u,
                    &self.shared.timeouts,
                    &up.stats,
                    &self.shared.caps,
                );
                let servers = keep_unchanged(&up.servers(), fresh);
                ready.push((up, pool, u, plugins.clone(), servers));
            }
        }
        for (up, pool, u, plugins, servers) in ready {
            let servers: Servers = Arc::new(servers);
            if up.is_paused() {
                servers.iter().for_each(|s| s.pause());
            }
            let router = router(config, pool, &plugins, &servers);
            up.set_credentials(u);
            up.set_rules(pool);
            let old = up.backends.replace(Backends::new(servers.clone(), router));
            notes.extend(retire_replaced(up, &old.servers, &servers));
            if old.primary_server().is_retired() {
                up.forget_defaults();
            }
        }
        self.shared.timeouts.update(&config.general);
        self.shared.caps.apply(config);
        if !added.is_empty() {
            let mut map = PoolMap::clone(&running);
            for (db, users) in added {
                map.entry(db).or_default().extend(users);
            }
            self.by_database.store(Arc::new(map));
        }
        reaper::config_changed();
        Ok(notes)
    }

    /// The pool for a client's (database, user).
    pub fn get(&self, database: &str, user: &str) -> Option<Arc<UserPool>> {
        self.by_database.load().get(database)?.get(user).cloned()
    }

    /// Whether any pool serves `database`.
    pub fn has_database(&self, database: &str) -> bool {
        self.by_database.load().contains_key(database)
    }

    /// The pools of `database`, or every pool when `None` (the admin console's `PAUSE` and
    /// `RESUME` name a database or none).
    pub fn of_database(&self, database: Option<&str>) -> Vec<Arc<UserPool>> {
        match database {
            Some(db) => self
                .by_database
                .load()
                .get(db)
                .map(|users| users.values().cloned().collect())
                .unwrap_or_default(),
            None => self.all(),
        }
    }

    /// Every pool now, for maintenance.
    pub fn all(&self) -> Vec<Arc<UserPool>> {
        let map = self.by_database.load();
        map.values().flat_map(|u| u.values().cloned()).collect()
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
    servers: &Servers,
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

/// Retires the servers of `old` that `new` no longer has; returns a note for the log on each
/// server retired and each put in service.
fn retire_replaced(up: &UserPool, old: &[Arc<ServerPool>], new: &[Arc<ServerPool>]) -> Vec<String> {
    let (db, user) = (&up.database, &up.user);
    let mut notes = Vec::new();
    for s in old {
        if !new.iter().any(|n| Arc::ptr_eq(n, s)) {
            s.retire();
            up.retiring_server(s.clone());
            notes.push(format!(
                "pools.{db}.users.{user}: server \"{}\" retired: its connections close once idle",
                s.name
            ));
        }
    }
    for s in new {
        if !old.iter().any(|o| Arc::ptr_eq(o, s)) {
            notes.push(format!(
                "pools.{db}.users.{user}: server \"{}\" ({:?}, {}, pool_size {}) in service",
                s.name, s.role, s.target.addr, s.size
            ));
        }
    }
    notes
}

/// The server list a reload publishes: each of `fresh` (in config order), or the running pool
/// that is the same server reached the same way ([`ServerPool::same_as`]), with its
/// connections. Each running pool is kept at most once. A fresh pool that replaces a running
/// one of the same name (moved, resized) goes on with its count of connections opened, so
/// that count, a Prometheus counter labelled with the name, never goes back.
fn keep_unchanged(running: &[Arc<ServerPool>], fresh: Vec<ServerPool>) -> Vec<Arc<ServerPool>> {
    let mut kept: Vec<Arc<ServerPool>> = Vec::with_capacity(fresh.len());
    for f in fresh {
        let same = running
            .iter()
            .find(|r| r.same_as(&f) && !kept.iter().any(|k| Arc::ptr_eq(k, r)));
        kept.push(same.cloned().unwrap_or_else(|| {
            if let Some(old) = running.iter().find(|r| r.name == f.name) {
                f.opened
                    .store(old.opened.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            Arc::new(f)
        }));
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(servers: &str, pool_size: u32, users: &[&str]) -> Config {
        let mut text = format!("[pools.app]\nservers = [{servers}]\npool_size = {pool_size}\n");
        for u in users {
            text.push_str(&format!("[pools.app.users.{u}]\nauth = \"trust\"\n"));
        }
        crate::config::parse(&text, std::path::Path::new("test.toml")).expect("config")
    }

    const PRIMARY: &str = r#"{ host = "127.0.0.1", port = 5432, role = "primary", name = "p" }"#;
    const MOVED: &str = r#"{ host = "127.0.0.2", port = 5432, role = "primary", name = "p" }"#;
    const REPLICA: &str = r#"{ host = "127.0.0.1", port = 5433, role = "replica", name = "r" }"#;

    #[test]
    fn the_users_of_a_database_share_each_servers_cap_and_a_reload_changes_it() {
        let capped = |limit: u32| {
            let mut c = config(&format!("{PRIMARY}, {REPLICA}"), 5, &["alice", "bob"]);
            c.pools.get_mut("app").unwrap().max_db_connections = limit;
            c
        };
        let pools = Pools::from_config(&capped(4), 1).unwrap();
        let (alice, bob) = (
            pools.get("app", "alice").unwrap(),
            pools.get("app", "bob").unwrap(),
        );
        let cap = |p: &UserPool, i: usize| Arc::as_ptr(&p.servers()[i].caps().database);
        assert_eq!(cap(&alice, 0), cap(&bob, 0), "one cap per server");
        assert_ne!(cap(&alice, 0), cap(&alice, 1));
        assert_eq!(alice.servers()[1].caps().database.limit(), 4);
        pools.reload(&capped(9)).unwrap();
        assert_eq!(bob.servers()[0].caps().database.limit(), 9);
        assert_eq!(cap(&alice, 0), cap(&bob, 0));
    }

    #[test]
    fn a_login_has_one_cap_across_servers_and_databases_and_a_reload_changes_it() {
        let capped = |general: u32, bob: Option<u32>| {
            let mut c = config(&format!("{PRIMARY}, {REPLICA}"), 5, &["alice", "bob"]);
            c.general.max_user_connections = general;
            let mut other = c.pools["app"].clone();
            other.users.get_mut("alice").unwrap().server_user = Some("bob".into());
            other.users.get_mut("bob").unwrap().max_user_connections = bob;
            c.pools.insert("other".into(), other);
            c
        };
        let pools = Pools::from_config(&capped(4, None), 1).unwrap();
        let user = |db: &str, name: &str, i: usize| {
            pools.get(db, name).unwrap().servers()[i]
                .caps()
                .user
                .clone()
        };
        let bob = user("app", "bob", 0);
        assert!(Arc::ptr_eq(&bob, &user("app", "bob", 1)), "across servers");
        assert!(
            Arc::ptr_eq(&bob, &user("other", "bob", 0)),
            "across databases"
        );
        assert!(
            Arc::ptr_eq(&bob, &user("other", "alice", 1)),
            "by server login"
        );
        assert!(!Arc::ptr_eq(&bob, &user("app", "alice", 0)));
        assert_eq!((bob.limit(), user("app", "alice", 0).limit()), (4, 4));
        pools.reload(&capped(0, Some(2))).unwrap();
        assert_eq!((bob.limit(), user("app", "alice", 0).limit()), (2, 0));
    }

    #[test]
    fn a_reload_keeps_unchanged_servers_and_retires_the_others() {
        let pools = Pools::from_config(&config(PRIMARY, 5, &["alice"]), 1).unwrap();
        let alice = pools.get("app", "alice").unwrap();
        alice.learn_defaults(&crate::server::ParamList::new());
        let primary = alice.servers()[0].clone();

        // A replica added: the primary's pool is kept, as are the parameters learnt from it.
        let notes = pools
            .reload(&config(&format!("{PRIMARY}, {REPLICA}"), 5, &["alice"]))
            .unwrap();
        let now = alice.servers();
        assert!(Arc::ptr_eq(&now[0], &primary), "{notes:?}");
        assert_eq!((now.len(), now[1].role), (2, crate::config::Role::Replica));
        assert!(!primary.is_retired() && alice.defaults().is_some());
        assert!(
            notes.iter().any(|n| n.contains("server \"r\"")),
            "{notes:?}"
        );

        // The primary moved: a new pool for it, the old one retired, the defaults forgotten.
        // Its count of connections opened goes on under its name.
        primary.opened.store(3, Ordering::Relaxed);
        let notes = pools
            .reload(&config(&format!("{MOVED}, {REPLICA}"), 5, &["alice"]))
            .unwrap();
        let moved = alice.servers();
        assert!(!Arc::ptr_eq(&moved[0], &primary) && Arc::ptr_eq(&moved[1], &now[1]));
        assert_eq!(moved[0].target.host, "127.0.0.2");
        assert_eq!(moved[0].opened.load(Ordering::Relaxed), 3);
        assert!(primary.is_retired() && alice.defaults().is_none());
        assert!(
            notes.iter().any(|n| n.contains("server \"p\" retired")),
            "{notes:?}"
        );

        // A new size replaces every server's pool; the replica goes; a user is added.
        pools.reload(&config(MOVED, 7, &["alice", "bob"])).unwrap();
        let resized = alice.servers();
        assert_eq!((resized.len(), resized[0].size), (1, 7));
        assert!(moved.iter().all(|s| s.is_retired()));
        assert_eq!(alice.backends.swaps(), 3);
        assert!(pools.get("app", "bob").is_some());
    }

    #[test]
    fn a_paused_pool_stays_paused_across_a_reload() {
        let pools = Pools::from_config(&config(PRIMARY, 5, &["alice"]), 1).unwrap();
        let alice = pools.get("app", "alice").unwrap();
        alice.pause();
        pools
            .reload(&config(&format!("{MOVED}, {REPLICA}"), 5, &["alice"]))
            .unwrap();
        assert!(alice.servers().iter().all(|s| s.is_paused()));
        alice.resume();
        assert!(!alice.is_paused());
    }
}
