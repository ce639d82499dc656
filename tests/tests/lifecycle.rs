//! Shutdown on SIGTERM/SIGINT: in-flight transactions may finish, everyone else is told 57P01,
//! the process exits 0.

use std::time::{Duration, Instant};
use switchyard_tests::metrics::{http_get, sample};
use switchyard_tests::{roles, shared_cluster, sqlstate, trust_proxy, Proxy};

fn setup(general: &str) -> (String, Proxy) {
    trust_proxy("life", general, "pool_mode = \"transaction\"")
}

#[tokio::test]
async fn sigterm_lets_open_transactions_finish_then_exits_zero() {
    let metrics_port = switchyard_tests::free_port();
    let (db, mut proxy) = setup(&format!(
        "shutdown_timeout_ms = 10000\nmetrics_addr = \"127.0.0.1:{metrics_port}\""
    ));
    let in_tx = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let idle = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    in_tx.batch_execute("CREATE TABLE t (x int)").await.unwrap();
    in_tx
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();

    proxy.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // New clients are refused: the listener is closed.
    assert!(proxy.connect(roles::TRUST, None, &db).await.is_err());
    // The idle client was closed with 57P01.
    let err = idle.simple_query("SELECT 1").await.unwrap_err();
    assert!(
        idle.is_closed() || sqlstate(&err) == Some("57P01"),
        "{err:?}"
    );
    // Prometheus can watch the drain: the endpoint still answers, and says so.
    let (head, body) =
        tokio::task::spawn_blocking(move || http_get(metrics_port, "GET", "/metrics"))
            .await
            .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(sample(&body, "switchyard_shutting_down", ""), 1.0);
    let pool = format!("database=\"{db}\",user=\"{}\"", roles::TRUST);
    assert_eq!(sample(&body, "switchyard_clients", &pool), 1.0, "{body}");
    // The client inside a transaction may finish it.
    in_tx
        .batch_execute("INSERT INTO t VALUES (2)")
        .await
        .unwrap();
    in_tx.batch_execute("COMMIT").await.unwrap();
    // ... and is closed right after.
    let status = proxy
        .wait_exit(Duration::from_secs(5))
        .expect("exits after the last transaction");
    assert!(status.success(), "{status}\n{}", proxy.log());
    let c = shared_cluster();
    let n = c
        .psql(c.primary.port, &db, "select count(*) from t")
        .unwrap();
    assert_eq!(n.trim(), "2", "the committed transaction is complete");
}

#[tokio::test]
async fn shutdown_timeout_closes_transactions_that_do_not_finish() {
    let (db, mut proxy) = setup("shutdown_timeout_ms = 500");
    let stuck = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    stuck.batch_execute("CREATE TABLE s (x int)").await.unwrap();
    stuck
        .batch_execute("BEGIN; INSERT INTO s VALUES (1)")
        .await
        .unwrap();
    let started = Instant::now();
    proxy.signal(libc::SIGINT);
    let status = proxy
        .wait_exit(Duration::from_secs(5))
        .expect("exits after shutdown_timeout");
    assert!(status.success(), "{status}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert!(stuck.simple_query("SELECT 1").await.is_err());
    // The open transaction was rolled back by the server, not committed.
    let c = shared_cluster();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let open = c
            .psql(c.primary.port, "postgres", &format!("select count(*) from pg_stat_activity where datname = '{db}' and state like 'idle in transaction%'"))
            .unwrap();
        if open.trim() == "0" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "transaction left open on the server"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let n = c
        .psql(c.primary.port, &db, "select count(*) from s")
        .unwrap();
    assert_eq!(n.trim(), "0");
}

#[tokio::test]
async fn a_new_proxy_takes_the_address_while_the_old_one_drains() {
    let sockets = tempfile::tempdir().unwrap();
    let general = format!(
        "shutdown_timeout_ms = 10000\nunix_socket_dir = \"{}\"",
        sockets.path().display()
    );
    let (db, mut old) = setup(&general);
    let in_tx = old.connect(roles::TRUST, None, &db).await.unwrap();
    in_tx
        .batch_execute("CREATE TABLE r (x int); BEGIN; INSERT INTO r VALUES (1)")
        .await
        .unwrap();
    old.signal(libc::SIGTERM);
    // The old proxy stops accepting at once...
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", old.port)).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ... so a new one (an upgrade, a new config) binds the same address while the old one
    // still holds a transaction there, and serves new clients.
    let pool = switchyard_tests::trust_pool(shared_cluster(), &db, "pool_mode = \"transaction\"");
    let new = Proxy::start_at(old.port, &general, &pool);
    let fresh = new.connect(roles::TRUST, None, &db).await.unwrap();
    fresh.batch_execute("SELECT 1").await.unwrap();
    // The transaction on the old one finishes there, and the old one exits.
    in_tx
        .batch_execute("INSERT INTO r VALUES (2); COMMIT")
        .await
        .unwrap();
    let status = old
        .wait_exit(Duration::from_secs(5))
        .expect("exits after the last transaction");
    assert!(status.success(), "{status}\n{}", old.log());
    fresh.batch_execute("SELECT 1").await.unwrap();
    // The old one removed its Unix socket when it stopped accepting, not at exit: the new
    // one's is still there.
    let socket = sockets.path().join(format!(".s.PGSQL.{}", new.port));
    assert!(
        std::os::unix::net::UnixStream::connect(&socket).is_ok(),
        "{}",
        socket.display()
    );
    let c = shared_cluster();
    let n = c
        .psql(c.primary.port, &db, "select count(*) from r")
        .unwrap();
    assert_eq!(n.trim(), "2");
}
