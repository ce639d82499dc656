//! Routing policies as WebAssembly components (`wit/policy.wit`), run by wasmtime.
//!
//! * [`engine`]: one Engine per process, and loading: a
//!   component is compiled once, its imports checked against an allow-list, `init` run on a
//!   scratch instance so that a bad config is refused with the plugin's own message.
//! * [`compiled`]: compiled components by file, so a reload compiles only what changed.
//! * [`ticker`]: the thread that advances the epoch for call deadlines while plugins are
//!   called, parked while none are.
//! * [`cpu_deadline`]: a call is stopped for the CPU it used, not for time it spent waiting
//!   for a CPU.
//! * [`host`]: what a plugin may call (`log`, `now-ms`, `in-flight`); nothing else.
//! * [`instance`]: one Store + instance per plugin per worker thread, created lazily; a trap
//!   (panic, deadline, out of memory) drops it and the query takes the safe fallback.
//! * [`memo`]: a deterministic policy's decisions, kept per instance so a repeated question
//!   costs no call.
//! * [`chain`]: the [`Router`](super::Router) that runs a pool's policies in order.

mod bindings;
pub mod chain;
mod compiled;
pub mod cpu_deadline;
pub mod engine;
pub mod host;
mod instance;
mod memo;
pub mod ticker;

pub use chain::PolicyChain;
pub use engine::{LoadError, LoadedPlugin, PluginEngine};
pub use instance::sweep_retired;

/// A component that `cargo xtask test` built (it builds them before the tests), found from the
/// running test or bench binary: target/<profile>/deps/<binary> ->
/// target/wasm32-wasip2/release/<name>.wasm (so `CARGO_TARGET_DIR` is followed).
#[doc(hidden)]
pub fn built_component(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let target = exe.ancestors().nth(3).expect("target dir");
    let path = target
        .join("wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} not found: run `cargo xtask test`, which builds the components first",
        path.display()
    );
    path
}

#[cfg(test)]
use built_component as fixture;
