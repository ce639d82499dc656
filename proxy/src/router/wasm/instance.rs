//! One live instance of a plugin on one worker thread.
//!
//! Instances are kept in a thread-local table indexed by a slot number that each (pool, plugin)
//! pair gets once. A call borrows the table only for the duration of the synchronous call; no
//! `.await` happens in between, so tasks moving between threads never share an instance.

use super::bindings::switchyard::policy::types::{
    Decision, Query, Session, SessionRouting, Topology,
};
use super::bindings::RoutingPolicy;
use super::cpu_deadline::thread_cpu_time;
use super::engine::LoadedPlugin;
use super::host::HostState;
use super::memo::Memo;
use super::ticker::CallMark;
use crate::pool::Servers;
use std::cell::RefCell;
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use wasmtime::{Store, UpdateDeadline};

/// Why an instance could not be made or used.
#[derive(Debug)]
pub enum InstanceError {
    /// The plugin's `init` returned this error.
    Init(String),
    /// A trap: panic, deadline, out of memory, or a call of a forbidden import.
    Trap(wasmtime::Error),
}

/// Hashes session ids, which the proxy issues in sequence (clients cannot choose them), with
/// one multiplication instead of SipHash: the set is probed on every routed query.
#[derive(Debug, Default)]
pub struct SessionIdHasher(u64);

impl Hasher for SessionIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A Store with an instance of the plugin in it.
pub struct Live {
    store: Store<HostState>,
    policy: RoutingPolicy,
    /// The topology generation this instance has seen.
    pub topology_generation: u64,
    /// Sessions already announced to this instance (looked up before every call when the
    /// policy wants session events).
    pub sessions: HashSet<u32, BuildHasherDefault<SessionIdHasher>>,
    /// What `init` asked for.
    pub per_statement_in_session: bool,
    /// `init` said `route` is deterministic: its decisions are kept in `memo`.
    pub deterministic: bool,
    /// `init` asked for `session-opened` and `session-closed`.
    pub session_events: bool,
    /// A deterministic policy's decisions since the last topology push.
    pub memo: Memo,
}

impl Live {
    /// Instantiates the plugin, runs `init`, and pushes the topology if given.
    pub fn new(
        plugin: &LoadedPlugin,
        servers: Servers,
        topology: Option<&Topology>,
    ) -> Result<Live, InstanceError> {
        let engine = plugin.pre.engine();
        let mut store = Store::new(
            engine,
            HostState::new(plugin.name.clone(), servers, plugin.memory_bytes),
        );
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|mut ctx| {
            let go_on = thread_cpu_time().is_some_and(|cpu| ctx.data_mut().deadline.on_expiry(cpu));
            Ok(if go_on {
                UpdateDeadline::Continue(1)
            } else {
                UpdateDeadline::Interrupt
            })
        });
        let (policy, settings) = {
            let _call = arm(&mut store, 1000);
            let policy = plugin
                .pre
                .instantiate(&mut store)
                .map_err(InstanceError::Trap)?;
            let settings = policy
                .switchyard_policy_policy()
                .call_init(&mut store, &plugin.config)
                .map_err(InstanceError::Trap)?
                .map_err(InstanceError::Init)?;
            (policy, settings)
        };
        let mut live = Live {
            store,
            policy,
            topology_generation: 0,
            sessions: HashSet::default(),
            per_statement_in_session: settings.session_routing == SessionRouting::PerStatement,
            deterministic: settings.deterministic,
            session_events: settings.session_events,
            memo: Memo::default(),
        };
        if let Some(t) = topology {
            live.topology(t, 1000)?;
        }
        Ok(live)
    }

    /// Pushes a topology.
    pub fn topology(&mut self, t: &Topology, deadline_ticks: u64) -> Result<(), InstanceError> {
        let _call = arm(&mut self.store, deadline_ticks);
        self.policy
            .switchyard_policy_policy()
            .call_topology_changed(&mut self.store, t.clone())
            .map_err(InstanceError::Trap)?;
        self.topology_generation = t.generation;
        self.memo.clear();
        Ok(())
    }

    /// Announces a session.
    pub fn session_opened(
        &mut self,
        s: &Session,
        deadline_ticks: u64,
    ) -> Result<(), InstanceError> {
        let _call = arm(&mut self.store, deadline_ticks);
        self.policy
            .switchyard_policy_policy()
            .call_session_opened(&mut self.store, s.clone())
            .map_err(InstanceError::Trap)?;
        self.sessions.insert(s.id);
        Ok(())
    }

    /// Tells the instance a session ended.
    pub fn session_closed(&mut self, id: u32, deadline_ticks: u64) -> Result<(), InstanceError> {
        if !self.sessions.remove(&id) {
            return Ok(());
        }
        let _call = arm(&mut self.store, deadline_ticks);
        self.policy
            .switchyard_policy_policy()
            .call_session_closed(&mut self.store, id)
            .map_err(InstanceError::Trap)
    }

    /// The routing call, bounded by `deadline_ticks` epochs. `sql` is what `host.sql()`
    /// answers during the call. A deterministic policy's decision is remembered unless the
    /// call asked the host for more than its inputs.
    pub fn route(
        &mut self,
        q: Query,
        sql: &str,
        candidates: u64,
        deadline_ticks: u64,
    ) -> Result<Decision, InstanceError> {
        let _call = arm(&mut self.store, deadline_ticks);
        let state = self.store.data_mut();
        state.set_sql(sql);
        state.asked_host = false;
        let decision = self
            .policy
            .switchyard_policy_policy()
            .call_route(&mut self.store, q, candidates)
            .map_err(InstanceError::Trap)?;
        if self.deterministic && !self.store.data().asked_host {
            self.memo.keep(&q, candidates, decision);
        }
        Ok(decision)
    }

    /// The message of the rejection `route` just returned.
    pub fn rejection(&mut self, deadline_ticks: u64) -> Result<String, InstanceError> {
        let _call = arm(&mut self.store, deadline_ticks);
        self.policy
            .switchyard_policy_policy()
            .call_rejection(&mut self.store)
            .map_err(InstanceError::Trap)
    }
}

/// Bounds the next call in `store`: `deadline_ticks` epochs of wall-clock time, then as much
/// again of CPU time (see `cpu_deadline`). Keep what it returns until the call is over: the
/// epoch ticker keeps ticking while it lives (see `ticker`). Calls do not nest.
#[inline]
#[must_use = "the ticker may park during a call that does not keep its CallMark"]
fn arm(store: &mut Store<HostState>, deadline_ticks: u64) -> CallMark {
    let call = CallMark::start();
    store.set_epoch_deadline(deadline_ticks);
    store.data_mut().deadline.arm(deadline_ticks);
    call
}

static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

/// A number for one (pool, plugin) pair, naming its instance on every worker thread. Never
/// reused, so a retired slot cannot be mistaken for a live one.
pub fn new_slot() -> usize {
    NEXT_SLOT.fetch_add(1, Ordering::Relaxed)
}

/// The slots of chains that are gone (a reload replaced them), in order of retirement. Each
/// worker drops its instances in them at its next call; instances hold up to
/// `plugin_memory_mb` each, so they must not outlive their chain.
static RETIRED: Mutex<Vec<usize>> = Mutex::new(Vec::new());
/// `RETIRED.len()`, read without the lock on every call.
static RETIRED_LEN: AtomicUsize = AtomicUsize::new(0);

/// Retires `slots`: their instances are dropped on every worker thread at its next call.
pub fn retire(slots: impl IntoIterator<Item = usize>) {
    let mut retired = RETIRED.lock().unwrap_or_else(|e| e.into_inner());
    retired.extend(slots);
    RETIRED_LEN.store(retired.len(), Ordering::Release);
}

/// One worker thread's instances, by slot.
struct Table {
    live: Vec<Option<Live>>,
    /// How much of `RETIRED` this thread has acted on.
    retired_seen: usize,
}

impl Table {
    /// Drops the instances of slots retired since the last look: one atomic load when none
    /// were (a lock only after a reload).
    fn drop_retired(&mut self) {
        if RETIRED_LEN.load(Ordering::Acquire) == self.retired_seen {
            return;
        }
        let retired = RETIRED.lock().unwrap_or_else(|e| e.into_inner());
        for &slot in &retired[self.retired_seen..] {
            if let Some(entry) = self.live.get_mut(slot) {
                *entry = None;
            }
        }
        self.retired_seen = retired.len();
    }
}

thread_local! {
    static LIVE: RefCell<Table> = const {
        RefCell::new(Table { live: Vec::new(), retired_seen: 0 })
    };
}

/// Runs `f` with this thread's instance in `slot`, creating it with `make` if there is none.
/// On any error the instance is dropped (a trap poisons its Store); the next call rebuilds it.
pub fn with_live<R>(
    slot: usize,
    make: impl FnOnce() -> Result<Live, InstanceError>,
    f: impl FnOnce(&mut Live) -> Result<R, InstanceError>,
) -> Result<R, InstanceError> {
    LIVE.with(|table| {
        let mut table = table.borrow_mut();
        table.drop_retired();
        let live = &mut table.live;
        if live.len() <= slot {
            live.resize_with(slot + 1, || None);
        }
        let entry = &mut live[slot];
        if entry.is_none() {
            *entry = Some(make()?);
        }
        let instance = entry.as_mut().expect("just made");
        let r = f(instance);
        if r.is_err() {
            *entry = None;
        }
        r
    })
}

/// Drops this thread's instances of retired slots now, rather than at its next call: a reload
/// asks each worker to, so that instances of a replaced chain do not stay on a worker that
/// makes no more policy calls (one whose pools now route without policies).
pub fn sweep_retired() {
    LIVE.with(|table| {
        if let Ok(mut table) = table.try_borrow_mut() {
            table.drop_retired();
        }
    });
}

/// How many instances this thread holds (for tests of retirement).
#[cfg(test)]
fn live_here() -> usize {
    LIVE.with(|t| t.borrow().live.iter().filter(|e| e.is_some()).count())
}

#[cfg(test)]
mod tests {
    use super::super::bindings::switchyard::policy::types::{
        Protocol, QueryFlags, RouteHint, StatementKind,
    };
    use super::super::engine::{deadline_ticks, PluginEngine};
    use super::super::fixture;
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn plain_read() -> Query {
        Query {
            session_id: 1,
            kind: StatementKind::Read,
            flags: QueryFlags::empty(),
            protocol: Protocol::Simple,
            hint: RouteHint::None,
            sql_length: 8,
        }
    }

    #[test]
    fn a_call_whose_thread_was_descheduled_is_not_stopped() {
        let plugin = LoadedPlugin::load(&fixture("evil_policy"), "slow".into(), 16 << 20)
            .expect("load the fixture");
        let mut live = Live::new(&plugin, Arc::new(Vec::new()), None).expect("instantiate");
        // While the call (10-20 ms of work, depending on the machine) runs, the epoch jumps 50
        // ticks, as it does when the worker thread is descheduled for 250 ms mid-call (a busy
        // machine, a throttled container). Without the CPU-time check the call would be stopped
        // at the jump, 21 ticks being its deadline. With it, the call has 100 ms of CPU after the
        // jump: five times its work, so a slow day does not stop it (a 20 ms deadline did, once
        // the fixture's loop took 19 ms).
        let engine = PluginEngine::get().engine.clone();
        let jumper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1));
            for _ in 0..50 {
                engine.increment_epoch();
            }
        });
        let query = plain_read();
        let decision = live.route(
            query,
            "SELECT 1 /* trouble */",
            0b11,
            deadline_ticks(Duration::from_millis(100)),
        );
        jumper.join().unwrap();
        match decision {
            Ok(Decision::Backend(1)) => {}
            Ok(other) => panic!("the call returned {other:?}"),
            Err(e) => panic!("the call was stopped: {e:?}"),
        }
        assert!(
            live.store.data().deadline.overran(),
            "the epoch jumped after the call ended: the fixture's work is too short"
        );
    }

    #[test]
    fn retired_slots_lose_their_instances_at_the_next_call() {
        let plugin = LoadedPlugin::load(&fixture("evil_policy"), "flip".into(), 16 << 20)
            .expect("load the fixture");
        let make = || Live::new(&plugin, Arc::new(Vec::new()), None);
        let (a, b) = (new_slot(), new_slot());
        with_live(a, make, |_| Ok(())).unwrap();
        with_live(b, make, |_| Ok(())).unwrap();
        assert_eq!(live_here(), 2);
        retire([a]);
        assert_eq!(
            live_here(),
            2,
            "dropped at the next call, not from another thread"
        );
        with_live(b, make, |_| Ok(())).unwrap();
        assert_eq!(live_here(), 1);
        retire([b]);
        with_live(new_slot(), make, |_| Ok(())).unwrap();
        assert_eq!(live_here(), 1, "only the new one is left");
        let c = new_slot();
        with_live(c, make, |_| Ok(())).unwrap();
        retire([c]);
        sweep_retired();
        assert_eq!(live_here(), 1, "swept without a call");
    }

    #[test]
    fn a_topology_push_empties_the_memo() {
        let plugin = LoadedPlugin::load(&fixture("evil_policy"), "flip".into(), 16 << 20)
            .expect("load the fixture");
        let mut live = Live::new(&plugin, Arc::new(Vec::new()), None).expect("instantiate");
        assert!(live.deterministic && live.session_events);
        let query = plain_read();
        let ticks = deadline_ticks(Duration::from_millis(20));
        let first = live.route(query, "SELECT 1", 0b111, ticks).unwrap();
        assert_eq!(live.memo.recall(&query, 0b111), Some(first));
        // A call that asked the host for the text is not kept.
        let write = Query {
            kind: StatementKind::Write,
            ..query
        };
        live.route(write, "INSERT INTO t VALUES (1)", 0b111, ticks)
            .unwrap();
        assert_eq!(live.memo.recall(&write, 0b111), None);
        let topology = Topology {
            generation: 2,
            backends: &[],
        };
        live.topology(&topology, ticks).unwrap();
        assert_eq!(live.memo.recall(&query, 0b111), None);
    }
}
