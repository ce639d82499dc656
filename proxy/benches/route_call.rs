//! The cost of one routing decision: native routers next to WebAssembly policy chains.
//!
//! `cargo bench -p switchyard --bench route_call` (build the plugins first: `cargo xtask test`
//! or `cargo build --release --target wasm32-wasip2 -p read-write-split -p least-outstanding`).
//! Each case runs 7 timed loops of 200,000 calls after a warm-up; the median is printed.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard::config::Role;
use switchyard::pool::{PoolTimeouts, ServerPool};
use switchyard::router::wasm::{LoadedPlugin, PolicyChain};
use switchyard::router::{Classifier, PrimaryOnly, RouteRequest, Router};
use switchyard::server::ServerTarget;

const CALLS: u32 = 200_000;
const RUNS: usize = 7;

/// A built component: target/<profile>/deps/<this bench> -> target/wasm32-wasip2/release
/// (so `CARGO_TARGET_DIR` is followed).
fn plugin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let path = exe
        .ancestors()
        .nth(3)
        .expect("target dir")
        .join("wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} missing: build the plugins first",
        path.display()
    );
    path
}

fn servers() -> Arc<Vec<ServerPool>> {
    let timeouts = PoolTimeouts {
        checkout: Duration::from_secs(1),
        connect: Duration::from_secs(1),
        idle: None,
        lifetime: None,
        login_retry: Duration::from_secs(5),
    };
    let target = |port: u16| ServerTarget {
        host: "127.0.0.1".into(),
        port,
        addr: format!("127.0.0.1:{port}"),
        user: "u".into(),
        database: "d".into(),
        password: None,
    };
    Arc::new(vec![
        ServerPool::new(
            "primary".into(),
            Role::Primary,
            target(1),
            20,
            0,
            timeouts,
            1,
        ),
        ServerPool::new(
            "replica1".into(),
            Role::Replica,
            target(2),
            20,
            0,
            timeouts,
            1,
        ),
        ServerPool::new(
            "replica2".into(),
            Role::Replica,
            target(3),
            20,
            0,
            timeouts,
            1,
        ),
    ])
}

fn time(name: &str, router: &dyn Router, sql: &str) -> f64 {
    let message = {
        let mut m = vec![b'Q'];
        m.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
        m.extend_from_slice(sql.as_bytes());
        m.push(0);
        m
    };
    let empty = switchyard::server::ParamList::new();
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
    let load = |name: &str| {
        LoadedPlugin::load(&plugin(name), String::new(), 32 << 20).expect("plugin loads")
    };
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
    time(
        "wasm read-write-split + least-outstanding",
        &chain(vec![load("read_write_split"), load("least_outstanding")]),
        sql,
    );
    time("wasm round-robin", &chain(vec![load("round_robin")]), sql);
}
