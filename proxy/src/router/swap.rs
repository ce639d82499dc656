//! A pool's router, replaced while traffic flows.
//!
//! `SIGHUP` reloads the routing policies (see `crate::reload`): the new chain is compiled and
//! checked first, then published here in one atomic store. A route call loads the current
//! router (an `arc-swap` load: no lock, no allocation) and holds it only for that call, so
//! a client's next transaction uses the new policy while the transaction in flight keeps the
//! server it has: routing happens only when a client needs a server. The old chain is freed
//! when its last call returns; its per-worker instances go with it (see `wasm::instance`).

use super::{Route, RouteRequest, Router, RouterReport};
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// The router of one pool, swappable at runtime. Calls go to whichever router was current
/// when they began.
///
/// Cost per routed transaction: one `arc-swap` load (measured with callgrind: about 100
/// instructions of the ~5,900 a transaction costs the proxy in user space, with
/// `reads_requests` answered from a copy so that it needs no load of its own).
pub struct SwappableRouter {
    current: ArcSwap<Arc<dyn Router>>,
    /// The current router's `reads_requests()`, stored before it is published. A call that
    /// reads it just before a swap may build a request the new router does not need, or,
    /// for that one call, one without the SQL text: a policy chain treats a statement without
    /// text as one of unknown kind, which is never surely a read (the primary is safe).
    reads_requests: AtomicBool,
    /// Routers published by [`SwappableRouter::replace`] since start.
    swaps: AtomicU64,
    /// The traps of the routers replaced so far, so that the count reported covers the
    /// pool's life, not only the current chain's.
    replaced_traps: AtomicU64,
}

impl SwappableRouter {
    pub fn new(router: Arc<dyn Router>) -> Self {
        SwappableRouter {
            reads_requests: AtomicBool::new(router.reads_requests()),
            current: ArcSwap::from_pointee(router),
            swaps: AtomicU64::new(0),
            replaced_traps: AtomicU64::new(0),
        }
    }

    /// Publishes `router`: every call that starts from now on uses it.
    pub fn replace(&self, router: Arc<dyn Router>) {
        self.reads_requests
            .store(router.reads_requests(), Ordering::Relaxed);
        let old = self.current.swap(Arc::new(router));
        self.swaps.fetch_add(1, Ordering::Relaxed);
        // A call still running on the old chain may trap after this: that one is not counted.
        self.replaced_traps
            .fetch_add(old.report().traps, Ordering::Relaxed);
    }

    /// How many times a reload replaced the router since start.
    pub fn swaps(&self) -> u64 {
        self.swaps.load(Ordering::Relaxed)
    }

    /// The router in use now.
    pub fn current(&self) -> Arc<dyn Router> {
        Arc::clone(&self.current.load())
    }
}

impl Router for SwappableRouter {
    #[inline]
    fn route(&self, request: &RouteRequest<'_>) -> Route {
        self.current.load().route(request)
    }

    fn per_statement_in_session(&self) -> bool {
        self.current.load().per_statement_in_session()
    }

    #[inline]
    fn reads_requests(&self) -> bool {
        self.reads_requests.load(Ordering::Relaxed)
    }

    fn session_closed(&self, session_id: i32) {
        self.current.load().session_closed(session_id)
    }

    /// The current chain, with the traps of every chain since start.
    fn report(&self) -> RouterReport {
        let mut report = self.current.load().report();
        report.traps += self.replaced_traps.load(Ordering::Relaxed);
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::PrimaryOnly;

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

    #[test]
    fn traps_are_counted_across_replacements() {
        let r = SwappableRouter::new(Arc::new(Trapped(3)));
        assert_eq!(r.report().traps, 3);
        r.replace(Arc::new(Trapped(1)));
        assert_eq!(r.report().traps, 4);
        assert_eq!(r.report().policies, ["p.wasm"]);
        r.replace(Arc::new(PrimaryOnly));
        assert_eq!(r.report().traps, 4);
        assert_eq!(r.swaps(), 2);
    }

    #[test]
    fn calls_after_a_replace_use_the_new_router() {
        let hint = std::cell::Cell::new(crate::router::Hint::default());
        let r = SwappableRouter::new(Arc::new(PrimaryOnly));
        assert_eq!(r.route(&request(&hint)), Route::Primary);
        assert!(!r.reads_requests());
        let held = r.current();
        r.replace(Arc::new(To(2)));
        assert_eq!(r.route(&request(&hint)), Route::Backend(2));
        assert!(r.reads_requests());
        assert_eq!(r.swaps(), 1);
        // A router taken before the swap is still whole.
        assert_eq!(held.route(&request(&hint)), Route::Primary);
    }
}
