//! A pool's servers and its router, published as one unit and replaced while traffic flows.
//!
//! A router's decision names a server by its index in the list the router was built for, so
//! the two must never be seen apart. A reload (`SIGHUP` or the admin console's `RELOAD`, see
//! `crate::reload`) builds the new server list and the policy chain over it, checks them, then
//! publishes both in one atomic store here. A routing decision loads the current unit (an
//! `arc-swap` load: no lock, no allocation), routes and picks its server under that one load,
//! and lets go before it waits for anything. A client's next transaction uses the new unit
//! while the transaction in flight keeps the server it has: routing happens only when a client
//! needs a server. The old chain is freed when its last call returns; its per-worker instances
//! go with it (see `wasm::instance`).

use super::{ServerPool, Servers};
use crate::config::Role;
use crate::router::{Router, RouterReport};
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// One published state of a pool's routing: the servers and the router over them.
pub struct Backends {
    /// One pool per configured server, in config order (the router's backend indexes).
    pub servers: Servers,
    /// The index of the primary.
    pub primary: usize,
    pub router: Arc<dyn Router>,
}

impl Backends {
    /// `servers` must hold a primary (the config is validated).
    pub fn new(servers: Servers, router: Arc<dyn Router>) -> Self {
        let primary = servers
            .iter()
            .position(|s| s.role == Role::Primary)
            .expect("a validated pool has a primary");
        Backends {
            servers,
            primary,
            router,
        }
    }

    /// The primary's pool.
    pub fn primary_server(&self) -> &Arc<ServerPool> {
        &self.servers[self.primary]
    }
}

/// The current [`Backends`] of one pool, replaceable at runtime. Each decision uses whichever
/// unit was current when it began.
///
/// Cost per routed transaction: one `arc-swap` load (measured with callgrind: about 100
/// instructions of the ~5,900 a transaction costs the proxy in user space, with
/// `reads_requests` answered from a copy so that it needs no load of its own).
pub struct LiveBackends {
    current: ArcSwap<Backends>,
    /// The current router's `reads_requests()`, stored before it is published. A call that
    /// reads it just before a swap may build a request the new router does not need, or,
    /// for that one call, one without the SQL text: a policy chain treats a statement without
    /// text as one of unknown kind, which is never surely a read (the primary is safe).
    reads_requests: AtomicBool,
    /// Units published by [`LiveBackends::replace`] since start.
    swaps: AtomicU64,
    /// The traps of the routers replaced so far, so that the count reported covers the
    /// pool's life, not only the current chain's.
    replaced_traps: AtomicU64,
}

impl LiveBackends {
    pub fn new(backends: Backends) -> Self {
        LiveBackends {
            reads_requests: AtomicBool::new(backends.router.reads_requests()),
            current: ArcSwap::from_pointee(backends),
            swaps: AtomicU64::new(0),
            replaced_traps: AtomicU64::new(0),
        }
    }

    /// The unit in use now, for one decision: do not hold it across a wait (see `arc-swap`'s
    /// `Guard`).
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Backends>> {
        self.current.load()
    }

    /// The unit in use now, to keep.
    pub fn current(&self) -> Arc<Backends> {
        self.current.load_full()
    }

    /// Publishes `backends`: every decision that starts from now on uses it. Returns the unit
    /// it replaced.
    pub fn replace(&self, backends: Backends) -> Arc<Backends> {
        self.reads_requests
            .store(backends.router.reads_requests(), Ordering::Relaxed);
        let old = self.current.swap(Arc::new(backends));
        self.swaps.fetch_add(1, Ordering::Relaxed);
        // A call still running on the old chain may trap after this: that one is not counted.
        self.replaced_traps
            .fetch_add(old.router.report().traps, Ordering::Relaxed);
        old
    }

    /// How many times a reload replaced the unit since start.
    pub fn swaps(&self) -> u64 {
        self.swaps.load(Ordering::Relaxed)
    }

    /// Whether the current router reads the request's SQL and session details (see
    /// [`Router::reads_requests`]); one load.
    #[inline]
    pub fn reads_requests(&self) -> bool {
        self.reads_requests.load(Ordering::Relaxed)
    }

    /// Whether the current router routes statements in session mode.
    pub fn per_statement_in_session(&self) -> bool {
        self.current.load().router.per_statement_in_session()
    }

    /// Tells the current router a session ended.
    pub fn session_closed(&self, session_id: i32) {
        self.current.load().router.session_closed(session_id)
    }

    /// The current chain, with the traps of every chain since start.
    pub fn report(&self) -> RouterReport {
        let mut report = self.current.load().router.report();
        report.traps += self.replaced_traps.load(Ordering::Relaxed);
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::{PrimaryOnly, Route, RouteRequest};
    use std::time::Duration;

    /// Routes every request to one backend.
    struct To(usize);

    impl Router for To {
        fn route(&self, _: &RouteRequest<'_>) -> Route {
            Route::Backend(self.0)
        }
    }

    static NO_OPTIONS: crate::server::ParamList = crate::server::ParamList::new();

    fn request(hint: &std::cell::Cell<crate::router::Hint>) -> RouteRequest<'_> {
        RouteRequest {
            message: b"Q\0\0\0\x0dSELECT 1\0",
            sql: Some("SELECT 1"),
            session_id: 1,
            database: "d",
            user: "u",
            application_name: "",
            client_addr: None,
            options: &NO_OPTIONS,
            in_transaction: false,
            read_only_transaction: false,
            session_hint: hint,
        }
    }

    /// A router that reports some traps.
    struct Trapped(u64);

    impl Router for Trapped {
        fn route(&self, _: &RouteRequest<'_>) -> Route {
            Route::Primary
        }

        fn report(&self) -> RouterReport {
            RouterReport {
                policies: vec!["p.wasm".into()],
                traps: self.0,
            }
        }
    }

    fn servers(roles: &[Role]) -> Servers {
        let retry = Duration::from_secs(1);
        Arc::new(
            roles
                .iter()
                .enumerate()
                .map(|(i, r)| Arc::new(ServerPool::detached(&format!("s{i}"), *r, 1, retry)))
                .collect(),
        )
    }

    fn unit(roles: &[Role], router: Arc<dyn Router>) -> Backends {
        Backends::new(servers(roles), router)
    }

    #[test]
    fn traps_are_counted_across_replacements() {
        let r = LiveBackends::new(unit(&[Role::Primary], Arc::new(Trapped(3))));
        assert_eq!(r.report().traps, 3);
        r.replace(unit(&[Role::Primary], Arc::new(Trapped(1))));
        assert_eq!(r.report().traps, 4);
        assert_eq!(r.report().policies, ["p.wasm"]);
        r.replace(unit(&[Role::Primary], Arc::new(PrimaryOnly)));
        assert_eq!(r.report().traps, 4);
        assert_eq!(r.swaps(), 2);
    }

    #[test]
    fn decisions_after_a_replace_use_the_new_router_and_its_servers() {
        let hint = std::cell::Cell::new(crate::router::Hint::default());
        let r = LiveBackends::new(unit(&[Role::Primary], Arc::new(PrimaryOnly)));
        assert_eq!(r.load().router.route(&request(&hint)), Route::Primary);
        assert!(!r.reads_requests());
        let held = r.current();
        let replicas = [Role::Replica, Role::Primary, Role::Replica];
        r.replace(unit(&replicas, Arc::new(To(2))));
        let now = r.load();
        assert_eq!(now.router.route(&request(&hint)), Route::Backend(2));
        assert_eq!((now.servers.len(), now.primary), (3, 1));
        assert!(r.reads_requests());
        assert_eq!(r.swaps(), 1);
        // A unit taken before the swap is still whole.
        assert_eq!(held.router.route(&request(&hint)), Route::Primary);
        assert_eq!((held.servers.len(), held.primary), (1, 0));
    }
}
