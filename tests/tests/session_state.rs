//! Session state in transaction mode: settings follow the client from server to server, and
//! state that cannot move keeps the server with the client, so no client sees another's.

use std::time::Duration;
use switchyard_tests::{roles, shared_cluster, sqlstate, trust_proxy, Proxy};
use tokio_postgres::{Client, SimpleQueryMessage};

fn setup(pool: &str) -> (String, Proxy) {
    trust_proxy("state", "checkout_timeout_ms = 1000", pool)
}

/// The first value of the last row a simple query returned (`None` for SQL NULL).
async fn value(c: &Client, sql: &str) -> Option<String> {
    let messages = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    messages
        .iter()
        .rev()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_owned)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

async fn text(c: &Client, sql: &str) -> String {
    value(c, sql).await.unwrap_or_default()
}

/// A direct connection to the primary, for PostgreSQL's own answers.
async fn direct(db: &str) -> Client {
    let cluster = shared_cluster();
    let (c, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user={} dbname={db}",
            cluster.primary.port,
            roles::TRUST
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    c
}

#[tokio::test]
async fn startup_parameters_are_applied_as_postgresql_reads_them() {
    let (db, proxy) = setup("pool_mode = \"transaction\"\npool_size = 1");
    let options = "options='-c search_path=a,public -c work_mem=8MB'";
    let connect = |conn_str: String| async move {
        let (c, conn) =
            tokio_postgres::connect(&format!("{conn_str} {options}"), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(conn);
        c
    };
    let cluster = shared_cluster();
    let plain = connect(format!(
        "host=127.0.0.1 port={} user={} dbname={db}",
        cluster.primary.port,
        roles::TRUST
    ))
    .await;
    let pooled = connect(proxy.conn_str(roles::TRUST, None, &db)).await;
    // The same statements, directly and through the proxy, give the same values. Before, the
    // proxy quoted the list as one name: search_path was "\"a,public\"".
    for c in [&plain, &pooled] {
        assert_eq!(text(c, "SHOW search_path").await, "a,public");
        assert_eq!(text(c, "SHOW work_mem").await, "8MB");
        // RESET and DISCARD ALL go back to the startup values.
        c.batch_execute("SET work_mem = '64MB'; SET search_path = b")
            .await
            .unwrap();
        assert_eq!(text(c, "SHOW work_mem").await, "64MB");
        c.batch_execute("RESET work_mem").await.unwrap();
        assert_eq!(text(c, "SHOW work_mem").await, "8MB");
        c.batch_execute("DISCARD ALL").await.unwrap();
        assert_eq!(text(c, "SHOW search_path").await, "a,public");
    }
}

#[tokio::test]
async fn session_settings_follow_the_client_and_no_one_else() {
    // One server connection: both clients run every transaction on it.
    let (db, proxy) = setup("pool_mode = \"transaction\"\npool_size = 1");
    let cluster = shared_cluster();
    let reader = format!("{db}_reader");
    cluster
        .psql(
            cluster.primary.port,
            "postgres",
            &format!(
                "CREATE ROLE {reader} NOLOGIN; GRANT {reader} TO {}",
                roles::TRUST
            ),
        )
        .unwrap();
    let plain = direct(&db).await;
    let default_work_mem = text(&plain, "SHOW work_mem").await;
    let default_search_path = text(&plain, "SHOW search_path").await;
    let a = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let b = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let pid = "SELECT pg_backend_pid()";
    assert_eq!(
        value(&a, pid).await,
        value(&b, pid).await,
        "one server for both"
    );

    a.batch_execute(&format!(
        "SET work_mem = '64MB'; SET app.tenant = 'a'; SET search_path TO a, \"B\", public; \
         SELECT set_config('statement_timeout', '7s', false); SET ROLE {reader}"
    ))
    .await
    .unwrap();
    // B, on the same server, has none of it.
    assert_eq!(text(&b, "SHOW work_mem").await, default_work_mem);
    assert_eq!(
        value(&b, "SELECT nullif(current_setting('app.tenant', true), '')").await,
        None
    );
    assert_eq!(text(&b, "SHOW search_path").await, default_search_path);
    assert_eq!(text(&b, "SHOW statement_timeout").await, "0");
    assert_eq!(text(&b, "SELECT current_user").await, roles::TRUST);
    // A has all of it.
    assert_eq!(text(&a, "SHOW work_mem").await, "64MB");
    assert_eq!(text(&a, "SELECT current_setting('app.tenant')").await, "a");
    assert_eq!(text(&a, "SHOW search_path").await, "a, \"B\", public");
    assert_eq!(text(&a, "SHOW statement_timeout").await, "7s");
    assert_eq!(text(&a, "SELECT current_user").await, reader);
    assert_eq!(value(&a, pid).await, value(&b, pid).await);

    // What PostgreSQL undoes is undone: a rolled-back SET, a SET in a failed implicit
    // transaction, a SET LOCAL.
    a.batch_execute("BEGIN; SET work_mem = '1GB'; ROLLBACK")
        .await
        .unwrap();
    let failed = a.simple_query("SET work_mem = '2GB'; SELECT 1/0").await;
    assert_eq!(failed.err().as_ref().and_then(sqlstate), Some("22012"));
    a.batch_execute("BEGIN; SET LOCAL work_mem = '3GB'; COMMIT")
        .await
        .unwrap();
    assert_eq!(text(&b, "SHOW work_mem").await, default_work_mem);
    assert_eq!(text(&a, "SHOW work_mem").await, "64MB");
    // A committed SET inside a transaction block stays.
    a.batch_execute("BEGIN; SET work_mem = '32MB'; COMMIT")
        .await
        .unwrap();
    assert_eq!(text(&b, "SHOW work_mem").await, default_work_mem);
    assert_eq!(text(&a, "SHOW work_mem").await, "32MB");
    // RESET goes back to the default; RESET ROLE too.
    a.batch_execute("RESET work_mem; RESET ROLE").await.unwrap();
    assert_eq!(text(&b, "SHOW work_mem").await, default_work_mem);
    assert_eq!(text(&a, "SHOW work_mem").await, default_work_mem);
    assert_eq!(text(&a, "SELECT current_user").await, roles::TRUST);
    assert_eq!(text(&a, "SHOW search_path").await, "a, \"B\", public");
    drop((a, b));
    cluster
        .psql(
            cluster.primary.port,
            "postgres",
            &format!("DROP ROLE {reader}"),
        )
        .ok();
}

#[tokio::test]
async fn state_that_cannot_move_keeps_the_server_with_its_client() {
    let (db, proxy) = setup("pool_mode = \"transaction\"\npool_size = 2");
    let pid = "SELECT pg_backend_pid()";
    let a = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let mine = text(&a, pid).await;
    a.batch_execute("PREPARE q AS SELECT 42").await.unwrap();
    // Had A's server gone back to the pool, B would be given it (the idle list is last in,
    // first out) and would run A's statement.
    let b = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    assert_ne!(text(&b, pid).await, mine, "B is not given A's server");
    let e = b.simple_query("EXECUTE q").await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("26000"), "{e}");
    assert_eq!(text(&a, "EXECUTE q").await, "42");
    // More state of other kinds, each used again in later transactions.
    a.batch_execute(
        "CREATE TEMP TABLE t (x int); INSERT INTO t VALUES (1); \
         DECLARE c CURSOR WITH HOLD FOR SELECT generate_series(1, 3)",
    )
    .await
    .unwrap();
    a.batch_execute("SELECT pg_advisory_lock(4242)")
        .await
        .unwrap();
    assert_eq!(
        text(&a, "INSERT INTO t VALUES (2); SELECT count(*) FROM t").await,
        "2"
    );
    assert_eq!(text(&a, "FETCH 2 FROM c").await, "2");
    assert_eq!(text(&a, "SELECT pg_advisory_unlock(4242)").await, "t");
    assert_eq!(text(&a, pid).await, mine);

    // What is gone by the end of the transaction keeps nothing: a temporary table dropped at
    // commit, a PREPARE that failed or was deallocated, a lock released. C's server goes back
    // to the pool, so D (the pool's other server being A's) gets one within the checkout
    // timeout.
    let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    c.batch_execute("BEGIN; CREATE TEMP TABLE gone (x int) ON COMMIT DROP; COMMIT")
        .await
        .unwrap();
    let e = c.simple_query("PREPARE bad AS SELEC 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("42601"));
    c.batch_execute("PREPARE p AS SELECT 1; EXECUTE p; DEALLOCATE p")
        .await
        .unwrap();
    c.batch_execute("SELECT pg_advisory_lock(4444), pg_advisory_unlock(4444)")
        .await
        .unwrap();
    let d = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    assert_ne!(text(&d, pid).await, mine);
    drop(b);

    // When A leaves, its server is reset and goes back to the pool with none of its state.
    a.batch_execute("SELECT pg_advisory_lock(4343)")
        .await
        .unwrap();
    drop(a);
    let cluster = shared_cluster();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let e = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    loop {
        // Both servers busy at once: one of them must be A's, back in the pool.
        let t1 = e.simple_query("BEGIN; SELECT pg_backend_pid()");
        let t2 = d.simple_query("BEGIN; SELECT pg_backend_pid()");
        let (r1, r2) = tokio::join!(t1, t2);
        let got = [r1, r2].map(|r| {
            let rows = r.unwrap_or_default();
            rows.iter()
                .find_map(|m| match m {
                    SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                    _ => None,
                })
                .unwrap_or_default()
        });
        e.batch_execute("COMMIT").await.ok();
        d.batch_execute("COMMIT").await.ok();
        if got.contains(&mine) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "A's server did not come back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for client in [&e, &d] {
        let left = text(
            client,
            "SELECT (SELECT count(*) FROM pg_prepared_statements) \
             + (SELECT count(*) FROM pg_cursors) \
             + (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())",
        )
        .await;
        assert_eq!(left, "0");
    }
    let locks = cluster
        .psql(
            cluster.primary.port,
            "postgres",
            "select count(*) from pg_locks where locktype = 'advisory' and objid in (4242, 4343)",
        )
        .unwrap();
    assert_eq!(locks.trim(), "0", "A's advisory lock went with its session");
}

#[tokio::test]
async fn a_client_whose_kept_server_dies_is_closed() {
    let (db, proxy) = setup("pool_mode = \"transaction\"\npool_size = 2");
    let a = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    a.batch_execute("PREPARE doomed AS SELECT 1").await.unwrap();
    let server = text(&a, "SELECT pg_backend_pid()").await;
    let cluster = shared_cluster();
    let killed = cluster
        .psql(
            cluster.primary.port,
            "postgres",
            &format!("select count(pg_terminate_backend({server})) where {server} > 0"),
        )
        .unwrap();
    assert_eq!(killed.trim(), "1");
    let e = a.simple_query("EXECUTE doomed").await.unwrap_err();
    assert!(
        matches!(sqlstate(&e), Some("08006") | Some("57P01")),
        "the client is told its session is gone: {e}"
    );
    tokio::time::timeout(Duration::from_secs(3), async {
        while !a.is_closed() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the client is closed, as in session mode");
    // Others go on.
    let b = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    assert_eq!(text(&b, "SELECT 1").await, "1");
}

#[tokio::test]
async fn without_tracking_session_state_stays_on_the_server_as_in_pgbouncer() {
    let (db, proxy) =
        setup("pool_mode = \"transaction\"\npool_size = 1\ntrack_session_state = false");
    let a = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let b = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    a.batch_execute("SET work_mem = '64MB'; PREPARE q AS SELECT 42")
        .await
        .unwrap();
    // The one server went back to the pool with A's state on it: B sees it.
    assert_eq!(text(&b, "SHOW work_mem").await, "64MB");
    assert_eq!(text(&b, "EXECUTE q").await, "42");
}

#[tokio::test]
async fn settings_made_in_do_blocks_and_procedures_follow_the_client() {
    // One server connection: both clients run every transaction on it.
    let (db, proxy) = setup("pool_mode = \"transaction\"\npool_size = 1");
    let plain = direct(&db).await;
    plain
        .batch_execute(
            "CREATE PROCEDURE set_tenant(t text) LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM set_config('app.tenant', t, false); END $$",
        )
        .await
        .unwrap();
    let default_work_mem = text(&plain, "SHOW work_mem").await;
    let a = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let b = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    a.batch_execute("DO $$ BEGIN PERFORM set_config('work_mem', '48MB', false); END $$")
        .await
        .unwrap();
    b.batch_execute("CALL set_tenant('b')").await.unwrap();
    let tenant = "SELECT nullif(current_setting('app.tenant', true), '')";
    assert_eq!(value(&b, tenant).await.as_deref(), Some("b"));
    assert_eq!(
        text(&b, "SHOW work_mem").await,
        default_work_mem,
        "B does not see A's setting"
    );
    // A's setting was read back (pg_settings lists it) and follows A. B's is a custom
    // parameter set under a name the SQL does not show, which PostgreSQL does not list: it
    // cannot follow B, and the server is reset before another client uses it.
    assert_eq!(text(&a, "SHOW work_mem").await, "48MB");
    assert_eq!(value(&a, tenant).await, None, "A does not see B's setting");
    let pid = "SELECT pg_backend_pid()";
    assert_eq!(
        value(&a, pid).await,
        value(&b, pid).await,
        "one server for both"
    );
}

#[tokio::test]
async fn temporary_tables_made_by_procedures_and_do_blocks_keep_the_server() {
    let (db, proxy) = setup("pool_mode = \"transaction\"\npool_size = 2");
    direct(&db)
        .await
        .batch_execute(
            "CREATE PROCEDURE make_temp() LANGUAGE plpgsql AS \
             $$ BEGIN CREATE TEMP TABLE made_by_call (x int); END $$",
        )
        .await
        .unwrap();
    let pid = "SELECT pg_backend_pid()";
    let a = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    a.batch_execute("CREATE TEMP TABLE made_by_create AS SELECT 1 AS x")
        .await
        .unwrap();
    let b = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    b.batch_execute("CALL make_temp()").await.unwrap();
    assert_ne!(text(&a, pid).await, text(&b, pid).await);
    // Both servers are kept: a third client waits for one until its checkout timeout.
    let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let e = c.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("53300"), "{e}");
    assert_eq!(text(&a, "SELECT count(*) FROM made_by_create").await, "1");
    assert_eq!(text(&b, "SELECT count(*) FROM made_by_call").await, "0");

    // A leaves: its server is reset and goes back to the pool, where C gets it.
    drop(a);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let made = c
            .simple_query("DO $$ BEGIN CREATE TEMP TABLE made_by_do (x int); END $$")
            .await;
        match made {
            Ok(_) => break,
            Err(e) if sqlstate(&e) == Some("53300") => {}
            Err(e) => panic!("DO block: {e}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "A's server did not come back"
        );
    }
    let d = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let e = d.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("53300"), "C keeps A's old server: {e}");
    assert_eq!(text(&c, "SELECT count(*) FROM made_by_do").await, "0");
    let e = c
        .simple_query("SELECT count(*) FROM made_by_create")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("42P01"), "A's table left with A: {e}");
}
