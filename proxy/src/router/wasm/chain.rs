//! A pool's chain of policies as one [`Router`].
//!
//! Composition: the candidates start as every healthy backend. Each policy in order may decide
//! (`primary`, `backend(id)`, `reject`), which ends the chain, or `narrow` the candidates, or
//! `abstain`. When the chain ends without a decision, the host balances round robin among the
//! remaining candidates; when nothing narrowed them either, the query goes to the primary. So
//! `read-write-split` (narrows reads to replicas) followed by `least-outstanding` (picks the
//! least busy candidate) needs no code of its own.
//!
//! Calls saved: a policy that said `deterministic` is asked each distinct question once per
//! worker and topology (see [`memo`](super::memo)); one without `session-events` never hears
//! of sessions. So `read-write-split` costs a table lookup per query, and nothing per login.
//!
//! Failure: a policy that traps (panic, over `plugin_deadline_ms`, over its memory) or cannot be
//! instantiated sends the query to the primary, the safe place for anything (or, with
//! `fallback_reads = "replicas"`, a plain read outside a transaction to a healthy replica); its
//! instance on that worker is rebuilt on the next call, and `traps` counts it.

use super::bindings::switchyard::policy::types::{
    Backend, Decision, Protocol, Query, QueryFlags, Role as WitRole, RouteHint, Session,
    StatementKind as WitKind, Topology,
};
use super::engine::{deadline_ticks, LoadedPlugin};
use super::instance::{new_slot, retire, with_live, InstanceError, Live};
use crate::config::{FallbackReads, Role};
use crate::pool::Servers;
use crate::router::classify::{Classification, Classifier, StatementKind};
use crate::router::hints::{self, Hint};
use crate::router::{Route, RouteRequest, Router, RouterReport};
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
    servers: Servers,
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

impl Drop for PolicyChain {
    /// A reload replaced the chain and its last call has returned: every worker drops its
    /// instances of it at its next call.
    fn drop(&mut self) {
        retire(self.links.iter().map(|l| l.slot));
    }
}

impl PolicyChain {
    /// A chain over `servers` running `plugins` in order.
    pub fn new(
        plugins: Vec<Arc<LoadedPlugin>>,
        servers: Servers,
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

fn wit_hint(h: Hint) -> RouteHint {
    match h {
        Hint::None => RouteHint::None,
        Hint::Primary => RouteHint::Primary,
        Hint::Replica => RouteHint::Replica,
    }
}

impl Router for PolicyChain {
    fn route(&self, request: &RouteRequest<'_>) -> Route {
        let sql = request.sql.unwrap_or("");
        let (class, plain) = match request.sql {
            Some(sql) => self.classifier.classify_noting_plain(sql),
            // No text (not UTF-8, or a statement the proxy does not know): not surely a read.
            None => {
                let unknown = Classification {
                    kind: StatementKind::Other,
                    read_only_begin: false,
                };
                (unknown, false)
            }
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
        let mut hint = None;
        // Plain text has no comment (see `classify_noting_plain`).
        if !plain && sql.contains("/*") {
            flags |= QueryFlags::HAS_COMMENT;
            hint = hints::comment_hint(sql);
        }
        if class.kind == StatementKind::Session {
            if let Some(h) = hints::session_hint(sql) {
                request.session_hint.set(h);
            }
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
            hint: wit_hint(hint.unwrap_or_else(|| request.session_hint.get())),
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
                    if live.deterministic {
                        if let Some(d) = live.memo.recall(&query, candidates) {
                            return Ok(Ok(d));
                        }
                    }
                    if live.session_events && !live.sessions.contains(&session_id) {
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

    fn report(&self) -> RouterReport {
        RouterReport {
            policies: self
                .links
                .iter()
                .map(|l| l.plugin.name.to_string())
                .collect(),
            traps: self.traps.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture;
    use super::*;
    use crate::pool::ServerPool;
    use crate::server::ParamList;
    use std::cell::Cell;

    fn chain(plugin: &str, config: &str) -> PolicyChain {
        let plugin = LoadedPlugin::load(&fixture(plugin), config.into(), 16 << 20)
            .expect("load the component");
        let retry = Duration::from_secs(5);
        let servers = Arc::new(vec![
            Arc::new(ServerPool::detached("primary", Role::Primary, 1, retry)),
            Arc::new(ServerPool::detached("replica1", Role::Replica, 2, retry)),
            Arc::new(ServerPool::detached("replica2", Role::Replica, 3, retry)),
        ]);
        PolicyChain::new(
            vec![plugin],
            servers,
            vec![1, 1, 1],
            Classifier::default(),
            Duration::from_millis(20),
            FallbackReads::Primary,
        )
    }

    fn route(chain: &PolicyChain, session_id: i32, sql: &str, hint: &Cell<Hint>) -> Route {
        let mut message = vec![b'Q'];
        message.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
        message.extend_from_slice(sql.as_bytes());
        message.push(0);
        chain.route(&RouteRequest {
            message: &message,
            sql: Some(sql),
            session_id,
            database: "d",
            user: "u",
            application_name: "",
            client_addr: None,
            options: &ParamList::new(),
            in_transaction: false,
            read_only_transaction: false,
            session_hint: hint,
        })
    }

    #[test]
    fn a_deterministic_policy_is_asked_each_question_once() {
        // `flip` answers backend 1 and 2 in turn, call after call: a repeated answer where a
        // call would have flipped it came from the memo.
        let chain = chain("evil_policy", "flip");
        let hint = Cell::new(Hint::None);
        let read = route(&chain, 1, "SELECT 1", &hint);
        for (session, sql) in [
            (1, "SELECT 1"),
            (2, "select x FROM t WHERE id = 7"),
            (3, "SELECT 2"),
        ] {
            assert_eq!(route(&chain, session, sql, &hint), read, "{sql}");
        }
        // Another question gets a call, so the other backend, and is then remembered too.
        let ddl = route(&chain, 1, "CREATE TABLE t ()", &hint);
        assert_ne!(ddl, read);
        assert_eq!(route(&chain, 1, "DROP TABLE t", &hint), ddl);
        assert_eq!(route(&chain, 1, "SELECT 1", &hint), read);
        // A hint makes it another question.
        hint.set(Hint::Replica);
        let hinted = route(&chain, 1, "SELECT 1", &hint);
        assert_ne!(hinted, ddl);
        // A call that read the text (the fixture reads it for writes) is not kept.
        let first = route(&chain, 1, "INSERT INTO t VALUES (1)", &hint);
        assert_ne!(first, hinted);
        assert_ne!(route(&chain, 1, "INSERT INTO t VALUES (1)", &hint), first);
    }

    #[test]
    fn other_policies_are_called_every_time_and_never_hear_of_sessions_they_did_not_ask_for() {
        let chain = chain("round_robin", "");
        let hint = Cell::new(Hint::None);
        let a = route(&chain, 1, "SELECT 1", &hint);
        let b = route(&chain, 1, "SELECT 1", &hint);
        assert_ne!(a, b, "round robin alternates: no memo");
        let announced = with_live(
            chain.links[0].slot,
            || Err(InstanceError::Init("no instance".into())),
            |live| Ok(live.sessions.len()),
        )
        .expect("the instance exists");
        assert_eq!(announced, 0);
    }

    #[test]
    fn a_routed_set_sets_the_session_hint() {
        let chain = chain("round_robin", "");
        let hint = Cell::new(Hint::None);
        route(&chain, 1, "SET switchyard.route = 'replica'", &hint);
        assert_eq!(hint.get(), Hint::Replica);
        route(&chain, 1, "SET search_path = a", &hint);
        assert_eq!(hint.get(), Hint::Replica);
        route(&chain, 1, "set session switchyard.route to default", &hint);
        assert_eq!(hint.get(), Hint::None);
    }
}
