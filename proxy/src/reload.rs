//! `SIGHUP` or the admin console's `RELOAD`: apply the config file again while clients are
//! served.
//!
//! The config file is read and validated again; each pool's policies are compiled and checked
//! (imports, `init` on a canary) off the tokio workers; only when all of them load is anything
//! published, pool by pool, each pool's servers and policies in one atomic swap (see
//! `pool::LiveBackends`). A config that does not validate, or a policy that does not load,
//! changes nothing: the error is logged, naming the key or the plugin, and the running pools
//! stay.
//!
//! What reloads: the routing policies (`policies`, `write_functions`, `fallback_reads`,
//! `plugin_deadline_ms`, `plugin_memory_mb`), a pool's servers (added, removed, moved,
//! re-weighted, a new role), its `pool_size`, `min_pool_size` and `server_database`, and each
//! user's passwords, `auth`, `server_user`, `pool_size` and `min_pool_size`; a pool's
//! `pool_mode`, `reset_query` and `track_session_state` for the sessions that start from then
//! on; pools and users added; the admin console's users; the `[general]` timeouts and limits
//! of [`LIVE_GENERAL`] (a session takes the idle and query limits in force when it starts,
//! when any is set). A server whose address, credentials and sizes stay keeps its
//! connections; a changed or removed one is retired: transactions running there finish there,
//! then its connections close. Other settings take effect at the next start, and pools or
//! users removed stay until then.

use crate::config::{diff, General};
use crate::live::LiveSettings;
use crate::pool::Pools;
use crate::workers::Workers;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

/// What a reload did, for the log and for tests.
#[derive(Debug)]
pub enum Outcome {
    /// The policies were published. `notes` name pools left as they were; `unapplied`, the
    /// keys that differ from the running config and wait for a restart.
    Reloaded {
        notes: Vec<String>,
        unapplied: Vec<String>,
    },
    /// Nothing changed: the config or a policy was refused.
    Refused(String),
}

/// Reads `path` and publishes its pools' servers and routing policies in `pools`. `running` is the config file
/// the proxy started with, as a TOML tree: the keys that differ from it and do not reload are
/// reported. Blocking: it compiles.
pub fn reload_config(
    path: &Path,
    pools: &Pools,
    live: &LiveSettings,
    running: Option<&toml::Value>,
) -> Outcome {
    // Read once: the policies and the list of unapplied keys come from the same text.
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return Outcome::Refused(format!("cannot read {}: {e}", path.display())),
    };
    let config = match crate::config::parse(&text, path) {
        Ok(c) => c,
        Err(e) => return Outcome::Refused(format!("invalid config: {e}")),
    };
    let notes = match pools.reload(&config) {
        Ok(notes) => notes,
        Err(e) => return Outcome::Refused(format!("{}: {e}", path.display())),
    };
    // The console's users, when it had a console and still has one (turning it on or off,
    // or another database name, waits for a restart).
    let running_admin = running.is_some_and(|r| r.get("admin").is_some());
    let admin_users = config.admin.filter(|_| running_admin).map(|a| a.users);
    live.replace(live_general(&live.general(), &config.general), admin_users);
    let unapplied = match (running, toml::from_str::<toml::Value>(&text).ok()) {
        (Some(old), Some(new)) => diff::changed_keys(old, &new)
            .into_iter()
            .filter(|key| !reloads(key))
            .map(|key| diff::display(&key))
            .collect(),
        _ => Vec::new(),
    };
    Outcome::Reloaded { notes, unapplied }
}

/// Has every worker drop its instances of replaced policies, once the calls that had loaded
/// them (each a few microseconds, synchronous) have returned and the chains are gone.
fn sweep(workers: &Workers) {
    for i in 0..workers.count() {
        workers.get(i).spawn(async {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            crate::router::wasm::sweep_retired();
        });
    }
}

/// The `[general]` settings a reload applies: timeouts and limits, read where they are used.
/// The others (addresses, worker threads, socket options) are taken once, at start.
const LIVE_GENERAL: [&str; 15] = [
    "max_client_conn",
    "max_user_connections",
    "max_message_size",
    "checkout_timeout_ms",
    "connect_timeout_ms",
    "idle_timeout_ms",
    "server_lifetime_ms",
    "shutdown_timeout_ms",
    "cancel_timeout_ms",
    "idle_transaction_timeout_ms",
    "client_idle_timeout_ms",
    "query_timeout_ms",
    "transaction_timeout_ms",
    "server_login_retry_ms",
    "stats_period_ms",
];

/// `running` with the settings of [`LIVE_GENERAL`] taken from `new`.
fn live_general(running: &General, new: &General) -> General {
    General {
        max_client_conn: new.max_client_conn,
        max_user_connections: new.max_user_connections,
        max_message_size: new.max_message_size,
        checkout_timeout_ms: new.checkout_timeout_ms,
        connect_timeout_ms: new.connect_timeout_ms,
        idle_timeout_ms: new.idle_timeout_ms,
        server_lifetime_ms: new.server_lifetime_ms,
        shutdown_timeout_ms: new.shutdown_timeout_ms,
        cancel_timeout_ms: new.cancel_timeout_ms,
        idle_transaction_timeout_ms: new.idle_transaction_timeout_ms,
        client_idle_timeout_ms: new.client_idle_timeout_ms,
        query_timeout_ms: new.query_timeout_ms,
        transaction_timeout_ms: new.transaction_timeout_ms,
        server_login_retry_ms: new.server_login_retry_ms,
        stats_period_ms: new.stats_period_ms,
        ..running.clone()
    }
}

/// Whether a reload applies a change to this key (see the module's doc).
fn reloads(key: &[String]) -> bool {
    let k: Vec<&str> = key.iter().map(String::as_str).collect();
    match k.as_slice() {
        ["general", "plugin_deadline_ms" | "plugin_memory_mb"] => true,
        ["general", setting] => LIVE_GENERAL.contains(setting),
        ["admin", "users", ..] => true,
        // Added: in service; removed: a note says it stays until a restart.
        ["pools", _] | ["pools", _, "users", _] => true,
        ["pools", _, "policies" | "write_functions" | "fallback_reads" | "servers", ..] => true,
        ["pools", _, "pool_size" | "min_pool_size" | "server_database" | "max_db_connections"] => {
            true
        }
        ["pools", _, "pool_mode" | "reset_query" | "track_session_state"] => true,
        ["pools", _, "users", _, setting, ..] => matches!(
            *setting,
            "password"
                | "auth"
                | "server_user"
                | "server_password"
                | "pool_size"
                | "min_pool_size"
                | "max_user_connections"
        ),
        _ => false,
    }
}

/// `SIGHUP`s caught from the moment this is made, and the config file they reload: made
/// before the proxy binds its port, so that a `SIGHUP` sent while it starts (policies may
/// take seconds to compile) is kept for later, not the default action that ends the process.
pub struct Reloads {
    path: PathBuf,
    hangups: tokio::signal::unix::Signal,
    /// The file as it was at startup: what the running settings came from.
    running: Option<toml::Value>,
}

impl Reloads {
    /// Starts catching `SIGHUP` (inside a tokio runtime).
    pub fn catch(path: PathBuf) -> std::io::Result<Reloads> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Reloads {
            hangups: signal(SignalKind::hangup())?,
            running: std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| toml::from_str(&text).ok()),
            path,
        })
    }

    /// The reloader of `pools` for this config file, and the signals that will trigger it
    /// (see [`Hangups::serve`]).
    pub fn into_parts(
        self,
        pools: Arc<Pools>,
        live: Arc<LiveSettings>,
        workers: &Arc<Workers>,
    ) -> (Arc<Reloader>, Hangups) {
        let reloader = Arc::new(Reloader {
            path: self.path,
            running: self.running,
            pools,
            live,
            workers: Arc::downgrade(workers),
            one_at_a_time: tokio::sync::Mutex::new(()),
        });
        (reloader, Hangups(self.hangups))
    }
}

/// The `SIGHUP`s still to act on.
pub struct Hangups(tokio::signal::unix::Signal);

impl Hangups {
    /// Reloads at each `SIGHUP`, until the process ends.
    pub async fn serve(mut self, reloader: Arc<Reloader>) {
        while self.0.recv().await.is_some() {
            reloader.reload("SIGHUP").await;
        }
    }
}

/// Reloads the config file the proxy started with: at `SIGHUP`, and at the admin console's
/// `RELOAD`. One reload runs at a time.
pub struct Reloader {
    path: PathBuf,
    /// The file as it was at startup: what the running settings came from.
    running: Option<toml::Value>,
    pools: Arc<Pools>,
    /// The proxy's settings outside the pools (see `crate::live`).
    live: Arc<LiveSettings>,
    /// Weak: the workers are stopped at shutdown, which needs the last strong reference.
    workers: Weak<Workers>,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// Reloads and logs the outcome; `why` says who asked. The loading runs on a blocking
    /// thread. After a reload each worker drops its instances of the replaced policies.
    pub async fn reload(&self, why: &str) -> Outcome {
        let _one = self.one_at_a_time.lock().await;
        let path = self.path.clone();
        tracing::info!(config = %path.display(), "{why}: reloading the config");
        let started = std::time::Instant::now();
        let (pools, live) = (self.pools.clone(), self.live.clone());
        let running = self.running.clone();
        let reload = move || reload_config(&path, &pools, &live, running.as_ref());
        let outcome = tokio::task::spawn_blocking(reload)
            .await
            .unwrap_or_else(|e| Outcome::Refused(format!("the reload failed: {e}")));
        match &outcome {
            Outcome::Reloaded { notes, unapplied } => {
                for note in notes {
                    tracing::info!(%note, "reload");
                }
                for key in unapplied {
                    tracing::warn!(%key, "changed in the config file; takes effect at the next start");
                }
                tracing::info!(
                    ms = started.elapsed().as_millis() as u64,
                    "routing policies and servers reloaded; other settings take effect at the next start"
                );
                if let Some(workers) = self.workers.upgrade() {
                    sweep(&workers);
                }
            }
            Outcome::Refused(why) => {
                tracing::error!(error = %why, "reload refused; the running policies stay");
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str) -> Vec<String> {
        path.split('.')
            .flat_map(|s| match s.split_once('[') {
                Some((name, index)) => vec![name.to_string(), format!("[{index}")],
                None => vec![s.to_string()],
            })
            .collect()
    }

    #[test]
    fn pool_settings_and_live_general_settings_reload() {
        for k in [
            "pools.app.policies",
            "pools.app.policies[0].config",
            "pools.app.write_functions",
            "pools.app.fallback_reads",
            "pools.app.servers[1].weight",
            "pools.app.servers",
            "pools.app.servers[1].port",
            "pools.app.pool_size",
            "pools.app.max_db_connections",
            "pools.app.users.alice.max_user_connections",
            "general.max_user_connections",
            "pools.app.users.alice.password",
            "pools.app.users.alice.pool_size",
            "pools.app.pool_mode",
            "pools.app.reset_query",
            "pools.app",
            "pools.app.users.alice",
            "general.plugin_deadline_ms",
            "general.query_timeout_ms",
            "general.checkout_timeout_ms",
            "admin.users.ops",
            "admin.users.ops.password",
        ] {
            assert!(reloads(&key(k)), "{k}");
        }
        for k in [
            "pools.app.users.alice.nonsense",
            "general.listen_addr",
            "general.worker_threads",
            "general.tcp_keepalive",
            "general.max_prepared_statements",
            "admin",
            "admin.database",
        ] {
            assert!(!reloads(&key(k)), "{k}");
        }
    }

    #[test]
    fn a_reload_takes_exactly_the_live_general_settings() {
        let running = General::default();
        let mut new = General {
            listen_addr: "127.0.0.1:1".into(),
            worker_threads: Some(7),
            tcp_keepalive: !running.tcp_keepalive,
            max_prepared_statements: running.max_prepared_statements + 1,
            ..General::default()
        };
        let mut value = 1_000_000u64;
        let mut next = || {
            value += 1;
            value
        };
        new.max_client_conn = next() as usize;
        new.max_user_connections = next() as u32;
        new.max_message_size = next() as usize;
        new.checkout_timeout_ms = next();
        new.connect_timeout_ms = next();
        new.idle_timeout_ms = next();
        new.server_lifetime_ms = next();
        new.shutdown_timeout_ms = next();
        new.cancel_timeout_ms = next();
        new.idle_transaction_timeout_ms = next();
        new.client_idle_timeout_ms = next();
        new.query_timeout_ms = next();
        new.transaction_timeout_ms = next();
        new.server_login_retry_ms = next();
        new.stats_period_ms = next();
        let tree = |g: &General| toml::Value::try_from(g).unwrap();
        let live = live_general(&running, &new);
        let mut taken: Vec<String> = diff::changed_keys(&tree(&running), &tree(&live))
            .into_iter()
            .map(|k| k[0].clone())
            .collect();
        taken.sort();
        let mut expected: Vec<String> = LIVE_GENERAL.iter().map(|s| s.to_string()).collect();
        expected.sort();
        assert_eq!(taken, expected);
        // Everything else stays as it started.
        let left: Vec<_> = diff::changed_keys(&tree(&live), &tree(&new));
        assert_eq!(left.len(), 4, "{left:?}");
    }
}
