//! pgbench through Switchyard: the standard TPC-B-like workload must finish with no failed
//! transaction in each protocol mode.

use std::process::Command;
use switchyard_tests::{roles, shared_cluster, trust_pool, unique_name, Proxy};

/// Runs pgbench through the proxy and returns (processed, failed) transactions.
fn pgbench(proxy: &Proxy, db: &str, args: &[&str]) -> (u64, u64) {
    let c = shared_cluster();
    let out = Command::new(c.bindir.join("pgbench"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &proxy.port.to_string(),
            "-U",
            roles::TRUST,
        ])
        .args(args)
        .arg(db)
        .output()
        .expect("run pgbench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pgbench {args:?} failed:\n{stdout}\n{stderr}\n{}",
        proxy.log()
    );
    let number = |label: &str| -> u64 {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.split('/').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no '{label}' in pgbench output:\n{stdout}"))
    };
    (
        number("number of transactions actually processed: "),
        number("number of failed transactions: "),
    )
}

fn setup(pool: &str) -> (String, Proxy) {
    let cluster = shared_cluster();
    let db = unique_name("bench");
    cluster.create_database(&db, roles::TRUST);
    cluster.pgbench_init(&db);
    (
        db.clone(),
        Proxy::start("", &trust_pool(cluster, &db, pool)),
    )
}

#[test]
fn transaction_mode_simple_and_extended() {
    let (db, proxy) = setup("pool_mode = \"transaction\"\npool_size = 4");
    for mode in ["simple", "extended"] {
        let (done, failed) = pgbench(
            &proxy,
            &db,
            &["-M", mode, "-c", "10", "-j", "2", "-t", "200"],
        );
        assert_eq!(done, 2000, "{mode}");
        assert_eq!(failed, 0, "{mode}");
    }
    let (done, failed) = pgbench(
        &proxy,
        &db,
        &["-S", "-M", "extended", "-c", "20", "-j", "2", "-t", "500"],
    );
    assert_eq!((done, failed), (10_000, 0));
}

#[test]
fn statement_mode_select_only() {
    let (db, proxy) = setup("pool_mode = \"statement\"\npool_size = 4");
    for mode in ["simple", "extended"] {
        let (done, failed) = pgbench(
            &proxy,
            &db,
            &["-S", "-M", mode, "-c", "10", "-j", "2", "-t", "300"],
        );
        assert_eq!((done, failed), (3000, 0), "{mode}");
    }
}

#[test]
fn session_mode_prepared() {
    let (db, proxy) = setup("pool_mode = \"session\"\npool_size = 10");
    let (done, failed) = pgbench(
        &proxy,
        &db,
        &["-M", "prepared", "-c", "10", "-j", "2", "-t", "200"],
    );
    assert_eq!((done, failed), (2000, 0));
    // Reconnecting clients (-C) exercise login, reset and reuse of server connections.
    let (done, failed) = pgbench(
        &proxy,
        &db,
        &["-M", "prepared", "-C", "-c", "5", "-j", "1", "-t", "50"],
    );
    assert_eq!((done, failed), (250, 0));
}
