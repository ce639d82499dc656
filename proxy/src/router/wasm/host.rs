//! The host side of the contract: the only functions a plugin can call.

use super::bindings::switchyard::policy::host::{Host, Level};
use super::bindings::switchyard::policy::types;
use super::cpu_deadline::CpuDeadline;
use crate::pool::Servers;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use wasmtime::{StoreLimits, StoreLimitsBuilder};

/// Per-Store state: the pool's servers (for live load), the memory limit, and the text of the
/// query being routed.
pub struct HostState {
    pub plugin: Arc<str>,
    pub servers: Servers,
    pub limits: StoreLimits,
    /// What `sql()` answers: copied in per call (a memcpy into a kept buffer, cheaper than
    /// passing a string across the boundary that most calls never read).
    sql: String,
    /// The running call's deadline, counted in CPU time once the wall-clock one has passed.
    pub deadline: CpuDeadline,
    /// The running call asked for something that is not among a deterministic decision's
    /// inputs (the text, the clock, live load): its decision is not remembered.
    pub asked_host: bool,
}

impl HostState {
    pub fn new(plugin: Arc<str>, servers: Servers, memory_bytes: usize) -> Self {
        HostState {
            plugin,
            servers,
            limits: StoreLimitsBuilder::new()
                .memory_size(memory_bytes)
                .instances(16)
                .tables(16)
                .memories(4)
                .build(),
            sql: String::new(),
            deadline: CpuDeadline::default(),
            asked_host: false,
        }
    }

    /// Sets the text of the query about to be routed. A buffer grown by one huge statement
    /// is given back rather than kept for the life of the worker.
    pub fn set_sql(&mut self, sql: &str) {
        self.sql.clear();
        if self.sql.capacity() > 64 * 1024 && sql.len() <= 64 * 1024 {
            self.sql = String::new();
        }
        self.sql.push_str(sql);
    }
}

/// Log lines from plugins allowed per second, process-wide (the rest are counted, not shown).
const LOG_LINES_PER_SECOND: u64 = 20;
static LOG_WINDOW: AtomicU64 = AtomicU64::new(0);
static LOG_COUNT: AtomicU64 = AtomicU64::new(0);

/// Whether a rate-limited log line may be written now.
pub fn log_allowed() -> bool {
    let second = crate::clock::read_ms() / 1000;
    if LOG_WINDOW.swap(second, Ordering::Relaxed) != second {
        LOG_COUNT.store(0, Ordering::Relaxed);
    }
    LOG_COUNT.fetch_add(1, Ordering::Relaxed) < LOG_LINES_PER_SECOND
}

impl types::Host for HostState {}

impl Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        if !log_allowed() {
            return;
        }
        let plugin = &*self.plugin;
        match level {
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn now_ms(&mut self) -> u64 {
        self.asked_host = true;
        crate::clock::now_ms()
    }

    fn sql(&mut self) -> String {
        self.asked_host = true;
        self.sql.clone()
    }

    fn idle(&mut self, backend: u32) -> u32 {
        self.asked_host = true;
        self.servers
            .get(backend as usize)
            .map_or(0, |s| s.idle_count() as u32)
    }

    fn in_flight(&mut self, backend: u32) -> u32 {
        self.asked_host = true;
        self.servers
            .get(backend as usize)
            .map_or(0, |s| s.in_use() as u32)
    }
}
