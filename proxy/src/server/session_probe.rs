//! Asks a server connection what session state its last client left there (transaction mode,
//! after a transaction with statements that may have changed it: see `client::session_sql`).
//!
//! The server's answer is exact where reading the SQL could not be: a `SET` in a transaction
//! that rolled back, or that failed, left nothing; a value is reported in a form `set_config`
//! takes back (`search_path` as a list, `work_mem` in its base unit). One query, one round trip,
//! run only after such transactions.

use crate::server::maintenance;
use crate::server::params::ParamList;
use crate::server::ServerConn;
use std::io;
use std::time::Duration;

/// What a session holds on one server connection.
#[derive(Debug, Default)]
pub struct SessionSnapshot {
    /// Every parameter set at session level (`source = 'session'`), with `role` and the custom
    /// parameters asked for by name.
    pub settings: ParamList,
    /// State that cannot be moved to another connection (a SQL prepared statement, a `WITH
    /// HOLD` cursor, a temporary table, a session advisory lock, another session user), described
    /// for the log; `None` when there is none.
    pub kept: Option<String>,
}

/// The probe's query. Rows are (kind, name, value): `s` a setting, `k` state that stays.
const PROBE: &str = "\
SELECT 's', name, setting FROM pg_catalog.pg_settings WHERE source = 'session' \
UNION ALL SELECT 's', 'role', pg_catalog.current_setting('role') \
 WHERE pg_catalog.current_setting('role') <> 'none' \
UNION ALL SELECT 'k', 'prepared statement', name FROM pg_catalog.pg_prepared_statements \
 WHERE from_sql \
UNION ALL SELECT 'k', 'cursor WITH HOLD', name FROM pg_catalog.pg_cursors WHERE is_holdable \
UNION ALL SELECT 'k', 'temporary relation', relname::text FROM pg_catalog.pg_class \
 WHERE relnamespace = pg_catalog.pg_my_temp_schema() \
UNION ALL SELECT 'k', 'advisory lock', objid::text FROM pg_catalog.pg_locks \
 WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid() \
UNION ALL SELECT 'k', 'session authorization', session_user::text \
 WHERE session_user::text <> (SELECT usename::text FROM pg_catalog.pg_stat_activity \
 WHERE pid = pg_catalog.pg_backend_pid())";

/// The probe, with the custom parameters (`app.tenant`) asked for by name: the server does not
/// list those.
fn probe_sql(custom: &[String]) -> String {
    let mut sql = String::from(PROBE);
    if !custom.is_empty() {
        let names: Vec<String> = custom
            .iter()
            .map(|n| format!("'{}'", n.replace('\'', "''")))
            .collect();
        sql.push_str(&format!(
            " UNION ALL SELECT 's', n, pg_catalog.current_setting(n, true) \
             FROM pg_catalog.unnest(ARRAY[{}]::text[]) AS n \
             WHERE pg_catalog.current_setting(n, true) <> ''",
            names.join(",")
        ));
    }
    sql
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

/// Reads what the session holds on `conn`, which must be idle (outside a transaction, nothing
/// in flight).
pub async fn probe(
    conn: &mut ServerConn,
    custom: &[String],
    timeout: Duration,
) -> io::Result<SessionSnapshot> {
    let mut snapshot = SessionSnapshot::default();
    let mut kept: Vec<String> = Vec::new();
    let sql = probe_sql(custom);
    let outcome = maintenance::query_rows(conn, &sql, timeout, |row| {
        if let Some([Some(kind), Some(name), value]) = columns(row).as_deref() {
            match *kind {
                "s" => snapshot.settings.set(name, value.unwrap_or_default()),
                _ => kept.push(format!("{name} {}", value.unwrap_or_default())),
            }
        }
    })
    .await?;
    if let Some(error) = outcome.error {
        let message = crate::protocol::backend::error_message(&error);
        return Err(io::Error::other(format!("session probe failed: {message}")));
    }
    if outcome.tx_status != b'I' {
        return Err(io::Error::other("session probe left a transaction open"));
    }
    if !kept.is_empty() {
        snapshot.kept = Some(kept.join(", "));
    }
    Ok(snapshot)
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
    fn custom_names_are_quoted() {
        let sql = probe_sql(&["app.x'y".to_string()]);
        assert!(sql.ends_with(
            "ARRAY['app.x''y']::text[]) AS n WHERE pg_catalog.current_setting(n, true) <> ''"
        ));
        assert_eq!(probe_sql(&[]), PROBE);
    }
}
