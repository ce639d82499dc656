//! Asks a server connection what its last client's session holds, after a transaction with
//! statements that changed it (transaction mode; see `client::session_sql`): the settings to
//! carry to the client's next servers, and whether objects that cannot move are left.
//!
//! The server's answer is exact where reading the SQL could not be: a `SET` in a transaction
//! that rolled back, or that failed, left nothing; a `PREPARE` may have been deallocated in the
//! same string; a value comes in a form `set_config` takes back (`search_path` as a list). One
//! query, one round trip, only after such transactions, asking only what they may have
//! changed: settings by name (`current_setting`, about 0.05 ms on the server), or all
//! session-level settings (`pg_settings`, about 0.9 ms) after a `RESET`, a `DISCARD` or a
//! change whose name the SQL does not tell, and the kinds of objects made.

use crate::server::maintenance;
use crate::server::ServerConn;
use std::io;
use std::time::Duration;

/// Kinds of session objects that cannot move to another server connection (bits).
pub mod kept {
    pub const PREPARED: u8 = 1;
    pub const CURSOR: u8 = 2;
    pub const TEMPORARY: u8 = 4;
    pub const ADVISORY_LOCK: u8 = 8;
    /// Every kind (after a `DO` block or a `CALL`, which may make any).
    pub const ALL: u8 = PREPARED | CURSOR | TEMPORARY | ADVISORY_LOCK;
}

/// One parameter's value as read back; `None`: not set.
pub type Setting = (String, Option<String>);

/// What the server said the session holds.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The settings asked for.
    pub settings: Vec<Setting>,
    /// Objects that cannot move, described for the log (empty: none).
    pub kept: Vec<String>,
}

/// What to ask.
#[derive(Debug, Default)]
pub struct Questions<'a> {
    /// Settings by name.
    pub names: &'a [String],
    /// Every session-level setting (with `role` and the custom parameters among `names`).
    pub all: bool,
    /// Kinds of objects that cannot move ([`kept`] bits).
    pub kept: u8,
}

/// Quotes names as a SQL text array.
fn text_array(names: &[String]) -> String {
    let quoted: Vec<String> = names
        .iter()
        .map(|n| format!("'{}'", n.replace('\'', "''")))
        .collect();
    format!("ARRAY[{}]::text[]", quoted.join(","))
}

/// The query: rows of (kind, name, value), kind `s` for a setting, `k` for an object that
/// cannot move.
fn probe_sql(q: &Questions<'_>) -> String {
    let by_name = |names: &[String]| {
        format!(
            "SELECT 's', n, pg_catalog.current_setting(n, true) FROM pg_catalog.unnest({}) AS n",
            text_array(names)
        )
    };
    let mut parts: Vec<String> = Vec::new();
    if q.all {
        parts.push(
            "SELECT 's', name, setting FROM pg_catalog.pg_settings WHERE source = 'session' \
             UNION ALL SELECT 's', 'role', pg_catalog.current_setting('role')"
                .into(),
        );
        let custom: Vec<String> = q
            .names
            .iter()
            .filter(|n| n.contains('.'))
            .cloned()
            .collect();
        if !custom.is_empty() {
            parts.push(by_name(&custom));
        }
    } else if !q.names.is_empty() {
        parts.push(by_name(q.names));
    }
    let objects: [(u8, &str); 4] = [
        (
            kept::PREPARED,
            "SELECT 'k', 'prepared statement', name FROM pg_catalog.pg_prepared_statements \
             WHERE from_sql",
        ),
        (
            kept::CURSOR,
            "SELECT 'k', 'cursor', name FROM pg_catalog.pg_cursors WHERE is_holdable",
        ),
        (
            kept::TEMPORARY,
            "SELECT 'k', 'temporary relation', relname::text FROM pg_catalog.pg_class \
             WHERE relnamespace = pg_catalog.pg_my_temp_schema()",
        ),
        (
            kept::ADVISORY_LOCK,
            "SELECT 'k', 'advisory lock', objid::text FROM pg_catalog.pg_locks \
             WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()",
        ),
    ];
    for (bit, sql) in objects {
        if q.kept & bit != 0 {
            parts.push(sql.into());
        }
    }
    parts.join(" UNION ALL ")
}

/// Text columns of a `DataRow` body (`None` for NULL).
fn columns(body: &[u8]) -> Option<Vec<Option<&str>>> {
    let count = u16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    let mut rest = &body[2..];
    let mut out = Vec::with_capacity(count.into());
    for _ in 0..count {
        let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        rest = &rest[4..];
        if len < 0 {
            out.push(None);
            continue;
        }
        let (value, after) = rest.split_at_checked(len as usize)?;
        out.push(Some(std::str::from_utf8(value).ok()?));
        rest = after;
    }
    Some(out)
}

/// Asks `conn`, which must be idle (outside a transaction, nothing in flight). The inner
/// error is the server's refusal (the client's own `statement_timeout` below the probe's run
/// time, a cancel): the connection is sound but its state unknown.
pub async fn probe(
    conn: &mut ServerConn,
    questions: &Questions<'_>,
    timeout: Duration,
) -> io::Result<Result<Snapshot, String>> {
    let mut snapshot = Snapshot::default();
    let sql = probe_sql(questions);
    let outcome =
        maintenance::query_rows(conn, &sql, timeout, |row| match columns(row).as_deref() {
            Some([Some("s"), Some(name), value]) => snapshot
                .settings
                .push((name.to_string(), value.map(str::to_owned))),
            Some([Some(_), Some(what), name]) => snapshot
                .kept
                .push(format!("{what} {}", name.unwrap_or_default())),
            _ => {}
        })
        .await?;
    if outcome.tx_status != b'I' {
        return Err(io::Error::other(
            "the session probe left a transaction open",
        ));
    }
    if let Some(error) = outcome.error {
        return Ok(Err(crate::protocol::backend::error_message(&error)));
    }
    Ok(Ok(snapshot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_row_columns() {
        let mut row = vec![0, 3];
        for v in [Some("s"), Some("work_mem"), None] {
            match v {
                Some(v) => {
                    row.extend((v.len() as i32).to_be_bytes());
                    row.extend(v.as_bytes());
                }
                None => row.extend((-1i32).to_be_bytes()),
            }
        }
        assert_eq!(columns(&row), Some(vec![Some("s"), Some("work_mem"), None]));
        assert_eq!(columns(&row[..row.len() - 1]), None, "cut short");
    }

    #[test]
    fn the_query_asks_only_what_changed() {
        let names = ["work_mem".to_string(), "app.x'y".to_string()];
        let q = |all, kept| {
            probe_sql(&Questions {
                names: &names,
                all,
                kept,
            })
        };
        assert_eq!(
            q(false, 0),
            "SELECT 's', n, pg_catalog.current_setting(n, true) FROM \
             pg_catalog.unnest(ARRAY['work_mem','app.x''y']::text[]) AS n"
        );
        let all = q(true, 0);
        assert!(all.starts_with("SELECT 's', name, setting FROM pg_catalog.pg_settings"));
        assert!(
            all.ends_with("unnest(ARRAY['app.x''y']::text[]) AS n"),
            "{all}"
        );
        let objects = probe_sql(&Questions {
            names: &[],
            all: false,
            kept: kept::PREPARED | kept::ADVISORY_LOCK,
        });
        assert!(
            objects.starts_with("SELECT 'k', 'prepared statement'"),
            "{objects}"
        );
        assert!(
            objects.contains(" UNION ALL SELECT 'k', 'advisory lock'"),
            "{objects}"
        );
        assert!(!objects.contains("pg_cursors") && !objects.contains("pg_settings"));
    }
}
