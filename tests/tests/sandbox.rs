//! A routing policy cannot hurt the proxy: a plugin that loops, panics or runs out of memory
//! costs the query at most about twice the deadline and sends it to the primary; a plugin with
//! a forbidden import or a refused config is not loaded, with a message that says why.

use std::process::Command;
use std::time::{Duration, Instant};
use switchyard_tests::{
    first_value, plugin, pool_toml, roles, shared_cluster, sqlstate, switchyard_binary,
    unique_name, Proxy,
};

fn pool_with(db: &str, policy: &str, config: &str) -> String {
    let cluster = shared_cluster();
    pool_toml(
        cluster,
        db,
        &format!(
            "pool_mode = \"transaction\"\n[[pools.{db}.policies]]\nplugin = \"{}\"\nconfig = \"{config}\"",
            plugin(policy).display()
        ),
        &format!("[pools.{db}.users.{}]\n", roles::TRUST),
    )
}

async fn server_port(c: &tokio_postgres::Client, sql: &str) -> u16 {
    let msgs = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    first_value(&msgs).expect("a row")
}

#[tokio::test]
async fn looping_panicking_and_hoarding_plugins_fall_back_to_the_primary() {
    let cluster = shared_cluster();
    for mode in ["loop", "panic", "oom"] {
        let db = unique_name("sandbox");
        cluster.create_database(&db, roles::TRUST);
        let proxy = Proxy::start(
            "plugin_deadline_ms = 20\nplugin_memory_mb = 16",
            &pool_with(&db, "evil-policy", mode),
        );
        let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
        let bystander = proxy.connect(roles::TRUST, None, &db).await.unwrap();
        for _ in 0..3 {
            // A well-behaved call first: it also rebuilds the instance the last trap dropped,
            // so the timed call below costs the bad call alone.
            assert_eq!(
                server_port(&c, "SELECT inet_server_port()").await,
                cluster.primary.port
            );
            let started = Instant::now();
            let port = server_port(&c, "SELECT inet_server_port() /* trouble */").await;
            let took = started.elapsed();
            assert_eq!(
                port, cluster.primary.port,
                "{mode}: the fallback is the primary"
            );
            // At most the 20 ms deadline of wall-clock time, 20 ms more of CPU time, two 5 ms
            // epoch ticks, and the query itself.
            assert!(
                took < Duration::from_millis(150),
                "{mode}: a bad call took {took:?}"
            );
            // Others keep being served.
            assert_eq!(
                server_port(&bystander, "SELECT inet_server_port()").await,
                cluster.primary.port
            );
        }
        let log = proxy.log();
        assert!(
            log.contains("routing policy failed"),
            "{mode}: the trap is logged:\n{log}"
        );
        assert!(log.contains("traps=3"), "{mode}: and counted:\n{log}");
    }
}

/// Wake-ups of the proxy's epoch ticker thread so far.
fn ticker_wakeups(proxy: &Proxy) -> u64 {
    proxy
        .wakeups()
        .into_iter()
        // `switchyard-epoch`, cut to the kernel's 15 characters.
        .find_map(|(name, n)| (name == "switchyard-epoc").then_some(n))
        .expect("an epoch ticker thread")
}

#[tokio::test]
async fn the_epoch_ticker_rests_while_no_plugin_runs_and_a_bad_call_after_that_still_stops() {
    let cluster = shared_cluster();
    let db = unique_name("ticker");
    cluster.create_database(&db, roles::TRUST);
    let proxy = Proxy::start(
        "plugin_deadline_ms = 20",
        &pool_with(&db, "evil-policy", "loop"),
    );
    let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let primary = cluster.primary.port;
    assert_eq!(server_port(&c, "SELECT inet_server_port()").await, primary);
    // A second without calls: the ticker parks (it ticks every 5 ms while calls run).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = ticker_wakeups(&proxy);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = ticker_wakeups(&proxy) - before;
    assert!(idle <= 3, "{idle} ticker wake-ups in 500 ms without calls");
    // The first call after the rest wakes it: a call that loops is stopped as usual.
    let started = Instant::now();
    let port = server_port(&c, "SELECT inet_server_port() /* trouble */").await;
    let took = started.elapsed();
    assert_eq!(port, primary, "the fallback is the primary");
    assert!(
        took < Duration::from_millis(150),
        "the bad call took {took:?}"
    );
    let before = ticker_wakeups(&proxy);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let awake = ticker_wakeups(&proxy) - before;
    assert!(
        awake >= 20,
        "{awake} ticker wake-ups in 300 ms after a call"
    );
}

#[tokio::test]
async fn reads_may_fall_back_to_replicas_when_configured() {
    let cluster = shared_cluster();
    let db = unique_name("sandbox");
    cluster.create_database(&db, roles::TRUST);
    cluster.wait_replicas_caught_up();
    let toml = pool_with(&db, "evil-policy", "panic").replace(
        "pool_mode = ",
        "fallback_reads = \"replicas\"\npool_mode = ",
    );
    let proxy = Proxy::start("", &toml);
    let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let replicas: Vec<u16> = cluster.replicas.iter().map(|r| r.port).collect();
    for _ in 0..2 {
        let read = server_port(&c, "SELECT inet_server_port() /* trouble */").await;
        assert!(replicas.contains(&read), "a read fell back to {read}");
        // A write function (an advisory lock, in the host's default list) makes it a write.
        let write = server_port(
            &c,
            "SELECT inet_server_port(), pg_advisory_xact_lock(1) /* trouble */",
        )
        .await;
        assert_eq!(write, cluster.primary.port);
    }
    assert!(proxy.log().contains("traps=4"), "{}", proxy.log());
}

#[tokio::test]
async fn rejections_and_unknown_backends_are_errors_and_the_session_goes_on() {
    let cluster = shared_cluster();
    for (mode, code, text) in [
        ("reject", "P0001", "evil-policy refuses this query"),
        ("bad-backend", "XX000", "routing policy chose server 99"),
    ] {
        let db = unique_name("sandbox");
        cluster.create_database(&db, roles::TRUST);
        let proxy = Proxy::start("", &pool_with(&db, "evil-policy", mode));
        let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
        let err = c
            .simple_query("SELECT 1 /* trouble */")
            .await
            .expect_err("refused");
        let db_err = err.as_db_error().expect("an ErrorResponse");
        assert_eq!(db_err.code().code(), code, "{mode}: {db_err:?}");
        assert!(
            db_err.message().contains(text),
            "{mode}: {}",
            db_err.message()
        );
        assert_eq!(
            server_port(&c, "SELECT inet_server_port()").await,
            cluster.primary.port
        );
    }
}

#[tokio::test]
async fn policies_see_the_session() {
    let cluster = shared_cluster();
    let db = unique_name("sandbox");
    cluster.create_database(&db, roles::TRUST);
    let proxy = Proxy::start("", &pool_with(&db, "evil-policy", "echo-session"));
    let conn = format!(
        "{} application_name=probe options='-c search_path=public'",
        proxy.conn_str(roles::TRUST, None, &db)
    );
    let (c, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let err = c
        .simple_query("SELECT 1")
        .await
        .expect_err("echo-session rejects");
    let seen = err
        .as_db_error()
        .expect("an ErrorResponse")
        .message()
        .to_string();
    assert!(
        seen.contains(&format!("user={} database={db}", roles::TRUST)),
        "{seen}"
    );
    assert!(seen.contains("application_name=probe"), "{seen}");
    assert!(seen.contains("(\"search_path\", \"public\")"), "{seen}");
    assert!(seen.contains("addr_set=true"), "{seen}");
}

#[tokio::test]
async fn policies_route_a_transaction_at_its_first_statement() {
    let cluster = shared_cluster();
    let db = unique_name("sandbox");
    cluster.create_database(&db, roles::TRUST);
    let proxy = Proxy::start("", &pool_with(&db, "evil-policy", "echo-query"));
    let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let message = |e: tokio_postgres::Error| {
        e.as_db_error()
            .expect("an ErrorResponse")
            .message()
            .to_string()
    };
    // The proxy answers BEGIN itself: the policy sees the transaction's first statement,
    // knowing it is inside a READ ONLY transaction.
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .unwrap();
    let seen = message(c.simple_query("SELECT /* first */ 1").await.unwrap_err());
    assert!(
        seen.contains(
            "kind=read flags=[in-transaction,read-only-transaction,has-comment] protocol=simple"
        ),
        "{seen}"
    );
    assert!(
        seen.ends_with("sql_length=20 sql=SELECT /* first */ 1"),
        "{seen}"
    );
    // Live load: nothing in flight on the primary; the connection that served the login is idle.
    assert!(seen.contains("load0=0/1"), "{seen}");
    // The rejection failed the transaction, as an error on a server would.
    let after = c.simple_query("SELECT 2").await.unwrap_err();
    assert_eq!(sqlstate(&after), Some("25P02"));
    let commit = c.simple_query("COMMIT").await.unwrap();
    assert!(
        matches!(
            commit.last(),
            Some(tokio_postgres::SimpleQueryMessage::CommandComplete(_))
        ),
        "{commit:?}"
    );
    // Outside a transaction again, over the extended protocol.
    let seen = message(c.query("SELECT $1::int", &[&3i32]).await.unwrap_err());
    assert!(
        seen.contains("kind=read flags=[] protocol=extended"),
        "{seen}"
    );
    assert!(seen.ends_with("sql=SELECT $1::int"), "{seen}");
    // A plain BEGIN: in a transaction, not read-only.
    c.batch_execute("BEGIN").await.unwrap();
    let seen = message(c.simple_query("SELECT 4").await.unwrap_err());
    assert!(seen.contains("flags=[in-transaction]"), "{seen}");
    c.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test]
async fn the_host_parses_hints_for_every_policy() {
    let cluster = shared_cluster();
    let db = unique_name("hints");
    cluster.create_database(&db, roles::TRUST);
    let proxy = Proxy::start("", &pool_with(&db, "evil-policy", "echo-query"));
    let hint_of = |e: tokio_postgres::Error| {
        let m = e
            .as_db_error()
            .expect("an ErrorResponse")
            .message()
            .to_string();
        let at = m.find("hint=").unwrap_or_else(|| panic!("{m}"));
        m[at + 5..].split(' ').next().unwrap().to_string()
    };
    let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let hint = |sql: &'static str| {
        let c = &c;
        async move { hint_of(c.simple_query(sql).await.unwrap_err()) }
    };
    assert_eq!(hint("SELECT 1").await, "none");
    assert_eq!(hint("SELECT 1 /* switchyard: replica */").await, "replica");
    assert_eq!(hint("/*switchyard:PRIMARY*/ SELECT 1").await, "primary");
    assert_eq!(hint("SELECT 1 /* switchyard: sideways */").await, "none");
    // The SET is seen by the host when it is routed (the policy rejects it here, so it never
    // reaches a server), and holds for the rest of the session.
    assert_eq!(hint("SET switchyard.route TO 'primary'").await, "primary");
    assert_eq!(hint("SELECT 1").await, "primary");
    // A comment overrides the session's hint, `default` included.
    assert_eq!(hint("SELECT 1 /* switchyard: replica */").await, "replica");
    assert_eq!(hint("SELECT 1 /* switchyard: default */").await, "none");
    assert_eq!(hint("SET SESSION switchyard.route = default").await, "none");
    assert_eq!(hint("SELECT 1").await, "none");
    // Over the extended protocol too, and per session: another client has no hint.
    assert_eq!(hint("set switchyard.route = replica;").await, "replica");
    let seen = hint_of(c.query("SELECT $1::int", &[&3i32]).await.unwrap_err());
    assert_eq!(seen, "replica");
    let other = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    assert_eq!(
        hint_of(other.simple_query("SELECT 1").await.unwrap_err()),
        "none"
    );
    // Given at connect time, as a startup option.
    let url = format!(
        "host=127.0.0.1 port={} user={} dbname={db} options='-c switchyard.route=replica'",
        proxy.port,
        roles::TRUST
    );
    let (hinted, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    assert_eq!(
        hint_of(hinted.simple_query("SELECT 1").await.unwrap_err()),
        "replica"
    );
}

fn check(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(switchyard_binary())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn load_time_faults_are_refused_with_a_clear_message() {
    let (ok, err) = check(&pool_with("app", "forbidden-policy", ""));
    assert!(!ok);
    assert!(err.contains("forbidden_policy.wasm"), "{err}");
    assert!(
        err.contains("imports `wasi:clocks/"),
        "names the import: {err}"
    );

    let (ok, err) = check(&pool_with("app", "evil-policy", "bad"));
    assert!(!ok);
    assert!(
        err.contains("refused its config: evil-policy: config \"bad\" is refused"),
        "{err}"
    );

    let (ok, err) = check(&pool_with("app", "evil-policy", "fine"));
    assert!(ok, "{err}");

    // Not a component at all.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm").unwrap();
    let config = pool_with("app", "evil-policy", "fine").replace(
        &plugin("evil-policy").display().to_string(),
        &junk.display().to_string(),
    );
    let (ok, err) = check(&config);
    assert!(!ok);
    assert!(err.contains("not a valid component"), "{err}");

    // The proxy itself refuses to start with such a plugin.
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        format!(
            "[general]\nlisten_addr = \"127.0.0.1:0\"\n{}",
            pool_with("app", "evil-policy", "bad")
        ),
    )
    .unwrap();
    let out = Command::new(switchyard_binary())
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused its config"));
}
