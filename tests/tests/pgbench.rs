//! pgbench through Switchyard: the standard TPC-B-like workload must finish with no failed
//! transaction in each protocol mode.

use switchyard_tests::{roles, shared_cluster, trust_pool, unique_name, Proxy};

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
        let (done, failed) = proxy.pgbench(&db, &["-M", mode, "-c", "10", "-j", "2", "-t", "200"]);
        assert_eq!(done, 2000, "{mode}");
        assert_eq!(failed, 0, "{mode}");
    }
    let (done, failed) = proxy.pgbench(
        &db,
        &["-S", "-M", "extended", "-c", "20", "-j", "2", "-t", "500"],
    );
    assert_eq!((done, failed), (10_000, 0));
}

/// `-M prepared` in transaction mode: named statements that every client prepares once and
/// runs on whichever server its transaction gets (the proxy prepares them there as needed).
/// One pgbench thread per client: pgbench prepares a statement with a blocking call, so with
/// more clients than servers per thread, a client waiting for a server would stop the thread
/// that the clients holding the servers need (with PgBouncer too).
#[test]
fn transaction_mode_prepared() {
    let (db, proxy) = setup("pool_mode = \"transaction\"\npool_size = 4");
    let (done, failed) = proxy.pgbench(&db, &["-M", "prepared", "-c", "8", "-j", "8", "-t", "200"]);
    assert_eq!((done, failed), (1600, 0));
    let (done, failed) = proxy.pgbench(
        &db,
        &["-S", "-M", "prepared", "-c", "8", "-j", "8", "-t", "500"],
    );
    assert_eq!((done, failed), (4000, 0));
}

#[test]
fn statement_mode_select_only() {
    let (db, proxy) = setup("pool_mode = \"statement\"\npool_size = 4");
    for mode in ["simple", "extended"] {
        let (done, failed) =
            proxy.pgbench(&db, &["-S", "-M", mode, "-c", "10", "-j", "2", "-t", "300"]);
        assert_eq!((done, failed), (3000, 0), "{mode}");
    }
    // Named statements too (one thread per client: see `transaction_mode_prepared`).
    let (done, failed) = proxy.pgbench(
        &db,
        &["-S", "-M", "prepared", "-c", "8", "-j", "8", "-t", "300"],
    );
    assert_eq!((done, failed), (2400, 0));
}

#[test]
fn session_mode_prepared() {
    let (db, proxy) = setup("pool_mode = \"session\"\npool_size = 10");
    let (done, failed) =
        proxy.pgbench(&db, &["-M", "prepared", "-c", "10", "-j", "2", "-t", "200"]);
    assert_eq!((done, failed), (2000, 0));
    // Reconnecting clients (-C) exercise login, reset and reuse of server connections.
    let (done, failed) = proxy.pgbench(
        &db,
        &["-M", "prepared", "-C", "-c", "5", "-j", "1", "-t", "50"],
    );
    assert_eq!((done, failed), (250, 0));
}
