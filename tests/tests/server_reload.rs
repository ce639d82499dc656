//! `SIGHUP` applies a pool's new servers, sizes and passwords while clients stay connected,
//! against a real primary and two streaming replicas. Where each statement ran is proven
//! server-side: `inet_server_port()` (NULL over a Unix socket) and backend pids.

use std::time::{Duration, Instant};
use switchyard_tests::console::{get, of, show};
use switchyard_tests::metrics::{http_get, sample};
use switchyard_tests::{plugin, roles, shared_cluster, sqlstate, unique_name, Proxy};

const RELOADED: &str = "routing policies and servers reloaded";

/// A `servers = [...]` entry.
fn server(host: &str, port: u16, role: &str, name: &str) -> String {
    format!("{{ host = \"{host}\", port = {port}, role = \"{role}\", name = \"{name}\" }}")
}

/// The primary over TCP, as the proxy starts.
fn primary_tcp() -> String {
    server(
        "127.0.0.1",
        shared_cluster().primary.port,
        "primary",
        "primary",
    )
}

/// The same primary reached through its Unix socket, under the same name: a moved server.
fn primary_unix() -> String {
    let c = shared_cluster();
    server(
        &c.dir.join("sock").display().to_string(),
        c.primary.port,
        "primary",
        "primary",
    )
}

fn replicas() -> Vec<String> {
    shared_cluster()
        .replicas
        .iter()
        .map(|r| server("127.0.0.1", r.port, "replica", &r.name))
        .collect()
}

/// A transaction-mode pool for `db` over `servers` with `read-write-split` +
/// `least-outstanding`, and `users` (TOML tables).
fn pool(db: &str, servers: &[String], size: u32, users: &str) -> String {
    format!(
        "[pools.{db}]\nservers = [{}]\npool_mode = \"transaction\"\npool_size = {size}\n\
         [[pools.{db}.policies]]\nplugin = \"{}\"\n\
         [[pools.{db}.policies]]\nplugin = \"{}\"\n{users}",
        servers.join(", "),
        plugin("read-write-split").display(),
        plugin("least-outstanding").display(),
    )
}

fn trust_user(db: &str) -> String {
    format!("[pools.{db}.users.{}]\n", roles::TRUST)
}

/// The admin console's user, as a last table after the pools.
const ADMIN: &str = "[admin.users.ops]\npassword = \"ops_pw\"\n";

/// A database of its own and a proxy in front of it (the primary over TCP, `size` server
/// connections, the admin console): the database, the users' tables (the console's included,
/// for reloads), the proxy and a console session.
async fn with_console(
    prefix: &str,
    general: &str,
    size: u32,
) -> (String, String, Proxy, tokio_postgres::Client) {
    let db = unique_name(prefix);
    shared_cluster().create_database(&db, roles::TRUST);
    let users = format!("{}{ADMIN}", trust_user(&db));
    let proxy = Proxy::start(general, &pool(&db, &[primary_tcp()], size, &users));
    let admin = proxy
        .connect("ops", Some("ops_pw"), "switchyard")
        .await
        .unwrap();
    (db, users, proxy, admin)
}

async fn port(c: &tokio_postgres::Client) -> Option<i32> {
    c.query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0)
}

async fn backend_pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// The backends of `db` on the server at `port`, other than the asking one, with their client
/// address (empty over a Unix socket).
fn backends(port: u16, db: &str) -> Vec<(i32, String)> {
    let out = shared_cluster()
        .psql(
            port,
            "postgres",
            &format!(
                "select pid, coalesce(host(client_addr), '') from pg_stat_activity \
                 where datname = '{db}' and backend_type = 'client backend' \
                 and pid <> pg_backend_pid()"
            ),
        )
        .unwrap();
    out.lines()
        .filter_map(|l| {
            let (pid, addr) = l.split_once('|')?;
            Some((pid.parse().ok()?, addr.to_string()))
        })
        .collect()
}

/// Waits (up to 10 s) until `done` holds for the backends of `db` at `port`.
fn wait_backends(port: u16, db: &str, what: &str, done: impl Fn(&[(i32, String)]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = backends(port, db);
        if done(&now) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: backends {now:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn a_reload_moves_the_primary_and_adds_replicas_under_connected_clients() {
    let cluster = shared_cluster();
    let (db, users, proxy, admin) = with_console("srvreload", "", 4).await;
    let primary = cluster.primary.port;
    let replica_ports: Vec<i32> = cluster.replicas.iter().map(|r| r.port as i32).collect();

    let reader = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let mut writer = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    writer
        .batch_execute("CREATE TABLE t (id int primary key, at text)")
        .await
        .unwrap();
    assert_eq!(port(&reader).await, Some(primary as i32));
    // A transaction in flight on the old primary connection, over TCP.
    writer
        .batch_execute("BEGIN; INSERT INTO t VALUES (1, 'before')")
        .await
        .unwrap();
    let in_flight = backend_pid(&writer).await;

    let mut servers = vec![primary_unix()];
    servers.extend(replicas());
    let log = proxy.reload(&pool(&db, &servers, 4, &users), RELOADED);
    assert!(log.contains("server \"primary\" retired"), "{log}");
    assert!(log.contains("in service"), "{log}");

    // The transaction in flight stays where it began, and commits there; meanwhile the
    // console lists the old primary as retired, with that one connection in use.
    assert_eq!(backend_pid(&writer).await, in_flight);
    let servers = show(&admin, "SHOW SERVERS").await;
    let listed: Vec<_> = of(&servers, &db)
        .iter()
        .map(|r| (get(r, "addr"), get(r, "retired"), get(r, "sv_active")))
        .collect();
    let old_addr = format!("127.0.0.1:{primary}");
    assert!(
        listed.contains(&(old_addr.as_str(), "t", "1")),
        "{listed:?}"
    );
    assert_eq!(listed.len(), 4, "{listed:?}");
    writer.batch_execute("COMMIT").await.unwrap();
    // Then its connection closes: no TCP backend of this database is left on the primary.
    wait_backends(primary, &db, "old TCP connections closed", |b| {
        b.iter()
            .all(|(pid, addr)| *pid != in_flight && addr.is_empty())
    });

    // The same client connections now read from the replicas and write over the socket.
    for _ in 0..6 {
        let p = port(&reader).await;
        assert!(
            p.is_some_and(|p| replica_ports.contains(&p)),
            "read ran on {p:?}"
        );
    }
    let tx = writer.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (2, 'after')", &[])
        .await
        .unwrap();
    let p: Option<i32> = tx
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        p, None,
        "the write ran over TCP, not through the moved primary's socket"
    );
    tx.commit().await.unwrap();

    // Back to the primary alone over TCP: the replicas' connections close, reads return.
    proxy.reload(&pool(&db, &[primary_tcp()], 4, &users), RELOADED);
    for r in &cluster.replicas {
        wait_backends(r.port, &db, "replica connections closed", |b| b.is_empty());
    }
    assert_eq!(port(&reader).await, Some(primary as i32));
    let rows = writer
        .query("SELECT id FROM t ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(
        rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>(),
        [1, 2]
    );
}

#[tokio::test]
async fn a_larger_pool_size_serves_a_client_queued_before_the_reload() {
    let cluster = shared_cluster();
    let metrics_port = switchyard_tests::free_port();
    let general =
        format!("checkout_timeout_ms = 20000\nmetrics_addr = \"127.0.0.1:{metrics_port}\"");
    let (db, users, proxy, admin) = with_console("sizereload", &general, 1).await;

    let holder = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let held = backend_pid(&holder).await;
    let waiter = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let queued = tokio::spawn(async move {
        let pid = backend_pid(&waiter).await;
        (pid, waiter)
    });
    // The only connection is held: the second client waits in the queue.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!queued.is_finished());

    proxy.reload(&pool(&db, &[primary_tcp()], 2, &users), RELOADED);
    // Well before its checkout_timeout_ms.
    let (pid, waiter) = tokio::time::timeout(Duration::from_secs(10), queued)
        .await
        .expect("the queued client was served after the reload")
        .unwrap();
    assert_ne!(pid, held);

    // The new size holds: both clients hold a transaction at once.
    waiter.batch_execute("BEGIN; SELECT 1").await.unwrap();
    assert_eq!(backend_pid(&holder).await, held);

    // The queued client's wait was on the retired server: it still counts in the pool's
    // total, which never goes back.
    let stats = show(&admin, "SHOW STATS").await;
    let waited: u64 = get(of(&stats, &db)[0], "total_wait_time").parse().unwrap();
    assert!(waited >= 400_000, "total_wait_time {waited} µs");
    let (_, body) = tokio::task::spawn_blocking(move || http_get(metrics_port, "GET", "/metrics"))
        .await
        .unwrap();
    let labels = format!("database=\"{db}\",user=\"{}\"", roles::TRUST);
    assert!(sample(&body, "switchyard_wait_seconds_total", &labels) >= 0.4);
    // The holder's transaction still runs on the retired server, which `/metrics` shows.
    let server = format!("{labels},server=\"primary\",role=\"primary\"");
    let retired = format!("{server},state=\"active\",retired=\"true\"");
    assert_eq!(
        sample(&body, "switchyard_server_connections", &retired),
        1.0
    );
    let current = format!("{server},state=\"active\"");
    assert_eq!(
        sample(&body, "switchyard_server_connections", &current),
        1.0
    );

    // PAUSE waits for every running transaction, the one on the retired pool included.
    let pause = format!("PAUSE {db}");
    let pausing = tokio::spawn(async move { (admin.simple_query(&pause).await, admin) });
    waiter.batch_execute("COMMIT").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !pausing.is_finished(),
        "PAUSE answered with a transaction running"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    let (paused, admin) = tokio::time::timeout(Duration::from_secs(5), pausing)
        .await
        .expect("PAUSE answered once the last transaction ended")
        .unwrap();
    paused.unwrap();
    admin.simple_query(&format!("RESUME {db}")).await.unwrap();
    holder.batch_execute("SELECT 1").await.unwrap();
    // The old pool's connection closed when released.
    wait_backends(
        cluster.primary.port,
        &db,
        "old pool's connection closed",
        |b| b.iter().all(|(p, _)| *p != held),
    );
}

#[tokio::test]
async fn a_new_password_counts_for_the_next_login_and_spares_sessions() {
    let cluster = shared_cluster();
    let db = unique_name("pwreload");
    cluster.create_database(&db, roles::TRUST);
    let user = |password: &str| {
        format!(
            "[pools.{db}.users.{}]\npassword = \"{password}\"\nserver_password = \"{}\"\n",
            roles::MD5,
            roles::MD5_PASSWORD
        )
    };
    let proxy = Proxy::start("", &pool(&db, &[primary_tcp()], 2, &user("first-pw")));
    let session = proxy
        .connect(roles::MD5, Some("first-pw"), &db)
        .await
        .unwrap();

    proxy.reload(
        &pool(&db, &[primary_tcp()], 2, &user("second-pw")),
        RELOADED,
    );
    let old = proxy.connect(roles::MD5, Some("first-pw"), &db).await;
    assert_eq!(old.err().as_ref().and_then(sqlstate), Some("28P01"));
    let new = proxy
        .connect(roles::MD5, Some("second-pw"), &db)
        .await
        .unwrap();
    new.batch_execute("SELECT 1").await.unwrap();
    // The session that logged in before the reload goes on.
    session.batch_execute("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn a_pool_and_a_user_added_serve_the_next_login() {
    let cluster = shared_cluster();
    let (db, other) = (unique_name("addpool"), unique_name("addpool"));
    cluster.create_database(&db, roles::TRUST);
    cluster.create_database(&other, roles::TRUST);
    let md5_user = format!(
        "[pools.{db}.users.{}]\npassword = \"{}\"\n",
        roles::MD5,
        roles::MD5_PASSWORD
    );
    let proxy = Proxy::start("", &pool(&db, &[primary_tcp()], 2, &trust_user(&db)));
    let session = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let unknown = proxy.connect(roles::TRUST, None, &other).await.err();
    assert_eq!(unknown.as_ref().and_then(sqlstate), Some("3D000"));
    let unknown = proxy
        .connect(roles::MD5, Some(roles::MD5_PASSWORD), &db)
        .await
        .err();
    assert_eq!(unknown.as_ref().and_then(sqlstate), Some("28000"));

    let both = format!(
        "{}{}",
        pool(
            &db,
            &[primary_tcp()],
            2,
            &format!("{}{md5_user}", trust_user(&db))
        ),
        pool(&other, &[primary_tcp()], 2, &trust_user(&other)),
    );
    let log = proxy.reload(&both, RELOADED);
    assert!(
        log.contains(&format!("pools.{other}.users.{}: added", roles::TRUST)),
        "{log}"
    );
    let c = proxy.connect(roles::TRUST, None, &other).await.unwrap();
    let name: String = c
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, other);
    let m = proxy
        .connect(roles::MD5, Some(roles::MD5_PASSWORD), &db)
        .await
        .unwrap();
    let who: String = m
        .query_one("SELECT current_user", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, roles::MD5);
    session.batch_execute("SELECT 1").await.unwrap();

    // Removed again: the user stays until a restart, and the log says so.
    let log = proxy.reload(&pool(&db, &[primary_tcp()], 2, &trust_user(&db)), RELOADED);
    let kept = format!(
        "pools.{db}.users.{}: gone from the config; kept",
        roles::MD5
    );
    assert!(log.contains(&kept), "{log}");
    assert!(
        log.contains(&format!("pools.{other}: gone from the config; kept")),
        "{log}"
    );
    m.batch_execute("SELECT 1").await.unwrap();
    proxy
        .connect(roles::MD5, Some(roles::MD5_PASSWORD), &db)
        .await
        .unwrap();
}

#[test]
fn pgbench_through_server_changes_has_no_failed_transaction() {
    let cluster = shared_cluster();
    let db = unique_name("srvbench");
    cluster.create_database(&db, roles::TRUST);
    cluster.pgbench_init(&db);
    let users = trust_user(&db);
    // Each reload moves the primary (TCP, then its socket), adds or removes the replicas and
    // changes pool_size: every server is retired each time, with 8 clients on 3 to 4
    // connections, so checkouts are queued when it happens.
    let layout = |i: usize| {
        let mut servers = vec![if i.is_multiple_of(2) {
            primary_tcp()
        } else {
            primary_unix()
        }];
        if !i.is_multiple_of(3) {
            servers.extend(replicas());
        }
        pool(&db, &servers, 3 + (i % 2) as u32, &users)
    };
    let proxy = Proxy::start("", &layout(0));
    let done = std::sync::atomic::AtomicBool::new(false);
    let reloads = std::thread::scope(|s| {
        let reloader = s.spawn(|| {
            // A reload every 300 ms while pgbench runs (6 s in all), at most 30.
            let mut n = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) && n < 30 {
                std::thread::sleep(Duration::from_millis(300));
                n += 1;
                proxy.reload(&layout(n), RELOADED);
            }
            n
        });
        for args in [
            &["-M", "simple"][..],
            &["-M", "extended"],
            &["-S", "-M", "extended"],
        ] {
            let mut all = args.to_vec();
            all.extend(["-c", "8", "-j", "2", "-T", "2"]);
            let (processed, failed) = proxy.pgbench(&db, &all);
            assert!(processed > 50, "{args:?}: {processed}");
            assert_eq!(failed, 0, "{args:?}");
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        reloader.join().unwrap()
    });
    assert!(
        reloads >= 4,
        "only {reloads} reloads happened during the runs"
    );
    let log = proxy.log();
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test]
async fn a_new_pool_mode_applies_to_the_sessions_that_start_after_the_reload() {
    let (db, users, proxy, admin) = with_console("modereload", "", 4).await;
    let app = |name: &'static str| {
        let conn = format!(
            "{} application_name={name}",
            proxy.conn_str(roles::TRUST, None, &db)
        );
        async move {
            let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client
        }
    };
    let before = app("before").await;
    before.batch_execute("SELECT 1").await.unwrap();

    let session_mode = pool(&db, &[primary_tcp()], 4, &users)
        .replace("pool_mode = \"transaction\"", "pool_mode = \"session\"");
    proxy.reload(&session_mode, RELOADED);
    let after = app("after").await;
    after.batch_execute("SELECT 1").await.unwrap();
    before.batch_execute("SELECT 1").await.unwrap();

    // Between statements the new session keeps its server (session mode); the older one
    // gives its server back (transaction mode) once its statement is answered.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let clients = show(&admin, "SHOW CLIENTS").await;
        let state = |name: &str| {
            let row = clients
                .iter()
                .find(|r| get(r, "application_name") == name)
                .unwrap_or_else(|| panic!("no client {name}: {clients:?}"));
            get(row, "state").to_string()
        };
        let states = (state("before"), state("after"));
        assert_eq!(states.1, "active", "{clients:?}");
        if states.0 == "idle" {
            break;
        }
        assert!(Instant::now() < deadline, "{clients:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pools = show(&admin, "SHOW POOLS").await;
    assert_eq!(get(of(&pools, &db)[0], "pool_mode"), "session");
}

#[tokio::test]
async fn new_timeouts_count_from_the_reload() {
    let cluster = shared_cluster();
    let db = unique_name("timeoutreload");
    cluster.create_database(&db, roles::TRUST);
    let pools = pool(&db, &[primary_tcp()], 1, &trust_user(&db));
    let proxy = Proxy::start("checkout_timeout_ms = 20000", &pools);
    let before = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let holder = proxy.connect(roles::TRUST, None, &db).await.unwrap();

    // [general] timeouts: the file's general part changes, the pools stay.
    let config = std::fs::read_to_string(&proxy.config_path).unwrap();
    let shorter = config.replace(
        "checkout_timeout_ms = 20000",
        "checkout_timeout_ms = 300\nquery_timeout_ms = 700",
    );
    std::fs::write(&proxy.config_path, shorter).unwrap();
    let log = proxy.reload(&pools, RELOADED);
    assert!(!log.contains("key=general.checkout_timeout_ms"), "{log}");

    // A checkout now gives up after 300 ms, not 20 s.
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiter = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let started = Instant::now();
    let e = waiter.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("53300"), "{e:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    holder.batch_execute("COMMIT").await.unwrap();

    // A session that starts now has the query limit; one that started with no limit at all
    // keeps none.
    let after = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let e = after.batch_execute("SELECT pg_sleep(3)").await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("57014"), "{e:?}");
    before.batch_execute("SELECT pg_sleep(1)").await.unwrap();
}

#[tokio::test]
async fn console_users_reload() {
    let (db, _, proxy, admin) = with_console("adminreload", "", 2).await;
    let users = format!(
        "{}[admin.users.ops]\npassword = \"ops_new_pw\"\n[admin.users.auditor]\npassword = \"audit_pw\"\n",
        trust_user(&db)
    );
    let log = proxy.reload(&pool(&db, &[primary_tcp()], 2, &users), RELOADED);
    assert!(!log.contains("key=admin"), "{log}");
    let old = proxy
        .connect("ops", Some("ops_pw"), "switchyard")
        .await
        .err();
    assert_eq!(old.as_ref().and_then(sqlstate), Some("28P01"));
    let auditor = proxy
        .connect("auditor", Some("audit_pw"), "switchyard")
        .await
        .unwrap();
    assert!(!show(&auditor, "SHOW POOLS").await.is_empty());
    proxy
        .connect("ops", Some("ops_new_pw"), "switchyard")
        .await
        .unwrap();
    // The console session that logged in before goes on.
    show(&admin, "SHOW VERSION").await;
}
