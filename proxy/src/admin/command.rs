//! The console's commands: what an operator types, parsed into what the console does.
//!
//! The vocabulary is PgBouncer's where it overlaps (`SHOW POOLS`, `SHOW SERVERS`, `SHOW
//! CLIENTS`, `SHOW STATS`, `SHOW CONFIG`, `SHOW VERSION`, `SHOW HELP`, `RELOAD`), so that operators and monitoring scripts
//! used to its console find their way. Keywords are case-insensitive; a trailing `;` is fine.

/// One console command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
];

/// Parses one statement of a console query; the error is the message for the client.
pub fn parse(sql: &str) -> Result<Command, String> {
    let words: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .split_ascii_whitespace()
        .map(str::to_ascii_uppercase)
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
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
        _ => Err(format!(
            "unknown admin console command \"{}\"; SHOW HELP lists the commands",
            sql.trim()
        )),
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
