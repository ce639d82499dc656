//! The SQLSTATE codes the proxy itself reports, named as in PostgreSQL's errcodes.txt.

/// `08P01` protocol_violation: malformed or oversized messages, bad startup packets.
pub const PROTOCOL_VIOLATION: &str = "08P01";
/// `08006` connection_failure: the server connection broke under a client.
pub const CONNECTION_FAILURE: &str = "08006";
/// `08001` sqlclient_unable_to_establish_sqlconnection: no server connection could be made.
pub const CANNOT_CONNECT: &str = "08001";
/// `28P01` invalid_password.
pub const INVALID_PASSWORD: &str = "28P01";
/// `28000` invalid_authorization_specification: unknown user, unsupported auth exchange.
pub const INVALID_AUTHORIZATION: &str = "28000";
/// `3D000` invalid_catalog_name: the database is not configured.
pub const INVALID_CATALOG_NAME: &str = "3D000";
/// `53300` too_many_connections: pool exhausted, `max_client_conn` reached.
pub const TOO_MANY_CONNECTIONS: &str = "53300";
/// `42P05` duplicate_prepared_statement: a client parses a statement name it already uses.
pub const DUPLICATE_PREPARED_STATEMENT: &str = "42P05";
/// `26000` invalid_sql_statement_name: a Bind or Describe of a statement the client lacks.
pub const INVALID_SQL_STATEMENT_NAME: &str = "26000";
/// `55000` object_not_in_prerequisite_state: a second Execute of a portal that PostgreSQL
/// runs once (a utility statement's).
pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
/// `25P02` in_failed_sql_transaction: a statement after an error inside a transaction.
pub const IN_FAILED_TRANSACTION: &str = "25P02";
/// `57P01` admin_shutdown: the proxy is shutting down.
pub const ADMIN_SHUTDOWN: &str = "57P01";
/// `57P03` cannot_connect_now: the pool is paused (the admin console's `PAUSE`).
pub const CANNOT_CONNECT_NOW: &str = "57P03";
/// `25P03` idle_in_transaction_session_timeout: `idle_transaction_timeout_ms` passed.
pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";
/// `25P04` transaction_timeout: `transaction_timeout_ms` passed (PostgreSQL 17's code).
pub const TRANSACTION_TIMEOUT: &str = "25P04";
/// `57P05` idle_session_timeout: `client_idle_timeout_ms` passed.
pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
/// `57014` query_canceled: the server did not answer within `query_timeout_ms`.
pub const QUERY_CANCELED: &str = "57014";
/// `0A000` feature_not_supported: unsupported protocol version or request.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// `P0001` raise_exception: a routing policy rejected the query (the policy's message follows).
pub const ROUTING_REJECTED: &str = "P0001";
/// `XX000` internal_error: a routing decision that cannot be carried out.
pub const INTERNAL_ERROR: &str = "XX000";
