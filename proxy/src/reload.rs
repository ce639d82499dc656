//! `SIGHUP`: reload the routing policies while clients are served.
//!
//! The config file is read and validated again; each pool's policies are compiled and checked
//! (imports, `init` on a canary) off the tokio workers; only when all of them load are they
//! published, pool by pool, each in one atomic swap (see `router::SwappableRouter`). A
//! config that does not validate, or a policy that does not load, changes nothing: the error
//! is logged, naming the key or the plugin, and the running policies stay.
//!
//! Only the routing policies reload (`policies`, `write_functions`, `fallback_reads`, the
//! servers' `weight`, `plugin_deadline_ms`, `plugin_memory_mb`); other settings take effect
//! at the next start.

use crate::config::diff;
use crate::pool::Pools;
use crate::workers::Workers;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// Reads `path` and publishes its routing policies in `pools`. `running` is the config file
/// the proxy started with, as a TOML tree: the keys that differ from it and do not reload are
/// reported. Blocking: it compiles.
pub fn reload_policies(path: &Path, pools: &Pools, running: Option<&toml::Value>) -> Outcome {
    // Read once: the policies and the list of unapplied keys come from the same text.
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return Outcome::Refused(format!("cannot read {}: {e}", path.display())),
    };
    let config = match crate::config::parse(&text, path) {
        Ok(c) => c,
        Err(e) => return Outcome::Refused(format!("invalid config: {e}")),
    };
    let notes = match pools.reload_policies(&config) {
        Ok(notes) => notes,
        Err(e) => return Outcome::Refused(format!("{}: {e}", path.display())),
    };
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

/// Whether a reload applies a change to this key: the routing policies and what only they use.
fn reloads(key: &[String]) -> bool {
    let k: Vec<&str> = key.iter().map(String::as_str).collect();
    match k.as_slice() {
        ["general", "plugin_deadline_ms" | "plugin_memory_mb"] => true,
        ["pools", _, "policies", ..] | ["pools", _, "write_functions" | "fallback_reads", ..] => {
            true
        }
        ["pools", _, "servers", server, "weight"] => server.starts_with('['),
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

    /// Reloads the routing policies of `pools` at each `SIGHUP`, until the process ends. Runs
    /// on the main thread's runtime; the loading runs on a blocking thread. After a reload each
    /// of the `workers` drops its instances of the replaced policies.
    pub async fn serve(mut self, pools: Arc<Pools>, workers: Arc<Workers>) {
        let path = self.path;
        let running = Arc::new(self.running);
        while self.hangups.recv().await.is_some() {
            tracing::info!(config = %path.display(), "SIGHUP: reloading the routing policies");
            let (p, pools, running) = (path.clone(), pools.clone(), running.clone());
            let started = std::time::Instant::now();
            let reload = move || reload_policies(&p, &pools, running.as_ref().as_ref());
            match tokio::task::spawn_blocking(reload).await {
                Ok(Outcome::Reloaded { notes, unapplied }) => {
                    for note in &notes {
                        tracing::warn!(%note, "reload");
                    }
                    for key in &unapplied {
                        tracing::warn!(%key, "changed in the config file; takes effect at the next start");
                    }
                    tracing::info!(
                        ms = started.elapsed().as_millis() as u64,
                        "routing policies reloaded; other settings take effect at the next start"
                    );
                    sweep(&workers);
                }
                Ok(Outcome::Refused(why)) => {
                    tracing::error!(error = %why, "reload refused; the running policies stay");
                }
                Err(e) => tracing::error!(error = %e, "reload failed; the running policies stay"),
            }
        }
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
    fn only_policy_keys_reload() {
        for k in [
            "pools.app.policies",
            "pools.app.policies[0].config",
            "pools.app.write_functions",
            "pools.app.fallback_reads",
            "pools.app.servers[1].weight",
            "general.plugin_deadline_ms",
        ] {
            assert!(reloads(&key(k)), "{k}");
        }
        for k in [
            "pools.app",
            "pools.app.servers",
            "pools.app.servers[1].port",
            "pools.app.pool_size",
            "pools.app.users.alice.password",
            "general.query_timeout_ms",
        ] {
            assert!(!reloads(&key(k)), "{k}");
        }
    }
}
