//! Time limits and dead-peer detection: idle clients, requests the server does not answer,
//! TCP keepalive and the TCP user timeout, each checked against what the real server sees.

use std::time::{Duration, Instant};
use switchyard_tests::{activity, roles, shared_cluster, trust_proxy, Proxy};

fn setup(general: &str, pool: &str) -> (String, Proxy) {
    trust_proxy("limits", general, pool)
}

/// Connects through the proxy and returns the client with its connection task, whose result
/// carries an error the proxy sends between queries (a FATAL when it closes the client).
async fn connect_watched(
    proxy: &Proxy,
    db: &str,
) -> (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let (client, conn) = tokio_postgres::connect(
        &proxy.conn_str(roles::TRUST, None, db),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    (client, tokio::spawn(conn))
}

/// The FATAL error a watched connection ended with (within 5 s).
async fn closed_with(
    conn: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) -> (String, String) {
    let ended = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the proxy closes the idle client")
        .unwrap();
    let err = ended.expect_err("closed with an error");
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(db.severity(), "FATAL");
    (db.code().code().to_string(), db.message().to_string())
}

#[tokio::test]
async fn idle_transaction_timeout_closes_the_client_and_frees_its_server() {
    let (db, proxy) = setup(
        "idle_transaction_timeout_ms = 400",
        "pool_mode = \"transaction\"\npool_size = 1",
    );
    let setup_client = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    setup_client
        .batch_execute("CREATE TABLE t (x int)")
        .await
        .unwrap();
    // A client that keeps working inside its transaction is not idle: 1.2 s of statements
    // 100 ms apart.
    let (busy, busy_conn) = connect_watched(&proxy, &db).await;
    busy.batch_execute("BEGIN").await.unwrap();
    for i in 0..12 {
        busy.execute("INSERT INTO t VALUES ($1)", &[&i])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    busy.batch_execute("COMMIT").await.unwrap();
    // Outside a transaction, idling costs nothing here (client_idle_timeout_ms is 0).
    tokio::time::sleep(Duration::from_millis(800)).await;
    busy.batch_execute("SELECT 1").await.unwrap();
    assert!(!busy_conn.is_finished());

    // One that stops inside its transaction holds the only server, then is closed.
    let (stuck, stuck_conn) = connect_watched(&proxy, &db).await;
    stuck
        .batch_execute("BEGIN; INSERT INTO t VALUES (100)")
        .await
        .unwrap();
    let started = Instant::now();
    let (code, message) = closed_with(stuck_conn).await;
    let waited = started.elapsed();
    assert_eq!(code, "25P03");
    assert_eq!(
        message,
        "terminating connection due to idle-in-transaction timeout"
    );
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // Its transaction was rolled back and the server went back to the pool of one.
    let n: i64 = busy
        .query_one("SELECT count(*) FROM t WHERE x = 100", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    let open = activity(&db)
        .into_iter()
        .filter(|(state, _)| state.starts_with("idle in transaction"))
        .count();
    assert_eq!(open, 0);
    // A BEGIN the proxy answered itself counts too, though it holds no server yet.
    let (deferred, deferred_conn) = connect_watched(&proxy, &db).await;
    deferred.batch_execute("BEGIN").await.unwrap();
    assert_eq!(closed_with(deferred_conn).await.0, "25P03");
}

#[tokio::test]
async fn client_idle_timeout_closes_clients_idle_between_transactions() {
    for mode in ["transaction", "session"] {
        let (db, proxy) = setup(
            "client_idle_timeout_ms = 400",
            &format!("pool_mode = \"{mode}\"\npool_size = 1"),
        );
        // Working clients are not idle, and a long query is the server's time, not the
        // client's: it outlasts the limit.
        let (busy, busy_conn) = connect_watched(&proxy, &db).await;
        for _ in 0..6 {
            busy.batch_execute("SELECT 1").await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        busy.batch_execute("SELECT pg_sleep(0.8)").await.unwrap();
        // Inside a transaction the other limit applies (here: none).
        busy.batch_execute("BEGIN; SELECT 1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
        busy.batch_execute("COMMIT").await.unwrap();
        assert!(!busy_conn.is_finished(), "{mode}");
        // Then it idles, and is closed.
        let started = Instant::now();
        let (code, message) = closed_with(busy_conn).await;
        assert_eq!(code, "57P05", "{mode}");
        assert_eq!(
            message,
            "terminating connection due to idle-session timeout"
        );
        assert!(started.elapsed() < Duration::from_secs(3), "{mode}");
        // A client that never sent a query is closed too, and the server is free for others.
        let (_never, never_conn) = connect_watched(&proxy, &db).await;
        assert_eq!(closed_with(never_conn).await.0, "57P05", "{mode}");
        let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
        let v: i32 = c.query_one("SELECT 3::int", &[]).await.unwrap().get(0);
        assert_eq!(v, 3, "{mode}");
    }
}

/// The established TCP sockets of process `pid`, from `/proc/net/tcp`: (local port, remote
/// port, the timer running (0 none, 1 retransmit, 2 keepalive, ...), ticks until it fires in
/// 1/100 s).
fn tcp_sockets_of(pid: u32) -> Vec<(u16, u16, u8, u64)> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap(), 16).unwrap();
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local remote st tx:rx tr:when retrnsmt uid timeout inode
            if f[3] != "01" || !inodes.contains(f[9]) {
                return None;
            }
            let (timer, when) = f[5].split_once(':').unwrap();
            Some((
                port(f[1]),
                port(f[2]),
                timer.parse().unwrap(),
                u64::from_str_radix(when, 16).unwrap(),
            ))
        })
        .collect()
}

#[tokio::test]
async fn tcp_keepalive_is_set_on_client_and_server_connections() {
    let primary = shared_cluster().primary.port;
    for (general, on) in [
        (
            "tcp_keepalive_idle_s = 30\ntcp_keepalive_interval_s = 5",
            true,
        ),
        ("tcp_keepalive = false", false),
    ] {
        let (db, proxy) = setup(general, "pool_mode = \"session\"\npool_size = 2");
        let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
        c.batch_execute("SELECT 1").await.unwrap();
        // /proc shows one timer per socket: a retransmit timer, while data is not yet
        // acknowledged, hides the keepalive timer. Wait for the idle sockets to settle.
        let deadline = Instant::now() + Duration::from_secs(5);
        let (clients, servers) = loop {
            let sockets = tcp_sockets_of(proxy.pid());
            let clients: Vec<_> = sockets
                .iter()
                .filter(|s| s.0 == proxy.port)
                .copied()
                .collect();
            let servers: Vec<_> = sockets.iter().filter(|s| s.1 == primary).copied().collect();
            let settled = sockets.iter().all(|s| s.2 == 0 || s.2 == 2);
            if settled || Instant::now() > deadline {
                break (clients, servers);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(clients.len(), 1, "{general}: {clients:?}");
        assert_eq!(servers.len(), 1, "{general}: {servers:?}");
        for s in clients.iter().chain(&servers) {
            assert_eq!(s.2, if on { 2 } else { 0 }, "{general}: the timer of {s:?}");
            if on {
                assert!(s.3 <= 30 * 100, "{general}: first probe due in {s:?}");
            }
        }
    }
}

/// The SQLSTATE and message of a query's error, and whether it was FATAL.
fn db_error(e: &tokio_postgres::Error) -> (String, String, bool) {
    let db = e.as_db_error().unwrap_or_else(|| panic!("{e:?}"));
    (
        db.code().code().to_string(),
        db.message().to_string(),
        db.severity() == "FATAL",
    )
}

/// Waits (up to 5 s) until no server session of `db` runs `pg_sleep`: the cancel reached it.
async fn no_sleeper_left(db: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let sleepers: Vec<_> = activity(db)
            .into_iter()
            .filter(|(state, query)| state == "active" && query.contains("pg_sleep"))
            .collect();
        if sleepers.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "still running: {sleepers:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `pg_sleep(30)` sent on `c` is cut by the query timeout with FATAL `57014`: the client is
/// closed and the server's query cancelled.
async fn cut_fatally(
    c: &tokio_postgres::Client,
    conn: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    db: &str,
) {
    let e = c.batch_execute("SELECT pg_sleep(30)").await.unwrap_err();
    let (code, _, fatal) = db_error(&e);
    assert_eq!((code.as_str(), fatal), ("57014", true));
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the client is closed")
        .unwrap()
        .ok();
    no_sleeper_left(db).await;
}

#[tokio::test]
async fn query_timeout_cancels_an_unanswered_request_and_the_client_goes_on() {
    let (db, proxy) = setup(
        "query_timeout_ms = 600",
        "pool_mode = \"transaction\"\npool_size = 1",
    );
    let (c, conn) = connect_watched(&proxy, &db).await;
    c.batch_execute("CREATE TABLE t (x int)").await.unwrap();
    // Each request has its own time: eight of 200 ms sent in one pipeline take 1.6 s, and
    // none is cut. Idle time is not the server's: the client waits 900 ms between requests.
    let sleep = c.prepare("SELECT pg_sleep(0.2)").await.unwrap();
    let pipeline = (0..8).map(|_| c.query(&sleep, &[]));
    for r in futures_util::future::join_all(pipeline).await {
        r.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(900)).await;
    c.batch_execute("SELECT 1").await.unwrap();

    // A request that runs past the limit gets 57014, and the server's query is cancelled.
    let started = Instant::now();
    let e = c.batch_execute("SELECT pg_sleep(30)").await.unwrap_err();
    let waited = started.elapsed();
    let (code, message, fatal) = db_error(&e);
    assert_eq!(code, "57014", "{message}");
    assert!(message.contains("query_timeout_ms"), "{message}");
    assert!(!fatal, "outside a transaction the client goes on");
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    no_sleeper_left(&db).await;
    // The client goes on, on a new server connection of the pool of one.
    let v: i32 = c.query_one("SELECT 5::int", &[]).await.unwrap().get(0);
    assert_eq!(v, 5);
    assert!(!conn.is_finished());

    // Inside a transaction the transaction is lost with the server: the client is closed, and
    // what it wrote is rolled back.
    let (t, t_conn) = connect_watched(&proxy, &db).await;
    t.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    cut_fatally(&t, t_conn, &db).await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn query_timeout_in_session_mode_closes_the_client() {
    let (db, proxy) = setup(
        "query_timeout_ms = 400",
        "pool_mode = \"session\"\npool_size = 1",
    );
    let (c, conn) = connect_watched(&proxy, &db).await;
    c.batch_execute("SET application_name = 'kept'; SELECT pg_sleep(0.2)")
        .await
        .unwrap();
    cut_fatally(&c, conn, &db).await;
    // The pool of one has its server back (a new one).
    let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let v: i32 = c.query_one("SELECT 6::int", &[]).await.unwrap().get(0);
    assert_eq!(v, 6);
}

#[tokio::test]
async fn transaction_timeout_ends_a_transaction_that_holds_its_server_too_long() {
    let (db, proxy) = setup(
        "transaction_timeout_ms = 700",
        "pool_mode = \"transaction\"\npool_size = 1",
    );
    let (c, conn) = connect_watched(&proxy, &db).await;
    c.batch_execute("CREATE TABLE t (x int)").await.unwrap();
    // Each transaction has its own time: 1.5 s of short ones are not cut.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        c.batch_execute("BEGIN; INSERT INTO t VALUES (1); COMMIT")
            .await
            .unwrap();
        c.batch_execute("SELECT pg_sleep(0.1)").await.unwrap();
    }
    assert!(!conn.is_finished());

    // A statement is a transaction too: one that runs past the limit is cancelled, and its
    // client closed.
    let (s, s_conn) = connect_watched(&proxy, &db).await;
    let started = Instant::now();
    let e = s.batch_execute("SELECT pg_sleep(30)").await.unwrap_err();
    let waited = started.elapsed();
    let (code, message, fatal) = db_error(&e);
    assert_eq!((code.as_str(), fatal), ("25P04", true), "{message}");
    assert_eq!(message, "terminating connection due to transaction timeout");
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), s_conn).await;
    no_sleeper_left(&db).await;

    // Short statements that together keep a transaction open past the limit: the one
    // running when it passes is cut.
    let (m, _m_conn) = connect_watched(&proxy, &db).await;
    m.batch_execute("BEGIN").await.unwrap();
    let mut cut = None;
    for i in 0..5 {
        if let Err(e) = m.batch_execute("SELECT pg_sleep(0.3)").await {
            cut = Some((i, db_error(&e).0));
            break;
        }
    }
    assert_eq!(
        cut,
        Some((2, "25P04".to_string())),
        "the third ends past 700 ms"
    );

    // A transaction left idle with its server is ended as well, and rolled back.
    let (t, t_conn) = connect_watched(&proxy, &db).await;
    t.batch_execute("BEGIN; INSERT INTO t VALUES (100)")
        .await
        .unwrap();
    let (code, _) = closed_with(t_conn).await;
    assert_eq!(code, "25P04");
    let n: i64 = c
        .query_one("SELECT count(*) FROM t WHERE x = 100", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    assert!(!conn.is_finished(), "other clients go on");
}
