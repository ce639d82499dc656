//! The proxy's side of PostgreSQL connections: logging in to a server, and what the proxy keeps
//! about each open server connection (its cancel key, parameters, prepared statements).

pub mod conn;
pub mod connect;
pub mod maintenance;
pub mod params;
pub mod prepared;
pub mod session_probe;

pub use conn::{ServerConn, ServerKey};
pub use connect::{connect, ConnectError, ServerTarget};
pub use params::ParamList;
