//! The cost of one routing decision: native routers next to WebAssembly policy chains.
//!
//! `cargo bench -p switchyard --bench route_call` (build the plugins first: `cargo xtask test`
//! or `cargo build --release --target wasm32-wasip2 -p read-write-split -p least-outstanding`).
//! Each case runs 7 timed loops of 200,000 calls after a warm-up; the median is printed.
//! `ROUTE_CALL_ONLY=<text>` times only the cases whose name contains the text.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard::config::Role;
use switchyard::pool::{ServerPool, Servers};
use switchyard::router::wasm::{built_component, LoadedPlugin, PolicyChain};
use switchyard::router::{Classifier, PrimaryOnly, RouteRequest, Router};

const CALLS: u32 = 200_000;
const RUNS: usize = 7;

fn servers() -> Servers {
    let login_retry = Duration::from_secs(5);
    Arc::new(vec![
        Arc::new(ServerPool::detached(
            "primary",
            Role::Primary,
            1,
            login_retry,
        )),
        Arc::new(ServerPool::detached(
            "replica1",
            Role::Replica,
            2,
            login_retry,
        )),
        Arc::new(ServerPool::detached(
            "replica2",
            Role::Replica,
            3,
            login_retry,
        )),
    ])
}

fn time(name: &str, router: &dyn Router, sql: &str) -> f64 {
    // ROUTE_CALL_ONLY=<text>: time only the cases whose name contains it (for profiling one).
    if std::env::var("ROUTE_CALL_ONLY").is_ok_and(|only| !name.contains(&only)) {
        return f64::NAN;
    }
    let message = {
        let mut m = vec![b'Q'];
        m.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
        m.extend_from_slice(sql.as_bytes());
        m.push(0);
        m
    };
    let empty = switchyard::server::ParamList::new();
    let hint = std::cell::Cell::new(switchyard::router::Hint::None);
    let request = RouteRequest {
        message: &message,
        sql: Some(sql),
        session_id: 7,
        database: "d",
        user: "u",
        application_name: "bench",
        client_addr: None,
        options: &empty,
        in_transaction: false,
        read_only_transaction: false,
        session_hint: &hint,
    };
    for _ in 0..CALLS / 10 {
        black_box(router.route(black_box(&request)));
    }
    let mut per_call: Vec<f64> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..CALLS {
                black_box(router.route(black_box(&request)));
            }
            start.elapsed().as_nanos() as f64 / CALLS as f64
        })
        .collect();
    per_call.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = per_call[RUNS / 2];
    println!("| {name} | {median:.0} ns |");
    median
}

/// The classifier alone, as a native baseline for the host's per-query work.
struct ClassifyOnly(Classifier);

impl Router for ClassifyOnly {
    fn route(&self, r: &RouteRequest<'_>) -> switchyard::router::Route {
        black_box(self.0.classify(r.sql.unwrap_or("")));
        switchyard::router::Route::Primary
    }
}

fn main() {
    let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;";
    let deadline = Duration::from_millis(5);
    let load_with = |name: &str, config: &str| {
        LoadedPlugin::load(&built_component(name), config.into(), 32 << 20).expect("plugin loads")
    };
    let load = |name: &str| load_with(name, "");
    let chain = |plugins: Vec<Arc<LoadedPlugin>>| {
        PolicyChain::new(
            plugins,
            servers(),
            vec![1, 1, 1],
            Classifier::default(),
            deadline,
            switchyard::config::FallbackReads::Primary,
        )
    };
    println!("route() per call, median of {RUNS} x {CALLS} calls, SQL = {sql:?}\n");
    println!("| router | per call |\n|---|---|");
    time("native PrimaryOnly", &PrimaryOnly, sql);
    time(
        "native classifier only",
        &ClassifyOnly(Classifier::default()),
        sql,
    );
    time(
        "wasm read-write-split (incl. classifier)",
        &chain(vec![load("read_write_split")]),
        sql,
    );
    // With its own write functions the policy reads the text of every read, so its decisions
    // are not kept: a component call per query.
    time(
        "wasm read-write-split, called every time (own write_functions)",
        &chain(vec![load_with(
            "read_write_split",
            "write_functions = [\"audit_write\"]",
        )]),
        sql,
    );
    time(
        "wasm read-write-split + least-outstanding",
        &chain(vec![load("read_write_split"), load("least_outstanding")]),
        sql,
    );
    time("wasm round-robin", &chain(vec![load("round_robin")]), sql);
}
