//! The session parameters a client asked for, and the `SET`s that give them to whichever
//! server connection it checks out.
//!
//! Reported parameters ([`TRACKED`]) follow the client: its startup values, then whatever its own
//! `SET`s make the server report. Other parameters (`search_path`, `options=-c ...`) are the
//! client's startup values, then, in transaction mode, what the server holds after the client's
//! session-level `SET`s (see `session_sql`); they are applied once per server connection and
//! remembered there.

use crate::server::params::{ParamList, TrackedParams, TRACKED};
use crate::server::session_probe::Setting;
use crate::server::ServerConn;

/// Startup parameters the proxy consumes itself.
const NOT_SESSION_PARAMS: [&str; 4] = ["user", "database", "replication", "options"];

/// What a client's session should look like on any server.
#[derive(Debug, Clone)]
pub struct ClientParams {
    pub tracked: TrackedParams,
    /// The unreported parameters the client's session has now.
    pub extras: ParamList,
    /// The unreported parameters of its startup packet: what routing policies see, and what a
    /// `RESET` goes back to.
    pub startup: ParamList,
}

pub(crate) fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// Splits `options` (`-c name=value --name=value`, backslash escapes spaces) into pairs.
fn parse_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut pairs = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next().ok_or("options: -c needs name=value")?
        } else if let Some(rest) = w.strip_prefix("--").or_else(|| w.strip_prefix("-c")) {
            rest.to_owned()
        } else {
            return Err(format!(
                "options: unsupported command-line option \"{w}\" (only -c name=value)"
            ));
        };
        let (k, v) = setting
            .split_once('=')
            .ok_or_else(|| format!("options: \"{setting}\" is not name=value"))?;
        pairs.push((k.replace('-', "_"), v.to_owned()));
    }
    Ok(pairs)
}

/// Appends a session-level `set_config` of `name` to `value`.
fn set_config(sql: &mut String, name: &str, value: &str) {
    sql.push_str(&format!(
        "SELECT pg_catalog.set_config({}, {}, false);",
        quote(name),
        quote(value)
    ));
}

/// Quotes a value as a SQL string literal.
fn quote(value: &str) -> String {
    if value.contains('\\') {
        format!("E'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", value.replace('\'', "''"))
    }
}

impl ClientParams {
    /// Combines a fresh server's defaults with the client's startup parameters.
    pub fn from_startup(
        defaults: &ParamList,
        startup: &[(String, String)],
    ) -> Result<Self, String> {
        let mut tracked = TrackedParams::from_list(defaults);
        let mut extras = ParamList::new();
        let mut settings: Vec<(String, String)> = Vec::new();
        for (k, v) in startup {
            if k == "options" {
                settings.extend(parse_options(v)?);
            } else if !NOT_SESSION_PARAMS.contains(&k.as_str()) {
                settings.push((k.clone(), v.clone()));
            }
        }
        for (k, v) in settings {
            if !valid_name(&k) {
                return Err(format!("invalid startup parameter name \"{k}\""));
            }
            match TrackedParams::index(&k) {
                Some(i) => tracked.set_at(i, &v),
                None => extras.set(&k, &v),
            }
        }
        Ok(ClientParams {
            tracked,
            startup: extras.clone(),
            extras,
        })
    }

    /// Takes the settings a server read back after the client's own `SET`s (see
    /// [`session_probe`](crate::server::session_probe)) into the client's parameters and into
    /// `applied`, the server connection's. With `all` they are every session-level setting
    /// there is; otherwise only those named changed. A parameter not set (any more) goes back
    /// to the client's startup value, as a `RESET` does in PostgreSQL: the server is given it
    /// again at the next checkout.
    pub fn adopt_settings(&mut self, read: &[Setting], all: bool, applied: &mut ParamList) {
        if all {
            *applied = ParamList::new();
            self.extras = ParamList::new();
        }
        for (name, value) in read {
            if TrackedParams::index(name).is_some() {
                continue;
            }
            let value = value.as_deref().filter(|v| {
                !((name == "role" && *v == "none") || (name.contains('.') && v.is_empty()))
            });
            match value {
                Some(v) => {
                    applied.set(name, v);
                    self.extras.set(name, v);
                }
                None => {
                    applied.remove(name);
                    self.extras.remove(name);
                }
            }
        }
        for (k, v) in self.startup.iter() {
            if self.extras.get(k).is_none() {
                self.extras.set(k, v);
            }
        }
    }

    /// The client's value of a tracked parameter, by name.
    pub fn tracked_value(&self, name: &str) -> Option<&str> {
        TrackedParams::index(name).map(|i| self.tracked.get(i))
    }

    /// Whether `conn` has this client's parameters: one byte-string comparison and one list
    /// comparison.
    pub fn in_sync(&self, conn: &ServerConn) -> bool {
        self.tracked == conn.tracked && self.extras == conn.applied_extras
    }

    /// The SQL that makes `conn` match this client, or `None` when it already does.
    pub fn sync_sql(&self, conn: &ServerConn) -> Option<String> {
        if self.in_sync(conn) {
            return None;
        }
        // `set_config` takes a value as a startup packet gives it: `SET search_path TO 'a,b'`
        // would name one schema "a,b".
        let mut sql = String::new();
        for (i, name) in TRACKED.iter().enumerate() {
            if self.tracked.get(i) != conn.tracked.get(i) {
                set_config(&mut sql, name, self.tracked.get(i));
            }
        }
        for (k, v) in self.extras.iter() {
            if conn.applied_extras.get(k) != Some(v) {
                set_config(&mut sql, k, v);
            }
        }
        for (k, _) in conn.applied_extras.iter() {
            if self.extras.get(k).is_none() {
                sql.push_str(&format!("RESET {k};"));
            }
        }
        Some(sql)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> ParamList {
        let mut d = ParamList::new();
        d.set("application_name", "");
        d.set("DateStyle", "ISO, MDY");
        d.set("server_version", "15");
        d
    }

    #[test]
    fn startup_values_override_defaults() {
        let p = ClientParams::from_startup(
            &defaults(),
            &[
                ("user".into(), "u".into()),
                ("application_name".into(), "psql".into()),
                ("search_path".into(), "a,b".into()),
            ],
        )
        .unwrap();
        assert_eq!(p.tracked_value("application_name"), Some("psql"));
        assert_eq!(p.tracked_value("datestyle"), Some("ISO, MDY"));
        assert_eq!(p.extras.get("search_path"), Some("a,b"));
        assert_eq!(p.extras.get("user"), None);
    }

    #[test]
    fn options_are_split_into_settings() {
        let p = ClientParams::from_startup(
            &defaults(),
            &[(
                "options".into(),
                "-c statement_timeout=5s --lock-timeout=1s -cwork_mem=8MB".into(),
            )],
        )
        .unwrap();
        assert_eq!(p.extras.get("statement_timeout"), Some("5s"));
        assert_eq!(p.extras.get("lock_timeout"), Some("1s"));
        assert_eq!(p.extras.get("work_mem"), Some("8MB"));
        assert!(
            ClientParams::from_startup(&defaults(), &[("options".into(), "-X".into())]).is_err()
        );
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(ClientParams::from_startup(&defaults(), &[("a;drop".into(), "x".into())]).is_err());
    }

    #[test]
    fn read_back_settings_are_adopted() {
        let mut p = ClientParams::from_startup(
            &defaults(),
            &[
                ("search_path".into(), "a,b".into()),
                ("work_mem".into(), "8MB".into()),
            ],
        )
        .unwrap();
        let mut applied = p.extras.clone();
        let read = |n: &str, v: Option<&str>| (n.to_string(), v.map(str::to_string));
        // By name: a new value, a role set, a custom parameter reset to nothing.
        p.adopt_settings(
            &[
                read("work_mem", Some("64MB")),
                read("role", Some("r1")),
                read("app.tenant", Some("")),
                read("DateStyle", Some("SQL")),
            ],
            false,
            &mut applied,
        );
        assert_eq!(p.extras.get("work_mem"), Some("64MB"));
        assert_eq!(p.extras.get("role"), Some("r1"));
        assert_eq!(p.extras.get("search_path"), Some("a,b"));
        assert_eq!(p.extras.get("app.tenant"), None);
        assert_eq!(p.extras.get("datestyle"), None, "tracked apart");
        assert_eq!(applied, p.extras);
        // All: what is not set any more goes back to the startup value, which the server
        // connection lacks until the next checkout applies it.
        p.adopt_settings(&[read("role", Some("none"))], true, &mut applied);
        assert_eq!(p.extras.get("work_mem"), Some("8MB"));
        assert_eq!(p.extras.get("search_path"), Some("a,b"));
        assert_eq!(p.extras.get("role"), None);
        assert!(applied.is_empty());
        assert_eq!(p.startup, p.extras);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("it's"), "'it''s'");
        assert_eq!(quote("a\\b"), "E'a\\\\b'");
    }
}
