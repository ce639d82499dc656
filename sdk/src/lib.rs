//! The Switchyard routing-policy SDK.
//!
//! A policy is a plain Rust type implementing [`Policy`]; [`export_policy!`] turns it into the
//! WebAssembly component Switchyard loads. The contract is `wit/policy.wit`; this crate hides
//! wit-bindgen and keeps the policy instance in a thread-local (WebAssembly is single-threaded),
//! so policy code needs no `unsafe` and no `static mut`.
//!
//! ```
//! use switchyard_sdk::{export_policy, Candidates, Decision, Policy, Query};
//!
//! struct AlwaysPrimary;
//! impl Policy for AlwaysPrimary {
//!     fn init(_config: &str) -> Result<Self, String> { Ok(AlwaysPrimary) }
//!     fn route(&mut self, _q: &Query, _c: Candidates) -> Decision { Decision::Primary }
//! }
//! export_policy!(AlwaysPrimary);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2` (crate type `cdylib`). Because the
//! trait is plain Rust, policies are unit-tested natively with `cargo test`; only the host
//! functions in [`host`] need the proxy (natively they panic if called).

mod candidates;
pub mod pick;
mod query;
pub mod text;

pub use candidates::Candidates;
pub use query::Query;

#[doc(hidden)]
pub mod __bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "routing-policy",
        pub_export_macro: true,
        default_bindings_module: "switchyard_sdk::__bindings",
        export_macro_name: "__export_routing_policy",
        additional_derives: [PartialEq],
    });
}

pub use __bindings::exports::switchyard::policy::policy::Guest as __Guest;
pub use __bindings::switchyard::policy::types::{
    Backend, Protocol, QueryFlags, Role, RouteHint, Session, SessionRouting, StatementKind,
    Topology,
};

/// What the host offers: logging, a monotonic clock, live backend load, the query's text.
pub mod host {
    pub use crate::__bindings::switchyard::policy::host::{
        idle, in_flight, log, now_ms, sql, Level,
    };
}

/// Where a query goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The pool's primary.
    Primary,
    /// A specific backend by id.
    Backend(u32),
    /// Keep only these candidates (a bit mask of backend ids) and let the next policy in the
    /// chain decide; after the last one the host balances among them.
    Narrow(u64),
    /// No opinion: the next policy decides.
    Abstain,
    /// Refuse the query: the client gets this message as an error; its session goes on.
    Reject(String),
}

#[doc(hidden)]
pub mod __export {
    use crate::__bindings::switchyard::policy::types::Decision as Wire;
    use std::cell::RefCell;

    std::thread_local! {
        static REJECTION: RefCell<String> = const { RefCell::new(String::new()) };
    }

    /// A decision as it crosses the boundary; a rejection's message waits for `rejection()`.
    pub fn decision(d: crate::Decision) -> Wire {
        match d {
            crate::Decision::Primary => Wire::Primary,
            crate::Decision::Backend(id) => Wire::Backend(id),
            crate::Decision::Narrow(mask) => Wire::Narrow(mask),
            crate::Decision::Abstain => Wire::Abstain,
            crate::Decision::Reject(message) => {
                REJECTION.with(|r| *r.borrow_mut() = message);
                Wire::Reject
            }
        }
    }

    /// The message of the last rejection.
    pub fn rejection() -> String {
        REJECTION.with(|r| std::mem::take(&mut *r.borrow_mut()))
    }
}

/// A routing policy.
pub trait Policy: Sized + 'static {
    /// Validates the `config` TOML text from switchyard.toml and builds the policy. The error
    /// text is shown to the operator.
    fn init(config: &str) -> Result<Self, String>;

    /// Decides where a query goes among `candidates`.
    fn route(&mut self, query: &Query, candidates: Candidates) -> Decision;

    /// How a session-mode pool routes with this policy: once per session (the default), or per
    /// statement outside transactions (the session then keeps one server per backend it used).
    fn session_routing(&self) -> SessionRouting {
        SessionRouting::PerSession
    }

    /// Say true if `route` decides from the query's `kind`, `flags`, `protocol` and `hint` and
    /// the candidates alone (plus the config and the topology): not from `session_id`, the
    /// time, live load, or what earlier calls saw. The host then asks each distinct question
    /// once per topology and answers repeats itself, which takes the component call off the
    /// query path. Calls that read `Query::sql()` or a host function are never reused, so a
    /// policy that reads the text only now and then may still say true. Default: false.
    fn deterministic(&self) -> bool {
        false
    }

    /// Say false if the policy does not use [`Policy::session_opened`] and
    /// [`Policy::session_closed`]: the host then does not call them, and a login costs the
    /// policy nothing. Default: true.
    fn session_events(&self) -> bool {
        true
    }

    /// The pool's backends changed (also called before the first `route`).
    fn topology_changed(&mut self, _topology: &Topology) {}

    /// A session begins (before its first `route` on this instance).
    fn session_opened(&mut self, _session: &Session) {}

    /// A session ended.
    fn session_closed(&mut self, _id: u32) {}
}

/// Exports a [`Policy`] type as the component's `policy` interface.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        #[allow(dead_code)]
        struct __SwitchyardPolicyExport;

        ::std::thread_local! {
            static __SWITCHYARD_POLICY: ::std::cell::RefCell<::std::option::Option<$policy>> =
                const { ::std::cell::RefCell::new(::std::option::Option::None) };
        }

        #[allow(dead_code)]
        fn __switchyard_with<R>(f: impl FnOnce(&mut $policy) -> R, default: R) -> R {
            __SWITCHYARD_POLICY.with(|p| match p.borrow_mut().as_mut() {
                ::std::option::Option::Some(p) => f(p),
                ::std::option::Option::None => default,
            })
        }

        impl $crate::__Guest for __SwitchyardPolicyExport {
            fn init(
                config: ::std::string::String,
            ) -> ::std::result::Result<$crate::__bindings::switchyard::policy::types::Settings, ::std::string::String> {
                let policy = <$policy as $crate::Policy>::init(&config)?;
                let settings = $crate::__bindings::switchyard::policy::types::Settings {
                    session_routing: $crate::Policy::session_routing(&policy),
                    deterministic: $crate::Policy::deterministic(&policy),
                    session_events: $crate::Policy::session_events(&policy),
                };
                __SWITCHYARD_POLICY.with(|p| *p.borrow_mut() = ::std::option::Option::Some(policy));
                ::std::result::Result::Ok(settings)
            }
            fn topology_changed(topology: $crate::Topology) {
                __switchyard_with(|p| $crate::Policy::topology_changed(p, &topology), ())
            }
            fn session_opened(session: $crate::Session) {
                __switchyard_with(|p| $crate::Policy::session_opened(p, &session), ())
            }
            fn session_closed(id: u32) {
                __switchyard_with(|p| $crate::Policy::session_closed(p, id), ())
            }
            fn route(
                query: $crate::__bindings::switchyard::policy::types::Query,
                candidates: u64,
            ) -> $crate::__bindings::switchyard::policy::types::Decision {
                let query = $crate::Query::__from_host(query);
                $crate::__export::decision(__switchyard_with(
                    |p| $crate::Policy::route(p, &query, $crate::Candidates(candidates)),
                    $crate::Decision::Abstain,
                ))
            }
            fn rejection() -> ::std::string::String {
                $crate::__export::rejection()
            }
        }

        // Component exports exist only in the WebAssembly build; natively the policy is a
        // plain library for `cargo test`.
        #[cfg(target_arch = "wasm32")]
        $crate::__bindings::__export_routing_policy!(
            __SwitchyardPolicyExport with_types_in $crate::__bindings
        );
    };
}
