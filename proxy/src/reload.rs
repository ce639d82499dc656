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

use crate::pool::Pools;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a reload did, for the log and for tests.
#[derive(Debug)]
pub enum Outcome {
    /// The policies were published; the notes name pools left as they were.
    Reloaded { notes: Vec<String> },
    /// Nothing changed: the config or a policy was refused.
    Refused(String),
}

/// Reads `path` and publishes its routing policies in `pools`. Blocking: it compiles.
pub fn reload_policies(path: &Path, pools: &Pools) -> Outcome {
    let config = match crate::config::load(path) {
        Ok(c) => c,
        Err(e) => return Outcome::Refused(format!("invalid config: {e}")),
    };
    match pools.reload_policies(&config) {
        Ok(notes) => Outcome::Reloaded { notes },
        Err(e) => Outcome::Refused(format!("{}: {e}", path.display())),
    }
}

/// `SIGHUP`s caught from the moment this is made, and the config file they reload: made
/// before the proxy binds its port, so that a `SIGHUP` sent while it starts (policies may
/// take seconds to compile) is kept for later, not the default action that ends the process.
pub struct Reloads {
    path: PathBuf,
    hangups: tokio::signal::unix::Signal,
}

impl Reloads {
    /// Starts catching `SIGHUP` (inside a tokio runtime).
    pub fn catch(path: PathBuf) -> std::io::Result<Reloads> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Reloads {
            path,
            hangups: signal(SignalKind::hangup())?,
        })
    }

    /// Reloads the routing policies of `pools` at each `SIGHUP`, until the process ends. Runs
    /// on the main thread's runtime; the loading runs on a blocking thread.
    pub async fn serve(mut self, pools: Arc<Pools>) {
        let path = self.path;
        while self.hangups.recv().await.is_some() {
            tracing::info!(config = %path.display(), "SIGHUP: reloading the routing policies");
            let (p, pools) = (path.clone(), pools.clone());
            let started = std::time::Instant::now();
            match tokio::task::spawn_blocking(move || reload_policies(&p, &pools)).await {
                Ok(Outcome::Reloaded { notes }) => {
                    for note in &notes {
                        tracing::warn!(%note, "reload");
                    }
                    tracing::info!(
                        ms = started.elapsed().as_millis() as u64,
                        "routing policies reloaded; other settings take effect at the next start"
                    );
                }
                Ok(Outcome::Refused(why)) => {
                    tracing::error!(error = %why, "reload refused; the running policies stay");
                }
                Err(e) => tracing::error!(error = %e, "reload failed; the running policies stay"),
            }
        }
    }
}
