//! The admin console: an operator connects to the `switchyard` database with psql or
//! tokio-postgres, reads the live pools, servers and policies, and reloads the policies,
//! against a real primary and two streaming replicas.

use std::time::{Duration, Instant};
use switchyard_tests::console::{get, of, show};
use switchyard_tests::metrics::{http_get, sample};
use switchyard_tests::wire;
use switchyard_tests::{
    free_port, plugin, pool_toml, roles, shared_cluster, sqlstate, unique_name, Proxy,
};
use tokio_postgres::SimpleQueryMessage;

const ADMIN_PASSWORD: &str = "console_pw";

/// A pool for `db` with `policies` (plugin names) and the console's `[admin]` table.
fn config(db: &str, policies: &[&str], pool_size: u32) -> String {
    let mut pool = format!("pool_mode = \"transaction\"\npool_size = {pool_size}\n");
    for name in policies {
        pool.push_str(&format!(
            "[[pools.{db}.policies]]\nplugin = \"{}\"\n",
            plugin(name).display()
        ));
    }
    let pools = pool_toml(
        shared_cluster(),
        db,
        &pool,
        &format!("[pools.{db}.users.{}]\n", roles::TRUST),
    );
    format!("{pools}\n[admin.users.ops]\npassword = \"{ADMIN_PASSWORD}\"\n")
}

/// Replaces the proxy's config (keeping its `[general]` lines).
fn rewrite(proxy: &Proxy, rest: &str) {
    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    let general = &text[..text.find("[pools.").unwrap()];
    std::fs::write(&proxy.config_path, format!("{general}{rest}")).unwrap();
}

async fn console(proxy: &Proxy) -> tokio_postgres::Client {
    proxy
        .connect("ops", Some(ADMIN_PASSWORD), "switchyard")
        .await
        .unwrap_or_else(|e| panic!("console login: {e:?}\n{}", proxy.log()))
}

/// psql through the proxy to the console; returns (success, stdout, stderr).
fn psql(proxy: &Proxy, sql: &str) -> (bool, String, String) {
    proxy.psql("ops", Some(ADMIN_PASSWORD), "switchyard", sql)
}

#[tokio::test]
async fn the_console_shows_live_pools_servers_and_policies() {
    let c = shared_cluster();
    let db = unique_name("console");
    c.create_database(&db, roles::TRUST);
    let proxy = Proxy::start(
        "shutdown_timeout_ms = 30000",
        &config(&db, &["read-write-split", "least-outstanding"], 4),
    );
    // Three clients; one holds a server in an open transaction.
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(proxy.connect(roles::TRUST, None, &db).await.unwrap());
    }
    clients[0]
        .batch_execute("BEGIN; CREATE TABLE held (x int)")
        .await
        .unwrap();
    for client in &clients[1..] {
        client.simple_query("SELECT 1").await.unwrap();
    }
    let admin = console(&proxy).await;

    let pools = show(&admin, "SHOW POOLS").await;
    let pool = of(&pools, &db);
    assert_eq!(pool.len(), 1, "{pools:?}");
    let pool = pool[0];
    assert_eq!(get(pool, "user"), roles::TRUST);
    assert_eq!(get(pool, "pool_mode"), "transaction");
    assert_eq!(get(pool, "cl_active"), "3", "{pool:?}");
    assert_eq!(get(pool, "cl_waiting"), "0");
    assert_eq!(
        get(pool, "sv_active"),
        "1",
        "the open transaction holds one: {pool:?}"
    );
    assert!(
        get(pool, "sv_idle").parse::<u32>().unwrap() >= 1,
        "{pool:?}"
    );
    assert_eq!(get(pool, "pool_size"), "4");

    let servers = show(&admin, "show servers;").await;
    let servers = of(&servers, &db);
    let roles_seen: Vec<&str> = servers.iter().map(|r| get(r, "role")).collect();
    assert_eq!(roles_seen, ["primary", "replica", "replica"], "{servers:?}");
    for s in &servers {
        assert_eq!(get(s, "healthy"), "t", "{s:?}");
    }
    let primary = servers[0];
    assert_eq!(
        get(primary, "addr"),
        format!("127.0.0.1:{}", c.primary.port)
    );
    assert_eq!(
        get(primary, "sv_active"),
        "1",
        "the transaction's writes run there"
    );
    // The reads ran on replicas.
    let replica_opened: u32 = servers[1..]
        .iter()
        .map(|r| get(r, "opened").parse::<u32>().unwrap())
        .sum();
    assert!(replica_opened >= 1, "{servers:?}");

    let policies = show(&admin, "SHOW POLICIES").await;
    let policy = of(&policies, &db)[0];
    assert_eq!(
        get(policy, "policies"),
        "read_write_split.wasm, least_outstanding.wasm"
    );
    assert_eq!(get(policy, "traps"), "0");
    assert_eq!(get(policy, "reloads"), "0");

    // Each client by itself: the one in a transaction holds a primary connection, whose
    // backend pid is the one PostgreSQL reports to it.
    let backend: i32 = clients[0]
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let all = show(&admin, "SHOW CLIENTS").await;
    let mine = of(&all, &db);
    assert_eq!(mine.len(), 3, "{all:?}");
    let active: Vec<_> = mine
        .iter()
        .filter(|r| get(r, "state") == "active")
        .collect();
    assert_eq!(active.len(), 1, "{mine:?}");
    assert_eq!(get(active[0], "server_pid"), backend.to_string());
    assert_eq!(
        get(active[0], "server_addr"),
        format!("127.0.0.1:{}", c.primary.port)
    );
    assert_eq!(get(active[0], "addr"), "127.0.0.1");
    let idle = mine.iter().filter(|r| get(r, "state") == "idle").count();
    assert_eq!(idle, 2, "{mine:?}");
    let consoles: Vec<_> = all
        .iter()
        .filter(|r| get(r, "state") == "console")
        .collect();
    assert_eq!(consoles.len(), 1, "{all:?}");
    assert_eq!(get(consoles[0], "user"), "ops");
    assert_eq!(get(consoles[0], "database"), "switchyard");
    // psql names itself: its own row shows it.
    let (ok, out, err) = psql(&proxy, "SHOW CLIENTS");
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.contains("|console|") && l.contains("|psql|")),
        "{out}"
    );

    let config = show(&admin, "SHOW CONFIG").await;
    let listen = config
        .iter()
        .find(|r| get(r, "key") == "general.listen_addr")
        .unwrap_or_else(|| panic!("{config:?}"));
    assert_eq!(get(listen, "value"), format!("127.0.0.1:{}", proxy.port));
    assert!(config
        .iter()
        .any(|r| get(r, "key") == "general.shutdown_timeout_ms" && get(r, "value") == "30000"));

    // Several commands in one query: one result each.
    let both = admin.simple_query("SHOW VERSION; SHOW HELP").await.unwrap();
    let completes = both
        .iter()
        .filter(|m| matches!(m, SimpleQueryMessage::CommandComplete(_)))
        .count();
    assert_eq!(completes, 2);
    match &both[0] {
        SimpleQueryMessage::RowDescription(_) => {}
        other => panic!("{other:?}"),
    }
    let version = show(&admin, "SHOW VERSION").await;
    assert!(get(&version[0], "version").starts_with("Switchyard "));

    // What it does not know is an error, and the session goes on.
    let e = admin.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("42601"), "{e:?}");
    let message = e.as_db_error().unwrap().message();
    assert!(message.contains("SHOW HELP"), "{message}");
    // The extended protocol is refused the same way.
    let e = admin.query("SHOW POOLS", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("0A000"), "{e:?}");
    assert_eq!(show(&admin, "SHOW VERSION").await.len(), 1);

    // psql, as an operator would use it.
    let (ok, out, err) = psql(&proxy, "SHOW SERVERS");
    assert!(ok, "{err}\n{}", proxy.log());
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with(&format!("{db}|")))
            .count(),
        3,
        "{out}"
    );

    // A console session does not hold up shutdown: the proxy exits with the clients gone,
    // well before shutdown_timeout_ms.
    clients[0].batch_execute("ROLLBACK").await.unwrap();
    drop(clients);
    let mut proxy = proxy;
    let started = Instant::now();
    proxy.signal(libc::SIGTERM);
    let status = proxy.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{}", proxy.log());
    assert!(started.elapsed() < Duration::from_secs(10));
    let e = admin.simple_query("SHOW VERSION").await.unwrap_err();
    assert!(admin.is_closed(), "{e:?}");
}

/// The port of the server that ran a read.
async fn read_port(client: &tokio_postgres::Client) -> u16 {
    client
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get::<_, i32>(0) as u16
}

#[tokio::test]
async fn reload_from_the_console_swaps_policies_or_says_why_not() {
    let c = shared_cluster();
    let db = unique_name("console_reload");
    c.create_database(&db, roles::TRUST);
    let proxy = Proxy::start("", &config(&db, &["read-write-split"], 4));
    let app = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    assert_ne!(
        read_port(&app).await,
        c.primary.port,
        "reads go to a replica"
    );
    let admin = console(&proxy).await;

    // Without policies: RELOAD publishes, and reads go to the primary.
    rewrite(&proxy, &config(&db, &[], 4));
    let done = admin.simple_query("RELOAD").await.unwrap();
    assert!(
        matches!(done.last(), Some(SimpleQueryMessage::CommandComplete(_))),
        "{done:?}"
    );
    assert_eq!(read_port(&app).await, c.primary.port);
    let policy = show(&admin, "SHOW POLICIES").await;
    let policy = of(&policy, &db)[0];
    assert_eq!(get(policy, "policies"), "");
    assert_eq!(get(policy, "reloads"), "1");

    // A plugin that is not there: refused with the reason, and nothing changes.
    let missing =
        config(&db, &["read-write-split"], 4).replace("read_write_split.wasm", "gone.wasm");
    rewrite(&proxy, &missing);
    let e = admin.simple_query("RELOAD").await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("F0000"), "{e:?}");
    let message = e.as_db_error().unwrap().message().to_string();
    assert!(message.contains("gone.wasm"), "{message}");
    assert_eq!(read_port(&app).await, c.primary.port);
    assert_eq!(
        get(of(&show(&admin, "SHOW POLICIES").await, &db)[0], "reloads"),
        "1"
    );

    // Back to read-write-split, with a pool_size and a pool_mode change, which apply (each
    // server's pool is replaced; sessions that start from now on are in session mode), and a
    // worker_threads change, which waits for a restart: psql shows the notices.
    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    let threads = text.replace("worker_threads = 2", "worker_threads = 1");
    std::fs::write(&proxy.config_path, threads).unwrap();
    let remoded = config(&db, &["read-write-split"], 5).replace("\"transaction\"", "\"session\"");
    rewrite(&proxy, &remoded);
    let (ok, _out, err) = psql(&proxy, "RELOAD");
    assert!(ok, "{err}\n{}", proxy.log());
    assert!(
        err.contains("general.worker_threads changed in the config file"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "pools.{db}.users.{}: server \"primary\" (Primary, 127.0.0.1:{}, pool_size 5) in service",
            roles::TRUST,
            c.primary.port
        )),
        "{err}"
    );
    assert_ne!(read_port(&app).await, c.primary.port);
    assert_eq!(
        get(of(&show(&admin, "SHOW POLICIES").await, &db)[0], "reloads"),
        "2"
    );
    let pools = show(&admin, "SHOW POOLS").await;
    let pool = of(&pools, &db)[0];
    assert_eq!(
        (get(pool, "pool_size"), get(pool, "pool_mode")),
        ("5", "session")
    );
    assert!(proxy.log().contains("RELOAD by admin user \"ops\""));
}

#[tokio::test]
async fn console_logins_are_checked_like_any_other() {
    let c = shared_cluster();
    let db = unique_name("console_auth");
    c.create_database(&db, roles::TRUST);
    let proxy = Proxy::start("", &config(&db, &[], 2));
    let e = proxy
        .connect("ops", Some("wrong"), "switchyard")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("28P01"), "{e:?}");
    let e = proxy
        .connect(roles::TRUST, None, "switchyard")
        .await
        .unwrap_err();
    assert_eq!(
        sqlstate(&e),
        Some("28000"),
        "pool users are not console users: {e:?}"
    );
    // The app's own database is unaffected.
    let app = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    app.simple_query("SELECT 1").await.unwrap();
    // Without [admin], there is no such database.
    let plain = Proxy::start(
        "",
        &pool_toml(
            c,
            &db,
            "",
            &format!("[pools.{db}.users.{}]\n", roles::TRUST),
        ),
    );
    let e = plain.connect("ops", None, "switchyard").await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("3D000"), "{e:?}");
}

/// `SHOW STATS` of `db`: the `columns`' numbers.
async fn stats_of<const N: usize>(
    admin: &tokio_postgres::Client,
    db: &str,
    columns: [&str; N],
) -> [u64; N] {
    let rows = show(admin, "SHOW STATS").await;
    let row = of(&rows, db)[0];
    columns.map(|c| get(row, c).parse::<u64>().unwrap())
}

/// `SHOW STATS` of `db`: (transactions, requests, wait µs).
async fn stats(admin: &tokio_postgres::Client, db: &str) -> (u64, u64, u64) {
    let columns = ["total_xact_count", "total_query_count", "total_wait_time"];
    let [x, q, w] = stats_of(admin, db, columns).await;
    (x, q, w)
}

#[tokio::test]
async fn stats_count_transactions_requests_and_waits() {
    let c = shared_cluster();
    let db = unique_name("console_stats");
    c.create_database(&db, roles::TRUST);
    let proxy = Proxy::start("", &config(&db, &[], 1));
    let a = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let b = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    a.simple_query("SELECT 1").await.unwrap();
    let admin = console(&proxy).await;
    let (x0, q0, w0) = stats(&admin, &db).await;

    // Ten statements outside a transaction: ten requests, ten transactions.
    for _ in 0..10 {
        a.simple_query("SELECT 1").await.unwrap();
    }
    let (x1, q1, _) = stats(&admin, &db).await;
    assert_eq!((x1 - x0, q1 - q0), (10, 10));

    // A transaction of two statements: BEGIN is answered by the proxy (it waits for the
    // statement that needs a server), SELECT and COMMIT by the server; one transaction.
    a.simple_query("BEGIN").await.unwrap();
    a.simple_query("SELECT 1").await.unwrap();
    // Meanwhile `b` waits for the pool's only connection, about 300 ms.
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        b.simple_query("SELECT 2").await.unwrap();
        started.elapsed()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.simple_query("COMMIT").await.unwrap();
    let waited = waiting.await.unwrap();
    let (x2, q2, w2) = stats(&admin, &db).await;
    assert_eq!(
        (x2 - x1, q2 - q1),
        (2, 3),
        "a's transaction and b's statement"
    );
    let wait_us = w2 - w0;
    assert!(
        wait_us >= 200_000 && wait_us <= waited.as_micros() as u64,
        "waited {wait_us} µs of {waited:?}"
    );
    // Multi-statement and pipelined requests count once each: one Query here.
    a.simple_query("SELECT 1; SELECT 2").await.unwrap();
    let (x3, q3, _) = stats(&admin, &db).await;
    assert_eq!((x3 - x2, q3 - q2), (1, 1));
}

/// `SHOW STATS` of `db`: (total_xact_time, total_query_time), in µs.
async fn times(admin: &tokio_postgres::Client, db: &str) -> (u64, u64) {
    let [x, q] = stats_of(admin, db, ["total_xact_time", "total_query_time"]).await;
    (x, q)
}

#[tokio::test]
async fn stats_time_the_servers_work_and_the_transactions_they_hold() {
    let c = shared_cluster();
    let db = unique_name("console_times");
    c.create_database(&db, roles::TRUST);
    let proxy = Proxy::start("", &config(&db, &[], 2));
    let a = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    a.simple_query("SELECT 1").await.unwrap();
    let admin = console(&proxy).await;
    let (x0, q0) = times(&admin, &db).await;

    // The server works 200 ms on one statement, which is a transaction of its own.
    a.simple_query("SELECT pg_sleep(0.2)").await.unwrap();
    let (x1, q1) = times(&admin, &db).await;
    for took in [x1 - x0, q1 - q0] {
        assert!((200_000..5_000_000).contains(&took), "{took} µs");
    }

    // A transaction held 300 ms by a client that waits between its statements: the
    // transaction's time counts the wait, its requests' time does not.
    a.simple_query("BEGIN").await.unwrap();
    a.simple_query("SELECT 1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.simple_query("COMMIT").await.unwrap();
    let (x2, q2) = times(&admin, &db).await;
    let (xact, requests) = (x2 - x1, q2 - q1);
    assert!((300_000..5_000_000).contains(&xact), "{xact} µs");
    assert!(
        requests + 250_000 <= xact,
        "the requests took {requests} µs of the transaction's {xact}"
    );
}

/// Bytes a raw client's messages and the answers it read take on the wire.
fn wire_size(messages: &[wire::Message]) -> u64 {
    messages.iter().map(|(_, body)| 5 + body.len() as u64).sum()
}

#[tokio::test]
async fn stats_count_the_bytes_clients_send_and_receive() {
    use std::io::Write;
    let c = shared_cluster();
    let db = unique_name("console_bytes");
    c.create_database(&db, roles::TRUST);
    let proxy = Proxy::start("", &config(&db, &[], 2));
    let admin = console(&proxy).await;
    let bytes = |admin| stats_of(admin, &db, ["total_received", "total_sent"]);

    let mut s = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    s.write_all(&wire::startup_packet(roles::TRUST, &db))
        .unwrap();
    let (login, closed) = wire::read_readies(&mut s, 1);
    assert!(!closed, "{login:?}");
    // The login's bytes do not count: PgBouncer counts traffic after it too.
    let [received0, sent0] = bytes(&admin).await;
    assert_eq!([received0, sent0], [0, 0]);

    // A request and its answer: exactly the bytes on the wire, both ways.
    let select = wire::query("SELECT 1");
    s.write_all(&select).unwrap();
    let (answer, _) = wire::read_readies(&mut s, 1);
    let [received1, sent1] = bytes(&admin).await;
    assert_eq!(received1, select.len() as u64);
    assert_eq!(sent1, wire_size(&answer));

    // A BEGIN the proxy answers itself, then a 100 kB answer over several reads, then the
    // COMMIT: the proxy's own answer counts with the servers'.
    let mut sent_by_client = 0;
    let mut read_by_client = 0;
    for sql in ["BEGIN", "SELECT repeat('x', 100000)", "COMMIT"] {
        let q = wire::query(sql);
        s.write_all(&q).unwrap();
        sent_by_client += q.len() as u64;
        let (answer, closed) = wire::read_readies(&mut s, 1);
        assert!(!closed, "{sql}: {answer:?}");
        read_by_client += wire_size(&answer);
    }
    assert!(read_by_client > 100_000);
    let [received2, sent2] = bytes(&admin).await;
    assert_eq!(received2 - received1, sent_by_client);
    assert_eq!(sent2 - sent1, read_by_client);

    // Terminate counts when the session ends.
    let terminate = wire::message(b'X', b"");
    s.write_all(&terminate).unwrap();
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let [received3, _] = bytes(&admin).await;
        if received3 - received2 == terminate.len() as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "received {received3}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn prometheus_scrapes_the_same_counters_at_metrics() {
    let c = shared_cluster();
    let db = unique_name("metrics");
    c.create_database(&db, roles::TRUST);
    let metrics_port = free_port();
    let proxy = Proxy::start(
        &format!("metrics_addr = \"127.0.0.1:{metrics_port}\""),
        &config(&db, &["read-write-split"], 4),
    );
    let app = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    for _ in 0..7 {
        app.simple_query("SELECT 1").await.unwrap();
    }
    let (head, body) =
        tokio::task::spawn_blocking(move || http_get(metrics_port, "GET", "/metrics"))
            .await
            .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let pool = format!("database=\"{db}\",user=\"{}\"", roles::TRUST);
    assert_eq!(sample(&body, "switchyard_clients", &pool), 1.0);
    assert_eq!(sample(&body, "switchyard_shutting_down", ""), 0.0);
    assert_eq!(sample(&body, "switchyard_transactions_total", &pool), 7.0);
    assert_eq!(sample(&body, "switchyard_requests_total", &pool), 7.0);
    // Seven Query messages of "SELECT 1" (14 bytes each) came in.
    assert_eq!(
        sample(&body, "switchyard_client_received_bytes_total", &pool),
        98.0
    );
    // Each answer: RowDescription, DataRow, CommandComplete, ReadyForQuery.
    let sent = sample(&body, "switchyard_client_sent_bytes_total", &pool);
    assert!(sent >= 7.0 * 50.0, "{sent}");
    assert_eq!(sample(&body, "switchyard_policy_traps_total", &pool), 0.0);
    for timed in [
        "switchyard_request_seconds_total",
        "switchyard_transaction_seconds_total",
    ] {
        let seconds = sample(&body, timed, &pool);
        assert!(seconds > 0.0 && seconds < 10.0, "{timed} {seconds}");
    }
    let primary = format!("{pool},server=\"primary\",role=\"primary\"");
    assert_eq!(sample(&body, "switchyard_server_healthy", &primary), 1.0);
    // The reads went to the replicas: together they opened a connection, the primary none.
    let opened = |server: &str| {
        let labels = format!("{pool},server=\"{server}\",role=\"replica\"");
        sample(&body, "switchyard_server_connections_opened_total", &labels)
    };
    assert!(opened("replica1") + opened("replica2") >= 1.0, "{body}");
    assert!(body.contains("# TYPE switchyard_transactions_total counter"));
    assert!(body.contains(&format!(
        "switchyard_server_connections{{{primary},state=\"idle\"}} "
    )));
    // Every sample line is `name{labels} number` or `name number`.
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }

    let (head, _) = tokio::task::spawn_blocking(move || http_get(metrics_port, "GET", "/other"))
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (head, _) = tokio::task::spawn_blocking(move || http_get(metrics_port, "POST", "/metrics"))
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    // Clients are served as before.
    app.simple_query("SELECT 1").await.unwrap();
}

/// Reads messages until a ReadyForQuery or the end of the connection: (tag, body) pairs,
/// and whether the connection ended.
fn raw_read(s: &mut std::net::TcpStream) -> (Vec<(u8, Vec<u8>)>, bool) {
    wire::read_readies(s, 1)
}

/// A raw console session as the trust user `watch`, logged in.
fn raw_console(port: u16) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&wire::startup_packet("watch", "switchyard"))
        .unwrap();
    let (greeting, closed) = raw_read(&mut s);
    assert!(
        !closed && greeting.first().map(|m| m.0) == Some(b'R'),
        "{greeting:?}"
    );
    s
}

/// The SQLSTATE of an ErrorResponse body.
fn code_of(body: &[u8]) -> String {
    wire::error_code(body).unwrap_or_else(|| panic!("no code in {body:?}"))
}

#[tokio::test]
async fn bad_input_to_the_console_is_refused_cleanly() {
    use std::io::Write;
    let c = shared_cluster();
    let db = unique_name("console_bad");
    c.create_database(&db, roles::TRUST);
    let rest = format!(
        "{}[admin.users.watch]\nauth = \"trust\"\n",
        config(&db, &[], 2)
    );
    let proxy = Proxy::start("", &rest);
    let port = proxy.port;
    tokio::task::spawn_blocking(move || {
        // The extended protocol: an error, messages skipped to Sync, then the session goes on.
        let mut s = raw_console(port);
        let mut m = wire::message(b'P', b"\0SHOW POOLS\0\0\0");
        m.extend(wire::message(b'B', b"\0\0\0\0\0\0\0\0"));
        m.extend(wire::message(b'S', b""));
        s.write_all(&m).unwrap();
        let (answer, closed) = raw_read(&mut s);
        let tags: Vec<u8> = answer.iter().map(|m| m.0).collect();
        assert!(!closed && tags == b"EZ", "{answer:?}");
        assert_eq!(code_of(&answer[0].1), "0A000");
        s.write_all(&wire::message(b'Q', b"SHOW VERSION\0"))
            .unwrap();
        let (answer, _) = raw_read(&mut s);
        let tags: Vec<u8> = answer.iter().map(|m| m.0).collect();
        assert_eq!(tags, b"TDCZ", "{answer:?}");

        // An unknown message type, a length past the console's limit, a Query that is not
        // text: FATAL 08P01 and the connection closes.
        for bad in [
            wire::message(b'W', b"junk"),
            [b'Q', 0x7f, 0xff, 0xff, 0xff].to_vec(),
            wire::message(b'Q', b"SHOW \xff\xfe\0"),
        ] {
            let mut s = raw_console(port);
            s.write_all(&bad).unwrap();
            let (answer, closed) = raw_read(&mut s);
            assert!(closed, "{answer:?}");
            assert_eq!(answer.len(), 1, "{answer:?}");
            assert_eq!(answer[0].0, b'E');
            assert_eq!(code_of(&answer[0].1), "08P01", "{answer:?}");
            assert!(String::from_utf8_lossy(&answer[0].1).contains("FATAL"));
        }
    })
    .await
    .unwrap();
    // Everyone else is served.
    let admin = console(&proxy).await;
    assert_eq!(show(&admin, "SHOW VERSION").await.len(), 1);
    let app = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    app.simple_query("SELECT 1").await.unwrap();
}

#[test]
fn a_metrics_port_in_use_stops_startup_before_clients_can_connect() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_port = taken.local_addr().unwrap().port();
    let client_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    let db = unique_name("metrics_taken");
    std::fs::write(
        &path,
        format!(
            "[general]\nlisten_addr = \"127.0.0.1:{client_port}\"\n\
             metrics_addr = \"127.0.0.1:{metrics_port}\"\n{}",
            config(&db, &[], 2)
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(switchyard_tests::switchyard_binary())
        .arg("--config")
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", client_port)).is_err(),
            "clients could connect"
        );
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("switchyard did not stop");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains(&format!(
            "cannot listen for metrics on 127.0.0.1:{metrics_port} (general.metrics_addr)"
        )),
        "{stderr}"
    );
    drop(taken);
}

#[tokio::test]
async fn shutdown_on_the_console_stops_as_sigterm_does() {
    let c = shared_cluster();
    let db = unique_name("consolestop");
    c.create_database(&db, roles::TRUST);
    let mut proxy = Proxy::start("shutdown_timeout_ms = 10000", &config(&db, &[], 2));
    let app = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    app.batch_execute("CREATE TABLE t (x int); BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let admin = console(&proxy).await;
    let answered = admin.simple_query("SHUTDOWN").await.unwrap();
    assert!(
        answered
            .iter()
            .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(_))),
        "{answered:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // As on SIGTERM: new clients are refused, the transaction in flight may finish.
    assert!(proxy.connect(roles::TRUST, None, &db).await.is_err());
    app.batch_execute("INSERT INTO t VALUES (2); COMMIT")
        .await
        .unwrap();
    let status = proxy
        .wait_exit(Duration::from_secs(5))
        .expect("exits after the last transaction");
    assert!(status.success(), "{status}\n{}", proxy.log());
    let n = c
        .psql(c.primary.port, &db, "select count(*) from t")
        .unwrap();
    assert_eq!(n.trim(), "2", "the committed transaction is complete");
    assert!(proxy.log().contains("SHUTDOWN on the admin console"));
}

#[tokio::test]
async fn each_period_a_pool_with_traffic_logs_its_stats() {
    let c = shared_cluster();
    let db = unique_name("statslog");
    c.create_database(&db, roles::TRUST);
    let proxy = Proxy::start("stats_period_ms = 200", &config(&db, &[], 2));
    let a = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    for _ in 0..30 {
        a.simple_query("SELECT pg_sleep(0.01)").await.unwrap();
    }
    let ours = format!("stats database={db} ");
    let lines = |log: &str| -> Vec<String> {
        log.lines()
            .filter_map(|l| l.split_once(&ours).map(|(_, fields)| fields.to_string()))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while lines(&proxy.log()).is_empty() {
        assert!(Instant::now() < deadline, "no stats line:\n{}", proxy.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let field = |fields: &str, name: &str| -> f64 {
        let v = fields
            .split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {fields}"));
        v.parse().unwrap()
    };
    let first = &lines(&proxy.log())[0];
    assert!(field(first, "xacts_per_s") > 0.0, "{first}");
    assert!(field(first, "received_bytes_per_s") > 0.0, "{first}");
    // Each statement kept the server 10 ms at least.
    assert!(field(first, "request_us") >= 10_000.0, "{first}");
    assert!(field(first, "xact_us") >= 10_000.0, "{first}");
    // The console shows the last period's means while traffic runs.
    let busy = tokio::spawn(async move {
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(1500) {
            a.simple_query("SELECT pg_sleep(0.01)").await.unwrap();
        }
    });
    let admin = console(&proxy).await;
    let columns = [
        "avg_xact_count",
        "avg_query_count",
        "avg_xact_time",
        "avg_recv",
        "avg_sent",
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    let [xacts, requests, xact_us, recv, sent] = loop {
        let avg = stats_of(&admin, &db, columns).await;
        if avg[0] > 0 {
            break avg;
        }
        assert!(Instant::now() < deadline, "no averages in SHOW STATS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // At most 100 statements of 10 ms a second, each a transaction.
    assert!(xacts <= 100 && requests == xacts, "{xacts} {requests}");
    assert!(xact_us >= 10_000, "{xact_us}");
    // Each transaction is one 27-byte Query, counted with it; both rates are rounded.
    assert!(
        recv.abs_diff(27 * xacts) <= 14,
        "{recv} B/s for {xacts} xacts/s"
    );
    assert!(sent > recv, "{sent} B/s");
    busy.await.unwrap();
    // Without traffic a pool logs nothing (the period the last statement ended in aside),
    // and its averages go back to zero.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let quiet = lines(&proxy.log()).len();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(lines(&proxy.log()).len(), quiet);
    let [xacts] = stats_of(&admin, &db, ["avg_xact_count"]).await;
    assert_eq!(xacts, 0);
}

/// A storm of clients that come and go every way a client can (PgCat's "query storm" and
/// "clients that disconnect abruptly"): when it is over, the console shows no client but
/// itself, no checkout waiting and no server in use, the servers rest idle, and the pool
/// serves the next clients.
#[tokio::test]
async fn a_storm_of_clients_leaves_no_lingering_client_or_server() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let c = shared_cluster();
    let db = unique_name("storm");
    c.create_database(&db, roles::TRUST);
    let proxy = Proxy::start("", &config(&db, &[], 4));
    let port = proxy.port;
    let mut storm = Vec::new();
    for i in 0..120 {
        let db = db.clone();
        storm.push(tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let startup = wire::startup_packet(roles::TRUST, &db);
            let login = |s: &mut TcpStream| {
                s.write_all(&startup).unwrap();
                let (_, closed) = wire::read_readies(s, 1);
                assert!(!closed, "client {i}: login");
            };
            match i % 6 {
                // Polite: a query, its own answer (not one left over from a leaver's query
                // on the same server), a Terminate.
                0 => {
                    login(&mut s);
                    s.write_all(&wire::query(&format!("SELECT 'storm {i}'")))
                        .unwrap();
                    let (msgs, closed) = wire::read_readies(&mut s, 1);
                    let row = msgs.iter().find(|m| m.0 == b'D');
                    assert!(
                        !closed
                            && row.is_some_and(|r| r.1.ends_with(format!("storm {i}").as_bytes())),
                        "client {i}: {msgs:?}"
                    );
                    s.write_all(&wire::message(b'X', b"")).unwrap();
                }
                // Gone while its query runs (or waits for a server).
                1 => {
                    login(&mut s);
                    s.write_all(&wire::query("SELECT pg_sleep(0.3)")).unwrap();
                    std::thread::sleep(Duration::from_millis(50));
                }
                // Gone inside a transaction.
                2 => {
                    login(&mut s);
                    s.write_all(&wire::query("BEGIN; SELECT 1")).unwrap();
                    let (_, closed) = wire::read_readies(&mut s, 1);
                    assert!(!closed, "client {i}");
                }
                // Gone right after its startup packet.
                3 => s.write_all(&startup).unwrap(),
                // Gone halfway through its startup packet.
                4 => s.write_all(&startup[..startup.len() / 2]).unwrap(),
                // Gone right after sending a query, without reading anything.
                _ => {
                    login(&mut s);
                    s.write_all(&wire::query("SELECT 1")).unwrap();
                    let _ = s.read(&mut [0u8; 1]);
                }
            }
        }));
    }
    for client in storm {
        client.await.unwrap();
    }
    let admin = console(&proxy).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pools = show(&admin, "SHOW POOLS").await;
        let pool = of(&pools, &db)[0].clone();
        let clients = show(&admin, "SHOW CLIENTS").await;
        let busy: Vec<_> = switchyard_tests::activity(&db)
            .into_iter()
            .filter(|(state, _)| state != "idle")
            .collect();
        let settled = ["cl_active", "cl_waiting", "sv_active"]
            .iter()
            .all(|k| get(&pool, k) == "0")
            && clients.len() == 1
            && busy.is_empty();
        if settled {
            assert_eq!(get(&clients[0], "state"), "console");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the storm: {pool:?}\nclients: {clients:?}\nbusy servers: {busy:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(switchyard_tests::activity(&db).len() <= 4);
    proxy.each_gets_its_own_answers(&db, 8, 10).await;
}
