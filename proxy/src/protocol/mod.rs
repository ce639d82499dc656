//! The PostgreSQL wire protocol v3.0 as the proxy needs it: message framing, the startup packet,
//! and the few backend messages the proxy writes itself (errors, authentication, session status).
//!
//! Everything else travels through the proxy as opaque bytes: the proxy reads only message
//! headers (one tag byte and a length) plus the handful of bodies it must understand.

pub mod backend;
pub mod frame;
pub mod sqlstate;
pub mod startup;

pub use frame::{Frame, FrameError};
