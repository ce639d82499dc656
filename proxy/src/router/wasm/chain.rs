//! A pool's chain of policies as one [`Router`].
//!
//! Composition: the candidates start as every healthy backend. Each policy in order may decide
//! (`primary`, `backend(id)`, `reject`), which ends the chain, or `narrow` the candidates, or
//! `abstain`. When the chain ends without a decision, the host balances round robin among the
//! remaining candidates; when nothing narrowed them either, the query goes to the primary. So
//! `read-write-split` (narrows reads to replicas) followed by `least-outstanding` (picks the
//! least busy candidate) needs no code of its own.
//!
//! Failure: a policy that traps (panic, over `plugin_deadline_ms`, over its memory) or cannot be
//! instantiated sends the query to the primary, the safe place for anything (or, with
//! `fallback_reads = "replicas"`, a plain read outside a transaction to a healthy replica); its
//! instance on that worker is rebuilt on the next call, and `traps` counts it.

use super::bindings::switchyard::policy::types::{
    Backend, Decision, Protocol, Query, QueryFlags, Role as WitRole, Session,
    StatementKind as WitKind, Topology,
};
use super::engine::{deadline_ticks, LoadedPlugin};
use super::instance::{new_slot, with_live, InstanceError, Live};
use crate::config::{FallbackReads, Role};
use crate::pool::ServerPool;
use crate::router::classify::{Classification, Classifier, StatementKind};
use crate::router::{Route, RouteRequest, Router};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One policy of a chain and its instance slot.
struct Link {
    plugin: Arc<LoadedPlugin>,
    slot: usize,
}

/// The routing policies of one (database, user) pool.
pub struct PolicyChain {
    links: Vec<Link>,
    servers: Arc<Vec<ServerPool>>,
    /// The backends as plugins see them (name, role, weight).
    backends: Vec<(String, WitRole, u32)>,
    /// The topology's generation: bumped when a backend's health changes.
    generation: AtomicU64,
    /// The healthy-backend mask of that generation.
    healthy: AtomicU64,
    classifier: Classifier,
    deadline_ticks: u64,
    /// The replicas, as a mask (for the fallback of reads).
    replicas: u64,
    fallback_reads: FallbackReads,
    all: u64,
    next: AtomicUsize,
    /// Calls that trapped or failed, since start.
    pub traps: AtomicU64,
}

impl PolicyChain {
    /// A chain over `servers` running `plugins` in order.
    pub fn new(
        plugins: Vec<Arc<LoadedPlugin>>,
        servers: Arc<Vec<ServerPool>>,
        weights: Vec<u32>,
        classifier: Classifier,
        deadline: Duration,
        fallback_reads: FallbackReads,
    ) -> Self {
        let backends: Vec<(String, WitRole, u32)> = servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let role = match s.role {
                    Role::Primary => WitRole::Primary,
                    Role::Replica => WitRole::Replica,
                };
                (s.name.clone(), role, weights.get(i).copied().unwrap_or(1))
            })
            .collect();
        let n = backends.len().min(64);
        let replicas = backends
            .iter()
            .take(64)
            .enumerate()
            .filter(|(_, b)| b.1 == WitRole::Replica)
            .fold(0u64, |m, (i, _)| m | 1 << i);
        PolicyChain {
            links: plugins
                .into_iter()
                .map(|plugin| Link {
                    plugin,
                    slot: new_slot(),
                })
                .collect(),
            servers,
            backends,
            generation: AtomicU64::new(1),
            healthy: AtomicU64::new(if n == 64 { u64::MAX } else { (1u64 << n) - 1 }),
            classifier,
            deadline_ticks: deadline_ticks(deadline),
            replicas,
            fallback_reads,
            all: if n == 64 { u64::MAX } else { (1u64 << n) - 1 },
            next: AtomicUsize::new(0),
            traps: AtomicU64::new(0),
        }
    }

    fn trapped(&self, link: &Link, e: &InstanceError) {
        let n = self.traps.fetch_add(1, Ordering::Relaxed) + 1;
        if super::host::log_allowed() {
            let why = match e {
                InstanceError::Trap(t) => format!("{t:#}"),
                InstanceError::Init(m) => m.clone(),
            };
            tracing::warn!(plugin = %link.plugin.name, traps = n, error = %why, "routing policy failed; query sent to the primary");
        }
    }

    /// The backends healthy now, as a mask; a change starts a new topology generation. One
    /// atomic load per backend.
    fn healthy_now(&self) -> u64 {
        let now = crate::clock::now_ms();
        let mask = self
            .servers
            .iter()
            .take(64)
            .enumerate()
            .filter(|(_, s)| s.healthy(now))
            .fold(0u64, |m, (i, _)| m | 1 << i);
        if self.healthy.load(Ordering::Relaxed) != mask
            && self.healthy.swap(mask, Ordering::Relaxed) != mask
        {
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
        mask
    }

    /// Runs `f` with the topology record, built on demand (pushes are rare).
    fn with_topology<R>(&self, f: impl FnOnce(&Topology<'_>) -> R) -> R {
        let healthy = self.healthy.load(Ordering::Relaxed);
        let backends: Vec<Backend<'_>> = self
            .backends
            .iter()
            .enumerate()
            .map(|(i, (name, role, weight))| Backend {
                id: i as u32,
                name,
                role: *role,
                healthy: i < 64 && healthy & (1 << i) != 0,
                weight: *weight,
            })
            .collect();
        f(&Topology {
            generation: self.generation.load(Ordering::Relaxed),
            backends: &backends,
        })
    }

    /// Round robin among `candidates`; the primary when there are none.
    fn balance(&self, candidates: u64) -> Route {
        let n = candidates.count_ones() as usize;
        if n == 0 {
            return Route::Primary;
        }
        let pick = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut bits = candidates;
        for _ in 0..pick {
            bits &= bits - 1;
        }
        Route::Backend(bits.trailing_zeros() as usize)
    }

    fn make(&self, link: &Link) -> Result<Live, InstanceError> {
        self.with_topology(|t| Live::new(&link.plugin, self.servers.clone(), Some(t)))
    }
}

fn wit_kind(k: StatementKind) -> WitKind {
    match k {
        StatementKind::Read => WitKind::Read,
        StatementKind::Session => WitKind::Session,
        StatementKind::TransactionControl => WitKind::TransactionControl,
        StatementKind::Other => WitKind::Other,
        StatementKind::Ddl => WitKind::Ddl,
        StatementKind::Write => WitKind::Write,
    }
}

impl Router for PolicyChain {
    fn route(&self, request: &RouteRequest<'_>) -> Route {
        let sql = request.sql.unwrap_or("");
        let class = match request.sql {
            Some(sql) => self.classifier.classify(sql),
            // No text (not UTF-8, or a statement the proxy does not know): not surely a read.
            None => Classification {
                kind: StatementKind::Other,
                read_only_begin: false,
            },
        };
        let mut flags = QueryFlags::empty();
        if request.in_transaction {
            flags |= QueryFlags::IN_TRANSACTION;
        }
        if request.read_only_transaction {
            flags |= QueryFlags::READ_ONLY_TRANSACTION;
        }
        if class.read_only_begin {
            flags |= QueryFlags::BEGINS_READ_ONLY;
        }
        if sql.contains("/*") {
            flags |= QueryFlags::HAS_COMMENT;
        }
        let query = Query {
            session_id: request.session_id as u32,
            kind: wit_kind(class.kind),
            flags,
            protocol: if request.message.first() == Some(&b'Q') {
                Protocol::Simple
            } else {
                Protocol::Extended
            },
            sql_length: sql.len() as u32,
        };
        let healthy = self.healthy_now();
        let mut candidates = self.all & healthy;
        let generation = self.generation.load(Ordering::Relaxed);
        let mut narrowed = false;
        for link in &self.links {
            let session_id = query.session_id;
            let result = with_live(
                link.slot,
                || self.make(link),
                |live| {
                    if live.topology_generation != generation {
                        self.with_topology(|t| live.topology(t, self.deadline_ticks))?;
                    }
                    if !live.sessions.contains(&session_id) {
                        let options: Vec<(&str, &str)> = request.options.iter().collect();
                        let client_addr = request
                            .client_addr
                            .map(|a| a.to_string())
                            .unwrap_or_default();
                        let session = Session {
                            id: session_id,
                            user: request.user,
                            database: request.database,
                            application_name: request.application_name,
                            client_addr: &client_addr,
                            options: &options,
                        };
                        live.session_opened(&session, self.deadline_ticks)?;
                    }
                    match live.route(query, sql, candidates, self.deadline_ticks)? {
                        // Rare: the message is fetched in a second call.
                        Decision::Reject => Ok(Err(live.rejection(self.deadline_ticks)?)),
                        d => Ok(Ok(d)),
                    }
                },
            );
            match result {
                Ok(Err(message)) => return Route::Reject(message),
                Ok(Ok(Decision::Primary)) => return Route::Primary,
                Ok(Ok(Decision::Backend(id))) => return Route::Backend(id as usize),
                Ok(Ok(Decision::Reject)) => unreachable!("turned into its message above"),
                Ok(Ok(Decision::Abstain)) => {}
                Ok(Ok(Decision::Narrow(mask))) => {
                    candidates &= mask;
                    narrowed = true;
                    if candidates == 0 {
                        return Route::Primary;
                    }
                }
                Err(e) => {
                    self.trapped(link, &e);
                    let read = class.kind == StatementKind::Read && !request.in_transaction;
                    if self.fallback_reads == FallbackReads::Replicas && read {
                        return self.balance(self.replicas & healthy);
                    }
                    return Route::Primary;
                }
            }
        }
        if !narrowed {
            return Route::Primary;
        }
        self.balance(candidates)
    }

    fn per_statement_in_session(&self) -> bool {
        self.links.iter().any(|l| l.plugin.per_statement_in_session)
    }

    fn session_closed(&self, session_id: i32) {
        for link in &self.links {
            // Only instances that exist on this thread; never create one to say goodbye.
            let _ = with_live(
                link.slot,
                || Err(InstanceError::Init(String::new())),
                |live| live.session_closed(session_id as u32, self.deadline_ticks),
            );
        }
    }
}
