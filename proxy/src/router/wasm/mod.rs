//! Routing policies as WebAssembly components (`wit/policy.wit`), run by wasmtime.
//!
//! * [`engine`]: one Engine per process, an epoch ticker for call deadlines, and loading: a
//!   component is compiled once, its imports checked against an allow-list, `init` run on a
//!   scratch instance so that a bad config is refused with the plugin's own message.
//! * [`cpu_deadline`]: a call is stopped for the CPU it used, not for time it spent waiting
//!   for a CPU.
//! * [`host`]: what a plugin may call (`log`, `now-ms`, `in-flight`); nothing else.
//! * [`instance`]: one Store + instance per plugin per worker thread, created lazily; a trap
//!   (panic, deadline, out of memory) drops it and the query takes the safe fallback.
//! * [`chain`]: the [`Router`](super::Router) that runs a pool's policies in order.

mod bindings;
pub mod chain;
pub mod cpu_deadline;
pub mod engine;
pub mod host;
mod instance;

pub use chain::PolicyChain;
pub use engine::{LoadError, LoadedPlugin, PluginEngine};
