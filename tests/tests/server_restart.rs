//! The primary restarts under a running proxy: the pool heals without a proxy restart, and
//! clients between transactions do not even notice; with the console's `PAUSE` around the
//! restart, no client sees an error at all. This binary has a cluster of its own (a primary
//! alone), since restarting the shared one would disturb other tests; its tests take turns.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use switchyard_tests::{roles, trust_pool, unique_name, Cluster, Proxy};

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start(0).unwrap_or_else(|e| panic!("{e}")))
}

extern "C" fn stop_at_exit() {
    cluster().stop();
}

/// One restart at a time: each test's clients must meet only its own.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn register_stop_at_exit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: registers a plain function with no captured state; it runs at process exit.
    ONCE.call_once(|| unsafe {
        libc::atexit(stop_at_exit);
    });
}

/// The primary's start time, which a restart changes.
fn started_at(c: &Cluster) -> String {
    c.psql(
        c.primary.port,
        "postgres",
        "SELECT pg_postmaster_start_time()",
    )
    .unwrap()
}

#[tokio::test]
async fn the_pool_heals_after_the_primary_restarts() {
    let c = cluster();
    register_stop_at_exit();
    let _turn = TURN.lock().await;
    let db = unique_name("restart");
    c.create_database(&db, roles::TRUST);
    let proxy = Proxy::start(
        "connect_timeout_ms = 2000\ncheckout_timeout_ms = 2000",
        &trust_pool(c, &db, "pool_mode = \"transaction\"\npool_size = 4"),
    );
    // A client between transactions, whose pooled server dies in the restart.
    let idle = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    idle.batch_execute("CREATE TABLE t (x int)").await.unwrap();
    let first_start = started_at(c);
    let before: i32 = idle
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);

    // Clients that keep working through the restart: they may get errors while the server is
    // down, but their sessions go on and succeed again once it is back.
    let stop = Arc::new(AtomicBool::new(false));
    let restarted_at = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..8i32 {
        let client = proxy.connect(roles::TRUST, None, &db).await.unwrap();
        let (stop, restarted_at) = (stop.clone(), restarted_at.clone());
        workers.push(tokio::spawn(async move {
            let (mut ok_after_restart, mut errors) = (0u32, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let r = client.execute("INSERT INTO t VALUES ($1)", &[&w]).await;
                match r {
                    Ok(_) => {
                        let at = restarted_at.load(Ordering::Relaxed);
                        if at > 0 && started.elapsed().as_millis() as u64 > at {
                            ok_after_restart += 1;
                        }
                    }
                    Err(e) => {
                        let closed = client.is_closed();
                        errors.push(e.code().map(|c| c.code().to_string()));
                        if closed {
                            errors.push(Some(format!("closed by {e:?}")));
                            break;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (ok_after_restart, errors)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Off the test's thread: the workers run while the primary is down.
    tokio::task::spawn_blocking(move || c.restart_node(&c.primary))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(started_at(c), first_start, "the primary restarted");
    restarted_at.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for (w, worker) in workers.into_iter().enumerate() {
        let (ok_after_restart, errors) = worker.await.unwrap();
        assert!(
            ok_after_restart > 10,
            "worker {w}: {ok_after_restart} statements after the restart; errors {errors:?}\n{}",
            proxy.log()
        );
        // What a client sees of the restart is at most an error for a statement that met it:
        // the server's own (57P01), or its connection lost under it (08006). While the server
        // is down, checkouts wait for it (no 08001).
        for code in &errors {
            assert!(
                matches!(code.as_deref(), Some("57P01" | "08006")),
                "worker {w}: {errors:?}\n{}",
                proxy.log()
            );
        }
    }
    // The idle client's next transaction runs on a new server connection, without an error:
    // the dead pooled one is noticed at checkout and replaced.
    let after: i32 = idle
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(before, after);
    let n: i64 = idle
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert!(n > 0);
}

#[tokio::test]
async fn with_pause_and_resume_around_a_restart_no_client_sees_an_error() {
    let c = cluster();
    register_stop_at_exit();
    let _turn = TURN.lock().await;
    let db = unique_name("paused_restart");
    c.create_database(&db, roles::TRUST);
    let pool = trust_pool(c, &db, "pool_mode = \"transaction\"\npool_size = 4");
    let proxy = Proxy::start(
        "connect_timeout_ms = 2000\ncheckout_timeout_ms = 60000",
        &format!("{pool}\n[admin.users.ops]\npassword = \"ops_pw\"\n"),
    );
    let setup = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    setup
        .batch_execute("CREATE TABLE t (w int, n int)")
        .await
        .unwrap();
    let first_start = started_at(c);

    // Clients that write in transactions of two statements, without a pause between them.
    let stop = Arc::new(AtomicBool::new(false));
    let resumed = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..8i32 {
        let client = proxy.connect(roles::TRUST, None, &db).await.unwrap();
        let (stop, resumed) = (stop.clone(), resumed.clone());
        workers.push(tokio::spawn(async move {
            let (mut done, mut after_resume) = (0u32, 0u32);
            let deadline = Instant::now() + Duration::from_secs(90);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let sql = format!(
                    "BEGIN; INSERT INTO t VALUES ({w}, {done}); \
                     UPDATE t SET n = n + 1 WHERE w = {w} AND n = {done}; COMMIT"
                );
                if let Err(e) = client.batch_execute(&sql).await {
                    return Err(format!("worker {w} after {done} transactions: {e:?}"));
                }
                done += 1;
                if resumed.load(Ordering::Relaxed) {
                    after_resume += 1;
                }
            }
            Ok((done, after_resume))
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let admin = proxy
        .connect("ops", Some("ops_pw"), "switchyard")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), admin.simple_query("PAUSE"))
        .await
        .expect("PAUSE answers once the running transactions end")
        .unwrap_or_else(|e| panic!("PAUSE: {e:?}\n{}", proxy.log()));
    // Off the test's thread: the workers wait meanwhile.
    tokio::task::spawn_blocking(move || c.restart_node(&c.primary))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(started_at(c), first_start, "the primary restarted");
    admin.simple_query("RESUME").await.unwrap();
    resumed.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);

    let mut total = 0;
    for worker in workers {
        let (done, after_resume) = worker
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
        assert!(after_resume > 5, "{after_resume} transactions after RESUME");
        total += done;
    }
    let rows: i64 = setup
        .query_one("SELECT count(*) FROM t WHERE n > 0", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        rows,
        i64::from(total),
        "every transaction committed whole, once"
    );
}

#[tokio::test]
async fn a_client_waiting_for_a_restarting_server_keeps_its_place_in_line() {
    let c = cluster();
    register_stop_at_exit();
    let _turn = TURN.lock().await;
    let db = unique_name("ride_out_order");
    c.create_database(&db, roles::TRUST);
    // One slot: the clients are served one after another, in the order they came.
    let proxy = Proxy::start(
        "connect_timeout_ms = 2000\ncheckout_timeout_ms = 20000",
        &trust_pool(c, &db, "pool_mode = \"transaction\"\npool_size = 1"),
    );
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(proxy.connect(roles::TRUST, None, &db).await.unwrap());
    }
    tokio::task::spawn_blocking(move || c.stop_node(&c.primary))
        .await
        .unwrap()
        .unwrap();
    // The first client meets the server down and waits for it, trying again; the others come
    // later and wait in line behind it.
    let mut running = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        running.push(tokio::spawn(async move {
            // One simple Query: one checkout (a prepared statement would take two).
            let rows = client
                .simple_query("SELECT clock_timestamp()::text")
                .await
                .map_err(|e| format!("{e:?}"))?;
            rows.iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                    _ => None,
                })
                .ok_or_else(|| format!("no row: {rows:?}"))
        }));
        tokio::time::sleep(Duration::from_millis(if i == 0 { 700 } else { 150 })).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::spawn_blocking(move || c.start_node(&c.primary))
        .await
        .unwrap()
        .unwrap();
    let mut served = Vec::new();
    for (i, r) in running.into_iter().enumerate() {
        let at = tokio::time::timeout(Duration::from_secs(30), r)
            .await
            .expect("served once the server is back")
            .unwrap()
            .unwrap_or_else(|e| panic!("client {i}: {e}\n{}", proxy.log()));
        served.push(at);
    }
    // Timestamps of one server and one time zone: text order is time order.
    let mut in_order = served.clone();
    in_order.sort();
    assert_eq!(
        served,
        in_order,
        "the clients ran in the order they came\n{}",
        proxy.log()
    );
}

#[tokio::test]
async fn a_pause_while_a_client_waits_for_a_stopped_server_answers_and_resume_serves_it() {
    let c = cluster();
    register_stop_at_exit();
    let _turn = TURN.lock().await;
    let db = unique_name("ride_out_pause");
    c.create_database(&db, roles::TRUST);
    let pool = trust_pool(c, &db, "pool_mode = \"transaction\"\npool_size = 1");
    let proxy = Proxy::start(
        "connect_timeout_ms = 2000\ncheckout_timeout_ms = 30000",
        &format!("{pool}\n[admin.users.ops]\npassword = \"ops_pw\"\n"),
    );
    let client = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let admin = proxy
        .connect("ops", Some("ops_pw"), "switchyard")
        .await
        .unwrap();
    tokio::task::spawn_blocking(move || c.stop_node(&c.primary))
        .await
        .unwrap()
        .unwrap();
    // The client waits for the server, trying again every 200 ms.
    let waiting = tokio::spawn(async move { client.simple_query("SELECT 1").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // PAUSE waits for the servers in use: the waiting client lets its slot go at its next
    // try, as a new checkout would meet the pause, so PAUSE answers long before the wait ends.
    tokio::time::timeout(Duration::from_secs(5), admin.simple_query("PAUSE"))
        .await
        .unwrap_or_else(|_| panic!("PAUSE answers\n{}", proxy.log()))
        .unwrap();
    tokio::task::spawn_blocking(move || c.start_node(&c.primary))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "nothing is served while paused");
    admin.simple_query("RESUME").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("served after RESUME")
        .unwrap()
        .unwrap_or_else(|e| panic!("{e:?}\n{}", proxy.log()));
}

/// Sends `signal` to the primary's postmaster (the first line of its `postmaster.pid`).
fn signal_postmaster(c: &Cluster, signal: i32) {
    let pidfile = c.primary.datadir.join("postmaster.pid");
    let text = std::fs::read_to_string(&pidfile).unwrap();
    let pid: i32 = text.lines().next().unwrap().trim().parse().unwrap();
    // SAFETY: kill(2) with a process id read from the server's own pid file.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill {pid}");
}

/// Lets a stopped postmaster go on, also when the test fails.
struct Continue(&'static Cluster);

impl Drop for Continue {
    fn drop(&mut self) {
        signal_postmaster(self.0, libc::SIGCONT);
    }
}

#[tokio::test]
async fn a_client_whose_connect_times_out_is_served_by_a_connection_that_comes_free() {
    let c = cluster();
    register_stop_at_exit();
    let _turn = TURN.lock().await;
    let db = unique_name("stalled_login");
    c.create_database(&db, roles::TRUST);
    let proxy = Proxy::start(
        "connect_timeout_ms = 500\ncheckout_timeout_ms = 5000",
        &trust_pool(c, &db, "pool_mode = \"transaction\"\npool_size = 2"),
    );
    let holder = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let waiter = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    // The pool's one open connection, held in a transaction.
    holder.batch_execute("BEGIN").await.unwrap();
    let held: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    // A stalled postmaster: the kernel completes the TCP handshake, nobody answers the
    // login, so every new connection times out; the running backends go on serving.
    signal_postmaster(c, libc::SIGSTOP);
    let _continue = Continue(c);
    let started = Instant::now();
    let waiting = tokio::spawn(async move {
        waiter
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .map(|r| r.get::<_, i32>(0))
    });
    // Past two connect timeouts: the waiter's connects have failed, it is still waiting.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        !waiting.is_finished(),
        "the client waits while the pool has another connection\n{}",
        proxy.log()
    );
    holder.batch_execute("COMMIT").await.unwrap();
    let pid = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .unwrap_or_else(|_| panic!("served once the connection came free\n{}", proxy.log()))
        .unwrap()
        .unwrap_or_else(|e| panic!("{e:?}\n{}", proxy.log()));
    assert_eq!(pid, held, "served by the connection that came free");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_slow_connect_takes_the_first_connection_given_back() {
    let c = cluster();
    register_stop_at_exit();
    let _turn = TURN.lock().await;
    let db = unique_name("slow_login");
    c.create_database(&db, roles::TRUST);
    let proxy = Proxy::start(
        "connect_timeout_ms = 4000\ncheckout_timeout_ms = 10000",
        &trust_pool(c, &db, "pool_mode = \"transaction\"\npool_size = 2"),
    );
    let holder = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let mut waiters = Vec::new();
    for _ in 0..2 {
        waiters.push(proxy.connect(roles::TRUST, None, &db).await.unwrap());
    }
    holder.batch_execute("BEGIN").await.unwrap();
    let held: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    signal_postmaster(c, libc::SIGSTOP);
    let _continue = Continue(c);
    // The first waiter takes the pool's second slot and connects (stalled); the second waits
    // in line for a slot.
    let mut running = Vec::new();
    for waiter in waiters {
        running.push(tokio::spawn(async move {
            let pid = waiter
                .query_one("SELECT pg_backend_pid()", &[])
                .await
                .map(|r| r.get::<_, i32>(0));
            (pid, Instant::now())
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let given_back = Instant::now();
    holder.batch_execute("COMMIT").await.unwrap();
    // Both are served by the one connection, one after the other, long before the stalled
    // connects would time out (4 s).
    for (i, r) in running.into_iter().enumerate() {
        let (pid, at) = tokio::time::timeout(Duration::from_secs(10), r)
            .await
            .expect("answered")
            .unwrap();
        let pid = pid.unwrap_or_else(|e| panic!("waiter {i}: {e:?}\n{}", proxy.log()));
        assert_eq!(pid, held, "waiter {i} used the connection given back");
        let after = at - given_back;
        assert!(
            after < Duration::from_millis(1500),
            "waiter {i} served {after:?} after the connection came free\n{}",
            proxy.log()
        );
    }
}
