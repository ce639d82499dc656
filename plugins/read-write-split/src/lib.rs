//! `read-write-split`: reads to replicas, everything else to the primary.
//!
//! Writes, DDL, explicit transactions (unless `BEGIN READ ONLY`), session commands and anything
//! the host could not classify go to the primary. Reads narrow the candidates to the replicas
//! (the next policy in the chain, or the host, picks one); with no replica available they go to
//! the primary. Hints override: `/* switchyard: primary */` in the SQL, or
//! `SET switchyard.route = 'primary'` for the rest of the session (also given at connect time
//! as a startup option: `options=-c switchyard.route=replica`).
//!
//! Config (TOML): `primary_reads = false` (also send reads to the primary, as one more
//! candidate), `write_functions = ["audit_write"]` (calls that make a SELECT a write, on top of
//! the host's list), `session_routing = "per-statement"` (in a session-mode pool, route each
//! statement outside a transaction; the default `"per-session"` keeps one server per session).
//! Inside a transaction (its first statement, when the host deferred the `BEGIN`) only a
//! `READ ONLY` transaction reads from replicas.

use serde::Deserialize;
use std::collections::HashMap;
use switchyard_sdk::hints::{self, Hint};
use switchyard_sdk::{
    export_policy, Candidates, Decision, Policy, Query, QueryFlags, Role, Session, SessionRouting,
    StatementKind, Topology,
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    primary_reads: bool,
    #[serde(default)]
    write_functions: Vec<String>,
    /// `per-session` (default) or `per-statement`: in a session-mode pool, whether each
    /// statement outside a transaction is routed on its own.
    #[serde(default = "per_session")]
    session_routing: String,
}

fn per_session() -> String {
    "per-session".into()
}

pub struct ReadWriteSplit {
    config: Config,
    replicas: Candidates,
    primary: Option<u32>,
    /// Session hints set with `SET switchyard.route`.
    session_hints: HashMap<u32, Hint>,
}

impl Policy for ReadWriteSplit {
    fn init(config: &str) -> Result<Self, String> {
        let config: Config =
            toml::from_str(config).map_err(|e| format!("read-write-split: {}", e.message()))?;
        if !matches!(
            config.session_routing.as_str(),
            "per-session" | "per-statement"
        ) {
            return Err(format!(
                "read-write-split: session_routing must be \"per-session\" or \"per-statement\", not {:?}",
                config.session_routing
            ));
        }
        Ok(ReadWriteSplit {
            config,
            replicas: Candidates::NONE,
            primary: None,
            session_hints: HashMap::new(),
        })
    }

    fn topology_changed(&mut self, topology: &Topology) {
        self.replicas = Candidates::from_ids(
            topology
                .backends
                .iter()
                .filter(|b| b.role == Role::Replica)
                .map(|b| b.id),
        );
        self.primary = topology
            .backends
            .iter()
            .find(|b| b.role == Role::Primary)
            .map(|b| b.id);
    }

    fn session_opened(&mut self, session: &Session) {
        // A session hint given at connect time: `options=-c switchyard.route=replica`.
        let hint = session
            .options
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("switchyard.route"))
            .and_then(|(_, value)| hints::session_hint(&format!("SET switchyard.route = {value}")));
        match hint {
            Some(Hint::Primary) | Some(Hint::Replica) => {
                self.session_hints
                    .insert(session.id, hint.expect("matched"));
            }
            _ => {
                self.session_hints.remove(&session.id);
            }
        }
    }

    fn session_closed(&mut self, id: u32) {
        self.session_hints.remove(&id);
    }

    fn session_routing(&self) -> SessionRouting {
        if self.config.session_routing == "per-statement" {
            SessionRouting::PerStatement
        } else {
            SessionRouting::PerSession
        }
    }

    fn route(&mut self, query: &Query, candidates: Candidates) -> Decision {
        // The text is fetched from the host only where it can matter: a SET that may be a
        // session hint, a comment that may hold one, configured write functions.
        if query.kind == StatementKind::Session {
            if let Some(hint) = hints::session_hint(query.sql()) {
                match hint {
                    Hint::Default => self.session_hints.remove(&query.session_id),
                    h => self.session_hints.insert(query.session_id, h),
                };
            }
            return Decision::Primary;
        }
        let hint = query
            .has_comment()
            .then(|| hints::comment_hint(query.sql()))
            .flatten()
            .or_else(|| {
                if self.session_hints.is_empty() {
                    None
                } else {
                    self.session_hints.get(&query.session_id).copied()
                }
            });
        let replicas = candidates.and(self.replicas);
        let to_replicas = || {
            if replicas.is_empty() {
                Decision::Primary
            } else {
                Decision::Narrow(replicas.0)
            }
        };
        match hint {
            Some(Hint::Primary) => return Decision::Primary,
            Some(Hint::Replica) => return to_replicas(),
            _ => {}
        }
        let read_only_transaction = query.flags.contains(QueryFlags::READ_ONLY_TRANSACTION);
        let read = match query.kind {
            // Inside a transaction only a READ ONLY one may leave the primary.
            _ if query.flags.contains(QueryFlags::IN_TRANSACTION) && !read_only_transaction => {
                false
            }
            StatementKind::Read => {
                self.config.write_functions.is_empty()
                    || !self
                        .config
                        .write_functions
                        .iter()
                        .any(|f| hints::calls(query.sql(), f))
            }
            StatementKind::TransactionControl => query.flags.contains(QueryFlags::BEGINS_READ_ONLY),
            // Not surely a read, but harmless in a READ ONLY transaction (which refuses
            // writes wherever it runs). Writes and DDL stay on the primary regardless.
            StatementKind::Other => read_only_transaction,
            _ => false,
        };
        if !read {
            return Decision::Primary;
        }
        if self.config.primary_reads {
            let with_primary = self.primary.map_or(replicas, |p| {
                Candidates(replicas.0 | (1 << p)).and(candidates)
            });
            return Decision::Narrow(with_primary.0);
        }
        to_replicas()
    }
}

export_policy!(ReadWriteSplit);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_sdk::Backend;

    fn policy(config: &str) -> ReadWriteSplit {
        let mut p = ReadWriteSplit::init(config).unwrap();
        let backend = |id, role| Backend {
            id,
            name: format!("b{id}"),
            role,
            healthy: true,
            weight: 1,
        };
        p.topology_changed(&Topology {
            generation: 1,
            backends: vec![
                backend(0, Role::Primary),
                backend(1, Role::Replica),
                backend(2, Role::Replica),
            ],
        });
        p
    }

    fn q(sql: &str, kind: StatementKind) -> Query {
        Query::new(sql, kind)
    }

    const ALL: Candidates = Candidates(0b111);

    #[test]
    fn reads_to_replicas_writes_to_primary() {
        let mut p = policy("");
        assert_eq!(
            p.route(&q("SELECT 1", StatementKind::Read), ALL),
            Decision::Narrow(0b110)
        );
        for k in [
            StatementKind::Write,
            StatementKind::Ddl,
            StatementKind::Other,
            StatementKind::Session,
        ] {
            assert_eq!(p.route(&q("x", k), ALL), Decision::Primary);
        }
        assert_eq!(
            p.route(&q("BEGIN", StatementKind::TransactionControl), ALL),
            Decision::Primary
        );
        let begin_ro = q("BEGIN READ ONLY", StatementKind::TransactionControl)
            .with_flags(QueryFlags::BEGINS_READ_ONLY);
        assert_eq!(p.route(&begin_ro, ALL), Decision::Narrow(0b110));
        // The first statement of a transaction: only a READ ONLY one leaves the primary.
        let in_tx = q("SELECT 1", StatementKind::Read).with_flags(QueryFlags::IN_TRANSACTION);
        assert_eq!(p.route(&in_tx, ALL), Decision::Primary);
        let in_ro_tx = q("SELECT 1", StatementKind::Read)
            .with_flags(QueryFlags::IN_TRANSACTION | QueryFlags::READ_ONLY_TRANSACTION);
        assert_eq!(p.route(&in_ro_tx, ALL), Decision::Narrow(0b110));
        // No replica left among the candidates: the primary reads.
        assert_eq!(
            p.route(&q("SELECT 1", StatementKind::Read), Candidates(0b001)),
            Decision::Primary
        );
    }

    #[test]
    fn configured_write_functions_and_primary_reads() {
        let mut p = policy("write_functions = [\"audit_write\"]\nprimary_reads = true");
        assert_eq!(
            p.route(&q("SELECT audit_write(1)", StatementKind::Read), ALL),
            Decision::Primary
        );
        assert_eq!(
            p.route(&q("SELECT 1", StatementKind::Read), ALL),
            Decision::Narrow(0b111)
        );
        assert!(ReadWriteSplit::init("bogus = 1").is_err());
        assert!(ReadWriteSplit::init("session_routing = \"sometimes\"").is_err());
        let per_statement = ReadWriteSplit::init("session_routing = \"per-statement\"").unwrap();
        assert_eq!(
            per_statement.session_routing(),
            SessionRouting::PerStatement
        );
    }

    #[test]
    fn a_startup_option_sets_the_session_hint() {
        let mut p = policy("");
        let session = |options: Vec<(String, String)>| Session {
            id: 1,
            user: "u".into(),
            database: "d".into(),
            application_name: String::new(),
            client_addr: String::new(),
            options,
        };
        p.session_opened(&session(vec![(
            "switchyard.route".into(),
            "primary".into(),
        )]));
        assert_eq!(
            p.route(&q("SELECT 1", StatementKind::Read), ALL),
            Decision::Primary
        );
        p.session_opened(&session(vec![]));
        assert_eq!(
            p.route(&q("SELECT 1", StatementKind::Read), ALL),
            Decision::Narrow(0b110)
        );
    }

    #[test]
    fn hints_override() {
        let mut p = policy("");
        assert_eq!(
            p.route(
                &q("/* switchyard: primary */ SELECT 1", StatementKind::Read),
                ALL
            ),
            Decision::Primary
        );
        assert_eq!(
            p.route(
                &q("SET switchyard.route = 'primary'", StatementKind::Session),
                ALL
            ),
            Decision::Primary
        );
        assert_eq!(
            p.route(&q("SELECT 1", StatementKind::Read), ALL),
            Decision::Primary
        );
        p.route(
            &q("SET switchyard.route = default", StatementKind::Session),
            ALL,
        );
        assert_eq!(
            p.route(&q("SELECT 1", StatementKind::Read), ALL),
            Decision::Narrow(0b110)
        );
    }
}
