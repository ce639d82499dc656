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
pub mod hints;
pub mod pick;

pub use candidates::Candidates;

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

pub use __bindings::exports::switchyard::policy::policy::{Decision, Guest as __Guest};
pub use __bindings::switchyard::policy::types::{
    Backend, Protocol, Query, QueryFlags, Role, Session, StatementKind, Topology,
};

/// What the host offers: logging, a monotonic clock, live backend load.
pub mod host {
    pub use crate::__bindings::switchyard::policy::host::{in_flight, log, now_ms, Level};
}

/// A routing policy.
pub trait Policy: Sized + 'static {
    /// Validates the `config` TOML text from switchyard.toml and builds the policy. The error
    /// text is shown to the operator.
    fn init(config: &str) -> Result<Self, String>;

    /// Decides where a query goes among `candidates`.
    fn route(&mut self, query: &Query, candidates: Candidates) -> Decision;

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
            fn init(config: ::std::string::String) -> ::std::result::Result<(), ::std::string::String> {
                let policy = <$policy as $crate::Policy>::init(&config)?;
                __SWITCHYARD_POLICY.with(|p| *p.borrow_mut() = ::std::option::Option::Some(policy));
                ::std::result::Result::Ok(())
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
            fn route(query: $crate::Query, candidates: u64) -> $crate::Decision {
                __switchyard_with(
                    |p| $crate::Policy::route(p, &query, $crate::Candidates(candidates)),
                    $crate::Decision::Abstain,
                )
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
