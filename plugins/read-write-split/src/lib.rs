//! `read-write-split`: reads to replicas, everything else to the primary.
//!
//! Writes, DDL, explicit transactions (unless `BEGIN READ ONLY`), session commands and anything
//! the host could not classify go to the primary. Reads narrow the candidates to the replicas
//! (the next policy in the chain, or the host, picks one); with no replica available they go to
//! the primary. The client's hint overrides (the host parses it: `/* switchyard: primary */` in
//! the SQL, or `SET switchyard.route = 'primary'` for the rest of the session, also given at
//! connect time as a startup option: `options=-c switchyard.route=replica`).
//!
//! Config (TOML): `primary_reads = false` (also send reads to the primary, as one more
//! candidate), `write_functions = ["audit_write"]` (calls that make a SELECT a write, on top of
//! the host's list; the pool's own `write_functions` is cheaper, since this one makes the
//! policy read the text of every read), `session_routing = "per-statement"` (in a session-mode
//! pool, route each statement outside a transaction; the default `"per-session"` keeps one
//! server per session). Inside a transaction (its first statement, when the host deferred the
//! `BEGIN`) only a `READ ONLY` transaction reads from replicas.
//!
//! The decision follows from the query's kind, flags and hint and the candidates alone, so the
//! policy says `deterministic` and the host calls it once per distinct question.

use serde::Deserialize;
use switchyard_sdk::{
    export_policy, text, Candidates, Decision, Policy, Query, QueryFlags, Role, RouteHint,
    SessionRouting, StatementKind, Topology,
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

    fn session_routing(&self) -> SessionRouting {
        if self.config.session_routing == "per-statement" {
            SessionRouting::PerStatement
        } else {
            SessionRouting::PerSession
        }
    }

    fn deterministic(&self) -> bool {
        true
    }

    fn session_events(&self) -> bool {
        false
    }

    fn route(&mut self, query: &Query, candidates: Candidates) -> Decision {
        let replicas = candidates.and(self.replicas);
        let to_replicas = || {
            if replicas.is_empty() {
                Decision::Primary
            } else {
                Decision::Narrow(replicas.0)
            }
        };
        if query.kind == StatementKind::Session {
            return Decision::Primary;
        }
        match query.hint {
            RouteHint::Primary => return Decision::Primary,
            RouteHint::Replica => return to_replicas(),
            RouteHint::None => {}
        }
        let read_only_transaction = query.flags.contains(QueryFlags::READ_ONLY_TRANSACTION);
        let read = match query.kind {
            // Inside a transaction only a READ ONLY one may leave the primary.
            _ if query.flags.contains(QueryFlags::IN_TRANSACTION) && !read_only_transaction => {
                false
            }
            // The text is fetched only for configured write functions (and then this decision
            // is not kept by the host).
            StatementKind::Read => {
                self.config.write_functions.is_empty()
                    || !self
                        .config
                        .write_functions
                        .iter()
                        .any(|f| text::calls(query.sql(), f))
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
    fn hints_override() {
        let mut p = policy("");
        let read = || q("SELECT 1", StatementKind::Read);
        assert_eq!(
            p.route(&read().with_hint(RouteHint::Primary), ALL),
            Decision::Primary
        );
        assert_eq!(
            p.route(&read().with_hint(RouteHint::Replica), ALL),
            Decision::Narrow(0b110)
        );
        // A write hinted to a replica goes there (the client asked; the replica refuses it).
        assert_eq!(
            p.route(
                &q("INSERT INTO t VALUES (1)", StatementKind::Write).with_hint(RouteHint::Replica),
                ALL
            ),
            Decision::Narrow(0b110)
        );
        // The SET that sets a session hint runs on the primary, whatever the hint was.
        assert_eq!(
            p.route(
                &q("SET switchyard.route = 'replica'", StatementKind::Session)
                    .with_hint(RouteHint::Replica),
                ALL
            ),
            Decision::Primary
        );
        // A replica hint with no replica left: the primary.
        assert_eq!(
            p.route(&read().with_hint(RouteHint::Replica), Candidates(0b001)),
            Decision::Primary
        );
    }

    #[test]
    fn says_it_is_deterministic_and_needs_no_sessions() {
        let p = policy("");
        assert!(p.deterministic());
        assert!(!p.session_events());
    }
}
