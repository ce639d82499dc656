//! The query a policy routes, with its SQL text fetched from the host only when asked for.
//!
//! The host passes plain values per call (a string argument costs about 0.1 µs at the
//! component boundary). `Query::sql` fetches the text once, on first use; a policy that
//! decides on `kind` and `flags` alone never pays for it.

use crate::{Protocol, QueryFlags, RouteHint, StatementKind};
use std::cell::OnceCell;

/// A statement that needs a server.
#[derive(Debug, Clone)]
pub struct Query {
    /// The client's session (as announced by `session_opened`).
    pub session_id: u32,
    /// The host's conservative classification of the text.
    pub kind: StatementKind,
    pub flags: QueryFlags,
    pub protocol: Protocol,
    /// The client's routing hint, parsed by the host: a `/* switchyard: primary */` comment,
    /// else the session's `SET switchyard.route` (or startup option).
    pub hint: RouteHint,
    /// Length of the SQL text in bytes.
    pub sql_length: u32,
    sql: OnceCell<String>,
}

impl Query {
    /// A query with its text given, for native tests of a policy (no host needed). Its hint is
    /// `none` whatever the text says (the host parses hints): set one with [`Query::with_hint`].
    pub fn new(sql: &str, kind: StatementKind) -> Self {
        let mut flags = QueryFlags::empty();
        if sql.contains("/*") {
            flags |= QueryFlags::HAS_COMMENT;
        }
        Query {
            session_id: 1,
            kind,
            flags,
            protocol: Protocol::Simple,
            hint: RouteHint::None,
            sql_length: sql.len() as u32,
            sql: OnceCell::from(sql.to_string()),
        }
    }

    /// The same query with a routing hint (as the host would pass for a hinted query).
    pub fn with_hint(mut self, hint: RouteHint) -> Self {
        self.hint = hint;
        self
    }

    /// The same query in another session.
    pub fn in_session(mut self, id: u32) -> Self {
        self.session_id = id;
        self
    }

    /// The same query with more flags.
    pub fn with_flags(mut self, flags: QueryFlags) -> Self {
        self.flags |= flags;
        self
    }

    #[doc(hidden)]
    pub fn __from_host(q: crate::__bindings::switchyard::policy::types::Query) -> Self {
        Query {
            session_id: q.session_id,
            kind: q.kind,
            flags: q.flags,
            protocol: q.protocol,
            hint: q.hint,
            sql_length: q.sql_length,
            sql: OnceCell::new(),
        }
    }

    /// The SQL text (for a `Bind`, the text of the prepared statement). Fetched from the host
    /// on first use.
    pub fn sql(&self) -> &str {
        self.sql.get_or_init(crate::host::sql)
    }

    /// Whether the text has a `/*` comment (no fetch needed to know). The host has already
    /// read its own hints from it: see `hint`.
    pub fn has_comment(&self) -> bool {
        self.flags.contains(QueryFlags::HAS_COMMENT)
    }
}
