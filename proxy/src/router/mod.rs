//! The routing seam: which server handles the next transaction (or session).
//!
//! Every routing decision in the proxy comes from a [`Router`]. The built-in [`PrimaryOnly`] sends
//! everything to the primary; routing policies loaded as WebAssembly components implement the
//! same trait. Nothing else in the proxy chooses a server.

pub mod classify;
pub mod hints;
mod plain_select;
mod primary;
pub mod wasm;

pub use classify::{Classification, Classifier, StatementKind};
pub use hints::Hint;
pub use primary::PrimaryOnly;

/// What a router sees when a client needs a server.
#[derive(Debug)]
pub struct RouteRequest<'a> {
    /// The client message that needs a server, whole (tag, length, body): usually a `Query` or
    /// `Parse`, whose SQL text a policy may read.
    pub message: &'a [u8],
    /// The SQL text: of the `Query` or `Parse`, or of the prepared statement a `Bind` or
    /// `Describe` names.
    pub sql: Option<&'a str>,
    /// The client's proxy-issued session id (its cancel key pid).
    pub session_id: i32,
    pub database: &'a str,
    pub user: &'a str,
    pub application_name: &'a str,
    pub client_addr: Option<std::net::SocketAddr>,
    /// Startup parameters other than the tracked ones (`options=-c ...` split into pairs).
    pub options: &'a crate::server::ParamList,
    /// The client is inside a transaction block: the statement is the first after a `BEGIN`
    /// the proxy deferred.
    pub in_transaction: bool,
    /// ... and that transaction was declared `READ ONLY`.
    pub read_only_transaction: bool,
    /// The session's routing hint (see [`hints`]): set at login from the startup options, and
    /// by the router when it routes a `SET switchyard.route`.
    pub session_hint: &'a std::cell::Cell<Hint>,
}

/// A routing decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The pool's primary.
    Primary,
    /// A server by its index in the pool's `servers` list.
    Backend(usize),
    /// Any replica; the pool balances among them (the primary when there is none).
    AnyReplica,
    /// Refuse: the client gets this message as an ErrorResponse and the session goes on.
    Reject(String),
}

/// A routing policy. Called once per transaction in transaction mode and once per session in
/// session mode; it must not block.
pub trait Router: Send + Sync + 'static {
    fn route(&self, request: &RouteRequest<'_>) -> Route;

    /// In a session-mode pool, route each statement outside a transaction (the session keeps
    /// one server per backend it used) instead of once per session.
    fn per_statement_in_session(&self) -> bool {
        false
    }

    /// Whether `route` reads the request's SQL text and session details. A router that decides
    /// without them (like [`PrimaryOnly`]) returns false, and the proxy then skips finding and
    /// validating the text for every query: `sql` is `None` and `application_name` empty.
    fn reads_requests(&self) -> bool {
        true
    }

    /// A session ended (called on the thread that ran its routes).
    fn session_closed(&self, _session_id: i32) {}

    /// What an operator sees of this router (the admin console's `SHOW POLICIES`).
    fn report(&self) -> RouterReport {
        RouterReport::default()
    }
}

/// A router as the admin console shows it: which policies run, and how often they failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouterReport {
    /// The policies in chain order (component file names); empty: everything to the primary.
    pub policies: Vec<String>,
    /// Calls that trapped or could not run (and were routed by the fallback): since this
    /// router was loaded, or, for a pool's `LiveBackends`, since start.
    pub traps: u64,
}
