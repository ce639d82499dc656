//! What the `SHOW` commands answer, read from the live pools and routers: counts and atomics
//! the data path keeps anyway, so a console query costs the clients nothing.

use super::command::HELP;
use super::table::{Cell, Kind, Table};
use crate::cancel::Who;
use crate::Proxy;

/// The pools by database, then user: the order an operator reads them in.
pub(super) fn sorted(proxy: &Proxy) -> Vec<std::sync::Arc<crate::pool::UserPool>> {
    let mut pools = proxy.pools.all();
    pools.sort_by(|a, b| (&a.database, &a.user).cmp(&(&b.database, &b.user)));
    pools
}

pub fn help() -> Table {
    let mut t = Table::new(&[("command", Kind::Text), ("shows", Kind::Text)]);
    for (command, shows) in HELP {
        t.push(vec![(*command).into(), (*shows).into()]);
    }
    t
}

pub fn version() -> Table {
    let mut t = Table::new(&[("version", Kind::Text)]);
    t.push(vec![
        format!("Switchyard {}", env!("CARGO_PKG_VERSION")).into()
    ]);
    t
}

/// Per (database, user): `cl_active` counts logged-in clients not waiting for a server,
/// `cl_waiting` checkouts waiting for a free connection, `sv_active` connections checked out,
/// `sv_idle` connections in the pool; both summed over the pool's servers. `paused` is 1
/// between the console's `PAUSE` and `RESUME`.
pub fn pools(proxy: &Proxy) -> Table {
    let mut t = Table::new(&[
        ("database", Kind::Text),
        ("user", Kind::Text),
        ("pool_mode", Kind::Text),
        ("cl_active", Kind::Int),
        ("cl_waiting", Kind::Int),
        ("sv_active", Kind::Int),
        ("sv_idle", Kind::Int),
        ("pool_size", Kind::Int),
        ("paused", Kind::Int),
    ]);
    for pool in sorted(proxy) {
        // One snapshot, so that a reload meanwhile cannot mix two server lists in a row.
        let servers = pool.servers();
        let waiting: usize = servers.iter().map(|s| s.waiting()).sum();
        let active: usize = servers.iter().map(|s| s.in_use()).sum();
        let idle: usize = servers.iter().map(|s| s.idle_count()).sum();
        let size = servers.first().map_or(0, |s| s.size);
        t.push(vec![
            pool.database.as_str().into(),
            pool.user.as_str().into(),
            pool.rules().mode.name().into(),
            pool.clients().saturating_sub(waiting).into(),
            waiting.into(),
            active.into(),
            idle.into(),
            size.into(),
            u32::from(pool.is_paused()).into(),
        ]);
    }
    t
}

/// Per connected client, by its proxy-issued `pid` (the key of its cancel requests):
/// `state` is `active` while it holds a server connection (`server_addr`, and `server_pid`, the
/// PostgreSQL backend's pid as `pg_stat_activity` shows it), `idle` between transactions,
/// `login` while it logs in, `console` for an admin console session. `application_name` is
/// the one it gave at login; `connected_s`, seconds since it logged in.
pub fn clients(proxy: &Proxy) -> Table {
    let mut t = Table::new(&[
        ("pid", Kind::Int),
        ("database", Kind::Text),
        ("user", Kind::Text),
        ("state", Kind::Text),
        ("addr", Kind::Text),
        ("port", Kind::Int),
        ("application_name", Kind::Text),
        ("connected_s", Kind::Int),
        ("server_addr", Kind::Text),
        ("server_pid", Kind::Int),
    ]);
    let console = proxy
        .config
        .admin
        .as_ref()
        .map_or("", |a| a.database.as_str());
    for (pid, slot) in proxy.cancels.clients() {
        let server = slot.server();
        let info = slot.info.get();
        let (database, user, state) = match info.map(|i| &i.who) {
            None => ("", "", "login"),
            Some(Who::Console(user)) => (console, user.as_str(), "console"),
            Some(Who::Pool(p)) => {
                let state = if server.is_some() { "active" } else { "idle" };
                (p.database.as_str(), p.user.as_str(), state)
            }
        };
        let peer = info.and_then(|i| i.peer);
        t.push(vec![
            Cell::Int(i64::from(pid)),
            database.into(),
            user.into(),
            state.into(),
            peer.map_or_else(|| "unix".to_string(), |a| a.ip().to_string())
                .into(),
            Cell::Int(peer.map_or(0, |a| i64::from(a.port()))),
            info.map_or("", |i| i.application_name.as_str()).into(),
            info.map_or(0, |i| i.since.elapsed().as_secs()).into(),
            server
                .as_ref()
                .map_or_else(String::new, |k| k.addr.to_string())
                .into(),
            Cell::Int(server.map_or(0, |k| i64::from(k.pid))),
        ]);
    }
    t
}

/// Per (database, user), since start, named as PgBouncer's `SHOW STATS` names them:
/// `total_xact_count` transactions ended (a statement outside a transaction block is one),
/// `total_query_count` requests answered (a simple Query, or extended-protocol messages up to
/// a Sync), `total_received` and `total_sent` bytes read from clients and written to them,
/// `total_xact_time` and `total_query_time` microseconds servers spent in those
/// transactions (from the first request to the end, idle time inside included) and on those
/// requests (from sent to answered), `total_wait_time` microseconds checkouts waited in line
/// for a server connection. The `avg_*` columns are the last `stats_period_ms`'s: requests,
/// transactions and bytes per second, mean transaction, request and wait times (µs; the wait
/// per transaction), as PgBouncer's.
pub fn stats(proxy: &Proxy) -> Table {
    let mut t = Table::new(&[
        ("database", Kind::Text),
        ("user", Kind::Text),
        ("total_xact_count", Kind::Int),
        ("total_query_count", Kind::Int),
        ("total_received", Kind::Int),
        ("total_sent", Kind::Int),
        ("total_xact_time", Kind::Int),
        ("total_query_time", Kind::Int),
        ("total_wait_time", Kind::Int),
        ("avg_xact_count", Kind::Int),
        ("avg_query_count", Kind::Int),
        ("avg_recv", Kind::Int),
        ("avg_sent", Kind::Int),
        ("avg_xact_time", Kind::Int),
        ("avg_query_time", Kind::Int),
        ("avg_wait_time", Kind::Int),
    ]);
    for pool in sorted(proxy) {
        let totals = pool.stats.totals();
        let last = pool.stats.last_period();
        t.push(vec![
            pool.database.as_str().into(),
            pool.user.as_str().into(),
            totals.transactions.into(),
            totals.requests.into(),
            totals.received.into(),
            totals.sent.into(),
            totals.transaction_us.into(),
            totals.request_us.into(),
            totals.waited_us.into(),
            (last.transactions_per_s.round() as u64).into(),
            (last.requests_per_s.round() as u64).into(),
            (last.received_per_s.round() as u64).into(),
            (last.sent_per_s.round() as u64).into(),
            last.transaction_us.into(),
            last.request_us.into(),
            last.wait_us.into(),
        ]);
    }
    t
}

/// Per server of each pool: `healthy` is false while the server counts as down after a
/// failed connect (`server_login_retry_ms`); `opened` counts connections opened since start;
/// `retired` marks a server a reload took out of service, listed while transactions still run
/// there.
pub fn servers(proxy: &Proxy) -> Table {
    let mut t = Table::new(&[
        ("database", Kind::Text),
        ("user", Kind::Text),
        ("server", Kind::Text),
        ("addr", Kind::Text),
        ("role", Kind::Text),
        ("healthy", Kind::Bool),
        ("sv_active", Kind::Int),
        ("sv_idle", Kind::Int),
        ("cl_waiting", Kind::Int),
        ("opened", Kind::Int),
        ("pool_size", Kind::Int),
        ("retired", Kind::Bool),
    ]);
    let now = crate::clock::read_ms();
    for pool in sorted(proxy) {
        let (current, retiring) = (pool.servers(), pool.retiring());
        for s in current.iter().chain(&retiring) {
            t.push(vec![
                pool.database.as_str().into(),
                pool.user.as_str().into(),
                s.name.as_str().into(),
                s.target.addr.as_str().into(),
                s.role.name().into(),
                s.healthy(now).into(),
                s.in_use().into(),
                s.idle_count().into(),
                s.waiting().into(),
                s.opened.load(std::sync::atomic::Ordering::Relaxed).into(),
                s.size.into(),
                s.is_retired().into(),
            ]);
        }
    }
    t
}

/// Per pool: its chain of routing policies (empty: everything to the primary), the calls
/// that trapped since start (under this chain and those it replaced), and how many reloads
/// replaced the chain.
pub fn policies(proxy: &Proxy) -> Table {
    let mut t = Table::new(&[
        ("database", Kind::Text),
        ("user", Kind::Text),
        ("policies", Kind::Text),
        ("traps", Kind::Int),
        ("reloads", Kind::Int),
    ]);
    for pool in sorted(proxy) {
        let report = pool.backends.report();
        t.push(vec![
            pool.database.as_str().into(),
            pool.user.as_str().into(),
            report.policies.join(", ").into(),
            report.traps.into(),
            pool.backends.swaps().into(),
        ]);
    }
    t
}

/// The `[general]` settings in effect, defaults included; keys left unset without a default
/// (`unix_socket_dir`, `worker_threads`, ...) are not listed.
pub fn config(proxy: &Proxy) -> Table {
    let mut t = Table::new(&[("key", Kind::Text), ("value", Kind::Text)]);
    if let Ok(toml::Value::Table(general)) = toml::Value::try_from(&**proxy.general()) {
        for (key, value) in general {
            let value = match value {
                toml::Value::String(s) => s,
                other => other.to_string(),
            };
            t.push(vec![format!("general.{key}").into(), value.into()]);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_every_command_once() {
        let t = help();
        assert_eq!(t.rows.len(), HELP.len());
        for (command, _) in HELP {
            // As an operator would type it: optional parts left out, placeholders filled in.
            let typed = command.replace(" [db]", "").replace(" pid", " 7");
            assert!(super::super::command::parse(&typed).is_ok(), "{command}");
        }
    }
}
