//! Client authentication: how the proxy checks who a client is before any server is involved.
//!
//! The proxy is the server side of the exchange (it verifies md5 hashes and SCRAM proofs itself).
//! How the proxy logs in to PostgreSQL is in `server::connect`.

pub mod md5;
pub mod scram;
pub mod secret;

pub use secret::{AuthMethod, ClientSecret};
