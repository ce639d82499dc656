//! The console's commands: what an operator types, parsed into what the console does.
//!
//! The vocabulary is PgBouncer's where it overlaps (`SHOW POOLS`, `SHOW SERVERS`, `SHOW
//! CLIENTS`, `SHOW STATS`, `SHOW CONFIG`, `SHOW VERSION`, `SHOW HELP`, `RELOAD`, `PAUSE`,
//! `RESUME`, `KILL`, `KILL_CLIENT`, `RECONNECT`), so that operators and monitoring scripts used to its console find their way.
//! Keywords are case-insensitive; a database name is taken as written (double quotes around
//! it are dropped); a trailing `;` is fine.

/// One console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// The commands and what they show.
    Help,
    /// The proxy's version.
    Version,
    /// One row per (database, user) pool: clients, server connections, waiting checkouts.
    Pools,
    /// One row per server of each pool: its health and connections.
    Servers,
    /// One row per pool: its routing policies, their failures and reloads.
    Policies,
    /// One row per pool: transactions, requests and checkout waits since start.
    Stats,
    /// One row per connected client: who, from where, and the server it is using.
    Clients,
    /// The `[general]` settings in effect.
    Config,
    /// Reload the routing policies from the config file, as `SIGHUP` does.
    Reload,
    /// Hold new transactions of one database (or all), wait for those running to end, and
    /// close the idle server connections: the servers can then restart or move while clients
    /// wait instead of failing.
    Pause(Option<String>),
    /// Serve the transactions that waited during a pause.
    Resume(Option<String>),
    /// Pause one database and end its clients' sessions at once (FATAL `57P01`), rolling
    /// back what they had open; new transactions wait for `RESUME`.
    Kill(String),
    /// End one client's session at once, by its `pid` in `SHOW CLIENTS`.
    KillClient(i32),
    /// Replace the server connections of one database (or all): idle ones now, those in use
    /// when their clients release them. Clients notice nothing.
    Reconnect(Option<String>),
    /// Shut the proxy down as SIGTERM does: no new client, transactions in flight may finish
    /// within `shutdown_timeout_ms`, then exit 0. For operators with a console but no shell
    /// on the proxy's host.
    Shutdown,
}

/// The commands with a line on each, for `SHOW HELP` and error hints.
pub const HELP: &[(&str, &str)] = &[
    ("SHOW HELP", "this list"),
    ("SHOW VERSION", "the proxy's version"),
    (
        "SHOW POOLS",
        "per database and user: clients, server connections in use and idle, waiting checkouts",
    ),
    (
        "SHOW SERVERS",
        "per server of each pool: role, health, connections in use and idle, opened since start",
    ),
    (
        "SHOW CLIENTS",
        "per client: pool, address, application_name, state, and the server connection in use",
    ),
    (
        "SHOW STATS",
        "per database and user: transactions, requests and time waited for a server since start",
    ),
    (
        "SHOW POLICIES",
        "per pool: its routing policies, their traps and reloads",
    ),
    ("SHOW CONFIG", "the [general] settings in effect"),
    (
        "RELOAD",
        "reload the routing policies from the config file, as SIGHUP does",
    ),
    (
        "PAUSE [db]",
        "hold new transactions, wait for running ones to end, close idle server connections",
    ),
    (
        "RESUME [db]",
        "serve the transactions that waited during a pause",
    ),
    (
        "KILL db",
        "pause db and end its clients' sessions now, rolling back their open transactions",
    ),
    (
        "KILL_CLIENT pid",
        "end one client's session now (pid as SHOW CLIENTS lists it)",
    ),
    (
        "RECONNECT [db]",
        "replace server connections: idle ones now, those in use when released",
    ),
    (
        "SHUTDOWN",
        "stop as on SIGTERM: no new client; transactions in flight may finish, then exit",
    ),
];

/// Parses one statement of a console query; the error is the message for the client.
pub fn parse(sql: &str) -> Result<Command, String> {
    let written: Vec<&str> = sql
        .trim()
        .trim_end_matches(';')
        .split_ascii_whitespace()
        .collect();
    let words: Vec<String> = written.iter().map(|w| w.to_ascii_uppercase()).collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let database = || database_name(written[1]);
    match words.as_slice() {
        ["SHOW", "HELP"] => Ok(Command::Help),
        ["SHOW", "VERSION"] => Ok(Command::Version),
        ["SHOW", "POOLS"] => Ok(Command::Pools),
        ["SHOW", "SERVERS"] => Ok(Command::Servers),
        ["SHOW", "POLICIES"] => Ok(Command::Policies),
        ["SHOW", "STATS"] => Ok(Command::Stats),
        ["SHOW", "CLIENTS"] => Ok(Command::Clients),
        ["SHOW", "CONFIG"] => Ok(Command::Config),
        ["RELOAD"] => Ok(Command::Reload),
        ["PAUSE"] => Ok(Command::Pause(None)),
        ["PAUSE", _] => Ok(Command::Pause(Some(database()))),
        ["RESUME"] => Ok(Command::Resume(None)),
        ["RESUME", _] => Ok(Command::Resume(Some(database()))),
        ["KILL", _] => Ok(Command::Kill(database())),
        ["RECONNECT"] => Ok(Command::Reconnect(None)),
        ["RECONNECT", _] => Ok(Command::Reconnect(Some(database()))),
        // PgBouncer 1.23's name for the same graceful stop is accepted too.
        ["SHUTDOWN"] | ["SHUTDOWN", "WAIT_FOR_SERVERS"] => Ok(Command::Shutdown),
        ["KILL_CLIENT", pid] => pid
            .parse()
            .map(Command::KillClient)
            .map_err(|_| format!("KILL_CLIENT takes a client's pid (SHOW CLIENTS), not \"{pid}\"")),
        _ => Err(format!(
            "unknown admin console command \"{}\"; SHOW HELP lists the commands",
            sql.trim()
        )),
    }
}

/// A database name as written, without the double quotes of a quoted identifier.
fn database_name(word: &str) -> String {
    match word.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
        Some(quoted) if !quoted.is_empty() => quoted.replace("\"\"", "\""),
        _ => word.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_whatever_their_case_and_spacing() {
        assert_eq!(parse("show pools"), Ok(Command::Pools));
        assert_eq!(parse("  SHOW\n\tServers ;"), Ok(Command::Servers));
        assert_eq!(parse("reload;"), Ok(Command::Reload));
        assert_eq!(parse("Show Help"), Ok(Command::Help));
        assert_eq!(parse("show policies"), Ok(Command::Policies));
        assert_eq!(parse("SHOW STATS;"), Ok(Command::Stats));
        assert_eq!(parse("show clients"), Ok(Command::Clients));
        assert_eq!(parse("show config"), Ok(Command::Config));
        assert_eq!(parse("show version"), Ok(Command::Version));
    }

    #[test]
    fn pause_and_resume_take_a_database_as_written() {
        assert_eq!(parse("pause"), Ok(Command::Pause(None)));
        assert_eq!(
            parse("PAUSE Orders;"),
            Ok(Command::Pause(Some("Orders".into())))
        );
        assert_eq!(
            parse("pause \"My\"\"Db\""),
            Ok(Command::Pause(Some("My\"Db".into())))
        );
        assert_eq!(parse("resume"), Ok(Command::Resume(None)));
        assert_eq!(parse("Resume app"), Ok(Command::Resume(Some("app".into()))));
        assert!(parse("PAUSE a b").is_err());
    }

    #[test]
    fn kill_takes_a_database_and_kill_client_a_pid() {
        assert_eq!(parse("kill App"), Ok(Command::Kill("App".into())));
        assert!(parse("KILL").is_err(), "KILL names its database");
        assert_eq!(parse("kill_client 42;"), Ok(Command::KillClient(42)));
        assert_eq!(parse("reconnect"), Ok(Command::Reconnect(None)));
        assert_eq!(
            parse("RECONNECT app"),
            Ok(Command::Reconnect(Some("app".into())))
        );
        let e = parse("KILL_CLIENT x").unwrap_err();
        assert!(e.contains("SHOW CLIENTS"), "{e}");
    }

    #[test]
    fn shutdown_takes_pgbouncers_graceful_form_too() {
        assert_eq!(parse("shutdown;"), Ok(Command::Shutdown));
        assert_eq!(parse("SHUTDOWN wait_for_servers"), Ok(Command::Shutdown));
        assert!(parse("SHUTDOWN NOW").is_err());
    }

    #[test]
    fn anything_else_is_refused_with_a_hint() {
        for bad in [
            "",
            "SHOW",
            "SHOW POOLS EXTRA",
            "SELECT 1",
            "DROP TABLE t",
            "RELOAD NOW",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("SHOW HELP"), "{bad}: {e}");
        }
    }
}
