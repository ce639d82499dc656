//! The admin console's `PAUSE`, `RESUME`, `KILL` and `KILL_CLIENT` against a real primary and
//! two replicas: a pause waits for running transactions, holds new ones, and leaves no server
//! connection open; `RESUME` serves the waiting transactions; `KILL` ends a database's sessions
//! at once. (A pause across a primary restart is in `server_restart.rs`, which has a cluster
//! of its own.)

use std::time::{Duration, Instant};
use switchyard_tests::console::{get, of, show};
use switchyard_tests::{roles, shared_cluster, sqlstate, trust_pool, unique_name, Proxy};

/// A transaction-mode pool of `pool_size` for `db`, and the console user `ops`/`ops_pw`.
fn start(db: &str, general: &str, pool_size: u32) -> Proxy {
    start_many(&[db], general, pool_size)
}

/// [`start`] with a pool for each of `dbs`.
fn start_many(dbs: &[&str], general: &str, pool_size: u32) -> Proxy {
    let c = shared_cluster();
    let mut pools = String::new();
    for db in dbs {
        c.create_database(db, roles::TRUST);
        pools.push_str(&trust_pool(
            c,
            db,
            &format!("pool_mode = \"transaction\"\npool_size = {pool_size}"),
        ));
    }
    Proxy::start(
        general,
        &format!("{pools}\n[admin.users.ops]\npassword = \"ops_pw\"\n"),
    )
}

async fn console(proxy: &Proxy) -> tokio_postgres::Client {
    proxy
        .connect("ops", Some("ops_pw"), "switchyard")
        .await
        .unwrap_or_else(|e| panic!("console login: {e:?}\n{}", proxy.log()))
}

/// The SQLSTATE a console command was refused with; `None` if it succeeded.
async fn code(admin: &tokio_postgres::Client, command: &str) -> Option<String> {
    let e = admin.simple_query(command).await.err()?;
    sqlstate(&e).map(str::to_owned)
}

/// Client backends of `db` on the primary.
fn backends(db: &str) -> u32 {
    let c = shared_cluster();
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND backend_type = 'client backend'"
    );
    c.psql(c.primary.port, "postgres", &sql)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn pause_waits_for_running_transactions_and_resume_serves_the_waiting_ones() {
    let db = unique_name("pause");
    let proxy = start(&db, "", 2);
    let busy = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    busy.batch_execute("CREATE TABLE t (x int); BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();

    let admin = console(&proxy).await;
    let command = format!("PAUSE {db}");
    let pausing = tokio::spawn(async move {
        let r = admin.simple_query(&command).await;
        (admin, r)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !pausing.is_finished(),
        "PAUSE answers only once the open transaction has ended"
    );
    let watcher = console(&proxy).await;
    let pools = show(&watcher, "SHOW POOLS").await;
    assert_eq!(get(of(&pools, &db)[0], "paused"), "1", "{pools:?}");

    // A transaction that starts now waits, though a server is free ...
    let late = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let waiting = tokio::spawn(async move {
        late.query_one("SELECT count(*) FROM t", &[])
            .await
            .map(|r| r.get::<_, i64>(0))
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "new transactions wait during a pause"
    );
    let pools = show(&watcher, "SHOW POOLS").await;
    assert_eq!(get(of(&pools, &db)[0], "cl_waiting"), "1", "{pools:?}");

    // ... while the running one goes on to its end.
    busy.batch_execute("COMMIT").await.unwrap();
    let (admin, paused) = tokio::time::timeout(Duration::from_secs(5), pausing)
        .await
        .expect("PAUSE answers once no transaction runs")
        .unwrap();
    paused.unwrap_or_else(|e| panic!("PAUSE: {e:?}\n{}", proxy.log()));
    // The pool holds nothing open to the server: it could restart now.
    let deadline = Instant::now() + Duration::from_secs(5);
    while backends(&db) > 0 {
        assert!(Instant::now() < deadline, "server connections left open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!waiting.is_finished(), "still paused");

    admin
        .simple_query(&format!("RESUME {db}"))
        .await
        .unwrap_or_else(|e| panic!("RESUME: {e:?}"));
    let seen = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting transaction is served after RESUME")
        .unwrap()
        .unwrap();
    assert_eq!(seen, 1, "it ran after the committed insert");
    let pools = show(&watcher, "SHOW POOLS").await;
    assert_eq!(get(of(&pools, &db)[0], "paused"), "0", "{pools:?}");
    busy.batch_execute("INSERT INTO t VALUES (2)")
        .await
        .unwrap();
}

#[tokio::test]
async fn pause_and_resume_refuse_what_makes_no_sense() {
    let db = unique_name("pause_refusals");
    let proxy = start(&db, "", 2);
    let admin = console(&proxy).await;
    assert_eq!(
        code(&admin, &format!("RESUME {db}")).await.as_deref(),
        Some("55000"),
        "RESUME of a running pool"
    );
    assert_eq!(
        code(&admin, "PAUSE no_such_db").await.as_deref(),
        Some("3D000")
    );
    admin.simple_query(&format!("PAUSE {db}")).await.unwrap();
    assert_eq!(
        code(&admin, &format!("PAUSE {db}")).await.as_deref(),
        Some("55000"),
        "PAUSE of a paused pool"
    );
    // Without a name: every pool (here only this proxy's one).
    admin.simple_query("RESUME").await.unwrap();
    let client = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn a_transaction_that_waits_out_a_pause_gets_57p03_and_the_session_goes_on() {
    let db = unique_name("pause_timeout");
    let proxy = start(&db, "checkout_timeout_ms = 300", 2);
    let client = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    let admin = console(&proxy).await;
    admin.simple_query("PAUSE").await.unwrap();

    let started = Instant::now();
    let e = client.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("57P03"), "{e:?}");
    let message = e.as_db_error().unwrap().message().to_string();
    assert!(message.contains("paused"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(3));

    admin.simple_query("RESUME").await.unwrap();
    let rows = client.simple_query("SELECT 2").await.unwrap();
    assert_eq!(switchyard_tests::first_value::<i32>(&rows), Some(2));
}

/// Waits (bounded) until the client's connection is closed.
async fn closed_soon(client: &tokio_postgres::Client) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !client.is_closed() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.is_closed()
}

#[tokio::test]
async fn kill_ends_a_databases_sessions_at_once_and_new_ones_wait_for_resume() {
    let (db, other) = (unique_name("kill"), unique_name("kill_other"));
    let proxy = start_many(&[&db, &other], "", 1);
    let c = shared_cluster();
    let idle = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    idle.batch_execute("CREATE TABLE t (x int)").await.unwrap();
    let holder = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    holder
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    // Queued behind the holder (a pool of one) with its write in hand.
    let queued = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let queued =
        tokio::spawn(async move { queued.batch_execute("INSERT INTO t VALUES (2)").await });
    let bystander = proxy.connect(roles::TRUST, None, &other).await.unwrap();
    bystander.batch_execute("BEGIN; SELECT 1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!queued.is_finished(), "queued behind the holder");

    let admin = console(&proxy).await;
    tokio::time::timeout(
        Duration::from_secs(5),
        admin.simple_query(&format!("KILL {db}")),
    )
    .await
    .expect("KILL answers at once")
    .unwrap_or_else(|e| panic!("KILL: {e:?}\n{}", proxy.log()));
    let e = tokio::time::timeout(Duration::from_secs(5), queued)
        .await
        .expect("the queued client is told at once")
        .unwrap()
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("57P01"), "{e:?}");
    let message = e.as_db_error().unwrap().message().to_string();
    assert!(message.contains("administrator command"), "{message}");
    assert!(
        closed_soon(&holder).await,
        "the session in a transaction ended"
    );
    assert!(closed_soon(&idle).await, "the idle session ended");
    assert!(holder.simple_query("SELECT 1").await.is_err());

    // Nothing of theirs was committed, and no server connection of the database is left.
    let deadline = Instant::now() + Duration::from_secs(5);
    while backends(&db) > 0 {
        assert!(Instant::now() < deadline, "server connections left open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows = c
        .psql(c.primary.port, &db, "SELECT count(*) FROM t")
        .unwrap();
    assert_eq!(rows.trim(), "0", "the open transaction was rolled back");
    // Another database's clients did not notice.
    bystander.batch_execute("COMMIT").await.unwrap();

    // New clients log in; their transactions wait for RESUME.
    let late = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let waiting = tokio::spawn(async move { late.simple_query("SELECT 1").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the database stays paused after KILL"
    );
    admin.simple_query(&format!("RESUME {db}")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served after RESUME")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn kill_client_ends_one_session_and_refuses_unknown_pids_and_consoles() {
    let db = unique_name("kill_client");
    let proxy = start(&db, "", 2);
    let victim = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    victim.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let other = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    other.simple_query("SELECT 1").await.unwrap();
    let admin = console(&proxy).await;
    let clients = show(&admin, "SHOW CLIENTS").await;
    let of_db = of(&clients, &db);
    let active: Vec<_> = of_db
        .iter()
        .filter(|r| get(r, "state") == "active")
        .collect();
    assert_eq!(active.len(), 1, "{clients:?}");
    let pid = get(active[0], "pid").to_string();

    admin
        .simple_query(&format!("KILL_CLIENT {pid}"))
        .await
        .unwrap_or_else(|e| panic!("KILL_CLIENT: {e:?}"));
    assert!(closed_soon(&victim).await, "the victim's session ended");
    other.simple_query("SELECT 2").await.unwrap();

    assert_eq!(
        code(&admin, &format!("KILL_CLIENT {pid}")).await.as_deref(),
        Some("42704"),
        "that pid is gone"
    );
    let consoles: Vec<_> = clients
        .iter()
        .filter(|r| get(r, "state") == "console")
        .collect();
    let console_pid = get(consoles[0], "pid");
    assert_eq!(
        code(&admin, &format!("KILL_CLIENT {console_pid}"))
            .await
            .as_deref(),
        Some("0A000")
    );
}

/// Whether the primary still has a backend with this pid.
fn alive(pid: i32) -> bool {
    let c = shared_cluster();
    let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}");
    c.psql(c.primary.port, "postgres", &sql).unwrap().trim() != "0"
}

/// Waits (bounded) until the backend is gone.
async fn gone_soon(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    !alive(pid)
}

async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn reconnect_replaces_idle_connections_now_and_busy_ones_when_released() {
    let db = unique_name("reconnect");
    let proxy = start(&db, "", 2);
    let busy = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    busy.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let busy_pid = backend_pid(&busy).await;
    let other = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let idle_pid = backend_pid(&other).await;
    assert_ne!(busy_pid, idle_pid);

    let admin = console(&proxy).await;
    admin
        .simple_query(&format!("RECONNECT {db}"))
        .await
        .unwrap_or_else(|e| panic!("RECONNECT: {e:?}"));
    assert!(
        gone_soon(idle_pid).await,
        "the idle connection is closed at once"
    );
    // The transaction goes on, on its own server, to its end ...
    assert_eq!(backend_pid(&busy).await, busy_pid);
    busy.batch_execute("COMMIT").await.unwrap();
    // ... and that server is replaced once released.
    assert!(
        gone_soon(busy_pid).await,
        "the busy connection is closed when released"
    );
    for client in [&busy, &other] {
        let pid = backend_pid(client).await;
        assert!(
            pid != busy_pid && pid != idle_pid,
            "a new server connection"
        );
    }
}

#[tokio::test]
async fn a_cancel_request_stops_a_waiting_pause_and_the_pool_stays_paused() {
    let db = unique_name("pause_cancel");
    let proxy = start(&db, "checkout_timeout_ms = 10000", 2);
    let admin = console(&proxy).await;
    let client = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    client.batch_execute("BEGIN; SELECT 1").await.unwrap();

    // PAUSE waits for the open transaction; psql's Ctrl-C (a CancelRequest with the console
    // session's key) stops the wait.
    let cancel = admin.cancel_token();
    let pause = format!("PAUSE {db}");
    let pausing = tokio::spawn(async move { admin.simple_query(&pause).await.err() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !pausing.is_finished(),
        "PAUSE answered with a transaction open"
    );
    let asked = Instant::now();
    cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(2), pausing)
        .await
        .expect("the cancel stopped PAUSE")
        .unwrap()
        .expect("an error");
    assert!(asked.elapsed() < Duration::from_secs(1));
    assert_eq!(sqlstate(&e), Some("57014"), "{e:?}");

    // The pool stays paused: the running transaction ends, a new one waits for RESUME.
    client.batch_execute("COMMIT").await.unwrap();
    let admin = console(&proxy).await;
    let pools = show(&admin, "SHOW POOLS").await;
    assert_eq!(get(of(&pools, &db)[0], "paused"), "1");
    let waiting = tokio::spawn(async move { client.simple_query("SELECT 1").await.is_ok() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "a transaction ran while paused");
    admin.simple_query(&format!("RESUME {db}")).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap());
}
