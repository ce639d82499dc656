//! The wasmtime Engine (its epoch ticker is `ticker`), and plugin loading.

use super::bindings::RoutingPolicyPre;
use super::host::HostState;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use thiserror::Error;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine};

use super::ticker::EPOCH_TICK;

/// Epochs to allow a call of `deadline`: rounded up, plus one because the next tick may come at
/// any moment after the call starts. The expiry then starts the CPU-time check of
/// [`cpu_deadline`](super::cpu_deadline), which stops a call that keeps running.
pub fn deadline_ticks(deadline: Duration) -> u64 {
    let tick = EPOCH_TICK.as_millis();
    (deadline.as_millis().div_ceil(tick) + 1) as u64
}

/// Imports a plugin may have besides the contract: the WASI interfaces Rust's standard library
/// links. They are given functions that trap, so a plugin can link std but cannot do I/O.
const ALLOWED_IMPORT_PREFIXES: [&str; 8] = [
    "switchyard:policy/",
    // Seeds std's HashMap; answered with a random seed, not a capability.
    "wasi:random/insecure-seed",
    "wasi:io/",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
];
const ALLOWED_IMPORT_PREFIX_TERMINAL: &str = "wasi:cli/terminal-";

/// Why a plugin cannot be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("plugin {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("plugin {path}: not a valid component: {message}")]
    Compile { path: PathBuf, message: String },
    #[error("plugin {path}: imports `{import}`, which plugins may not use (only the switchyard:policy host interface and the WASI interfaces std links, which trap)")]
    ForbiddenImport { path: PathBuf, import: String },
    #[error("plugin {path}: does not implement switchyard:policy/policy@0.2.0: {message}")]
    Contract { path: PathBuf, message: String },
    #[error("plugin {path}: refused its config: {message}")]
    Init { path: PathBuf, message: String },
}

/// The process's wasmtime Engine, with its epoch ticker thread.
pub struct PluginEngine {
    pub engine: Engine,
}

impl PluginEngine {
    /// The shared engine, created (with its ticker) on first use.
    pub fn get() -> &'static PluginEngine {
        static ENGINE: OnceLock<PluginEngine> = OnceLock::new();
        ENGINE.get_or_init(|| {
            let mut config = Config::new();
            config
                // On by default; costs 1.4-3x per call and we need no async component model.
                .concurrency_support(false)
                .epoch_interruption(true)
                .max_wasm_stack(512 * 1024)
                .memory_reservation(128 << 20);
            let engine = Engine::new(&config).expect("the engine config is valid");
            super::ticker::spawn(&engine);
            PluginEngine { engine }
        })
    }
}

/// A compiled, checked plugin with its config; instances are made from it per worker.
pub struct LoadedPlugin {
    /// The file name, for logs and errors.
    pub name: Arc<str>,
    pub pre: RoutingPolicyPre<HostState>,
    pub config: String,
    pub memory_bytes: usize,
    /// The policy asked (from `init`) to route each statement of session-mode sessions.
    pub per_statement_in_session: bool,
}

impl LoadedPlugin {
    /// Compiles `path`, checks its imports and the contract, and runs `init(config)` once on a
    /// scratch instance.
    pub fn load(
        path: &Path,
        config: String,
        memory_bytes: usize,
    ) -> Result<Arc<LoadedPlugin>, LoadError> {
        let engine = &PluginEngine::get().engine;
        let p = || path.to_owned();
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read { path: p(), source })?;
        let component =
            super::compiled::component(engine, path, bytes).map_err(|e| LoadError::Compile {
                path: p(),
                message: format!("{e:#}"),
            })?;
        for (import, _) in component.component_type().imports(engine) {
            let allowed = ALLOWED_IMPORT_PREFIXES
                .iter()
                .any(|a| import.starts_with(a))
                || import.starts_with(ALLOWED_IMPORT_PREFIX_TERMINAL);
            if !allowed {
                return Err(LoadError::ForbiddenImport {
                    path: p(),
                    import: import.to_owned(),
                });
            }
        }
        let contract = |e: wasmtime::Error| LoadError::Contract {
            path: p(),
            message: format!("{e:#}"),
        };
        let mut linker: Linker<HostState> = Linker::new(engine);
        super::bindings::RoutingPolicy::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )
        .map_err(contract)?;
        for (import, _) in component.component_type().imports(engine) {
            if import.starts_with("wasi:random/insecure-seed") {
                let seed: (u64, u64) = (rand::random(), rand::random());
                linker
                    .instance(import)
                    .and_then(|mut i| i.func_wrap("insecure-seed", move |_, ()| Ok((seed,))))
                    .map_err(contract)?;
            }
        }
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(contract)?;
        let instance_pre = linker.instantiate_pre(&component).map_err(contract)?;
        let pre = RoutingPolicyPre::new(instance_pre).map_err(contract)?;
        let name: Arc<str> = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string())
            .into();
        let mut plugin = LoadedPlugin {
            name,
            pre,
            config,
            memory_bytes,
            per_statement_in_session: false,
        };
        // The canary: a scratch instance must accept the config; its settings hold for all.
        let canary = super::instance::Live::new(&plugin, Arc::new(Vec::new()), None);
        match canary {
            Ok(live) => {
                plugin.per_statement_in_session = live.per_statement_in_session;
                Ok(Arc::new(plugin))
            }
            Err(super::instance::InstanceError::Init(message)) => {
                Err(LoadError::Init { path: p(), message })
            }
            Err(super::instance::InstanceError::Trap(e)) => Err(LoadError::Init {
                path: p(),
                message: format!("trapped during init: {e:#}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_gets_at_least_its_deadline() {
        // 5 ms ticks: 5 ms -> 2 ticks (stopped after 5-10 ms), 20 ms -> 5, 1 ms -> 2.
        assert_eq!(deadline_ticks(Duration::from_millis(5)), 2);
        assert_eq!(deadline_ticks(Duration::from_millis(20)), 5);
        assert_eq!(deadline_ticks(Duration::from_millis(1)), 2);
        assert_eq!(deadline_ticks(Duration::from_millis(6)), 3);
    }
}
