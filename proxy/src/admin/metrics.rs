//! The proxy's state in Prometheus' text format, for `GET /metrics` on `general.metrics_addr`
//! (see [`serve`](super::metrics_http::serve)): the same counters the console's `SHOW` commands
//! read, named and typed as Prometheus expects (`_total` counters, gauges, seconds).

use super::show::sorted;
use crate::Proxy;
use std::fmt::{Display, Write};
use std::sync::atomic::Ordering;

/// The media type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A label value with `\`, `"` and newlines escaped, as the format requires.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Writes metric families: a `# HELP` and `# TYPE` header, then samples.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// The whole exposition, read from the live pools.
pub fn render(proxy: &Proxy) -> String {
    let pools = sorted(proxy);
    let mut e = Exposition(String::with_capacity(4096));
    e.family(
        "switchyard_info",
        "gauge",
        "The running Switchyard's version.",
    );
    e.sample(
        "switchyard_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    e.family(
        "switchyard_client_connections",
        "gauge",
        "Client connections open now, logging in and logged in (max_client_conn counts these).",
    );
    e.sample("switchyard_client_connections", &[], proxy.clients.count());
    e.family(
        "switchyard_shutting_down",
        "gauge",
        "1 once SIGTERM, SIGINT or the console's SHUTDOWN started the drain: no new client is accepted, transactions in flight may finish.",
    );
    let phase = proxy.shutdown.phase();
    e.sample(
        "switchyard_shutting_down",
        &[],
        u8::from(phase >= crate::shutdown::Phase::Draining),
    );

    type PoolValue = fn(&crate::pool::UserPool) -> u64;
    let per_pool: [(&str, &str, &str, PoolValue); 9] = [
        ("switchyard_clients", "gauge", "Clients logged in to the pool.", |p| {
            p.clients() as u64
        }),
        (
            "switchyard_clients_waiting",
            "gauge",
            "Checkouts waiting in line for a server connection of the pool.",
            |p| p.servers().iter().map(|s| s.waiting() as u64).sum(),
        ),
        (
            "switchyard_pool_paused",
            "gauge",
            "1 while the pool is paused (PAUSE on the admin console), else 0.",
            |p| u64::from(p.is_paused()),
        ),
        (
            "switchyard_transactions_total",
            "counter",
            "Transactions ended (a statement outside a transaction block is one).",
            |p| p.stats.totals().transactions,
        ),
        (
            "switchyard_requests_total",
            "counter",
            "Requests a server answered (a simple Query, or extended-protocol messages up to a Sync).",
            |p| p.stats.totals().requests,
        ),
        (
            "switchyard_client_received_bytes_total",
            "counter",
            "Bytes read from the pool's clients after login (PgBouncer's total_received).",
            |p| p.stats.totals().received,
        ),
        (
            "switchyard_client_sent_bytes_total",
            "counter",
            "Bytes written to the pool's clients after login: the servers' answers and the proxy's own messages (PgBouncer's total_sent).",
            |p| p.stats.totals().sent,
        ),
        (
            "switchyard_policy_traps_total",
            "counter",
            "Routing-policy calls that trapped or could not run and were routed by the fallback.",
            |p| p.backends.report().traps,
        ),
        (
            "switchyard_policy_reloads_total",
            "counter",
            "Times a reload replaced the pool's routing policies.",
            |p| p.backends.swaps(),
        ),
    ];
    for (name, kind, help, value) in per_pool {
        e.family(name, kind, help);
        for p in &pools {
            e.sample(
                name,
                &[("database", &p.database), ("user", &p.user)],
                value(p),
            );
        }
    }
    type Seconds = fn(&crate::pool::Totals) -> u64;
    let per_pool_seconds: [(&str, &str, Seconds); 3] = [
        (
            "switchyard_transaction_seconds_total",
            "Time servers were held by transactions, from the first request to the end (a rate over switchyard_transactions_total's is the mean transaction time).",
            |t| t.transaction_us,
        ),
        (
            "switchyard_request_seconds_total",
            "Time servers worked on requests, from sent to answered (a rate over switchyard_requests_total's is the mean request time).",
            |t| t.request_us,
        ),
        (
            "switchyard_wait_seconds_total",
            "Time checkouts waited in line for a server connection of the pool.",
            |t| t.waited_us,
        ),
    ];
    for (name, help, value) in per_pool_seconds {
        e.family(name, "counter", help);
        for p in &pools {
            e.sample(
                name,
                &[("database", &p.database), ("user", &p.user)],
                value(&p.stats.totals()) as f64 / 1e6,
            );
        }
    }

    let now = crate::clock::read_ms();
    e.family(
        "switchyard_server_connections",
        "gauge",
        "Server connections of the pool to this server, checked out (active) or in the pool (idle); \
         retired=\"true\": a server a reload took out of service, until its last transaction ends.",
    );
    for p in &pools {
        for s in p.servers().iter() {
            for (state, n) in [("active", s.in_use()), ("idle", s.idle_count())] {
                let labels = [
                    ("database", p.database.as_str()),
                    ("user", &p.user),
                    ("server", &s.name),
                    ("role", s.role.name()),
                    ("state", state),
                ];
                e.sample("switchyard_server_connections", &labels, n);
            }
        }
        // A retired server has no idle connections: each closes as its transaction ends.
        for s in p.retiring() {
            let labels = [
                ("database", p.database.as_str()),
                ("user", &p.user),
                ("server", &s.name),
                ("role", s.role.name()),
                ("state", "active"),
                ("retired", "true"),
            ];
            e.sample("switchyard_server_connections", &labels, s.in_use());
        }
    }
    type ServerValue = fn(&crate::pool::ServerPool, u64) -> u64;
    let per_server: [(&str, &str, &str, ServerValue); 2] = [
        (
            "switchyard_server_healthy",
            "gauge",
            "1 while the server is healthy; 0 for server_login_retry_ms after a failed connect.",
            |s, now| u64::from(s.healthy(now)),
        ),
        (
            "switchyard_server_connections_opened_total",
            "counter",
            "Server connections the pool opened to this server.",
            |s, _| s.opened.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, value) in per_server {
        e.family(name, kind, help);
        for p in &pools {
            for s in p.servers().iter() {
                let labels = [
                    ("database", p.database.as_str()),
                    ("user", &p.user),
                    ("server", &s.name),
                    ("role", s.role.name()),
                ];
                e.sample(name, &labels, value(s, now));
            }
        }
    }
    e.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
    }

    #[test]
    fn samples_are_written_in_the_text_format() {
        let mut e = Exposition(String::new());
        e.family("m_total", "counter", "Things.");
        e.sample("m_total", &[("database", "app"), ("user", "a\"b")], 3);
        e.sample("m_total", &[], 0.5);
        assert_eq!(
            e.0,
            "# HELP m_total Things.\n# TYPE m_total counter\n\
             m_total{database=\"app\",user=\"a\\\"b\"} 3\nm_total 0.5\n"
        );
    }
}
