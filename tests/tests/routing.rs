//! Routing policies (WebAssembly components) against a real primary and two streaming replicas:
//! where each statement ran is proven server-side (`inet_server_port()`, `pg_is_in_recovery()`,
//! `pg_stat_database`).

use std::collections::HashMap;
use switchyard_tests::{
    first_value, free_port, plugin, pool_toml, roles, shared_cluster, unique_name, Proxy,
};

/// A database with a table and a sequence, and a proxy whose transaction-mode pool runs
/// `policies` in order.
fn setup(policies: &[(&str, &str)], pool_extra: &str) -> (String, Proxy) {
    setup_mode("transaction", policies, pool_extra)
}

fn setup_mode(mode: &str, policies: &[(&str, &str)], pool_extra: &str) -> (String, Proxy) {
    let cluster = shared_cluster();
    let db = unique_name("route");
    cluster.create_database(&db, roles::TRUST);
    cluster
        .psql(
            cluster.primary.port,
            &db,
            &format!(
                "CREATE TABLE t (id serial primary key, v text); CREATE SEQUENCE s;\n\
                 CREATE FUNCTION audit_write(x text) RETURNS int LANGUAGE sql AS $$ INSERT INTO t (v) VALUES (x) RETURNING id $$;\n\
                 ALTER TABLE t OWNER TO {t}; ALTER SEQUENCE s OWNER TO {t}; ALTER FUNCTION audit_write(text) OWNER TO {t};",
                t = roles::TRUST
            ),
        )
        .unwrap();
    cluster.wait_replicas_caught_up();
    let mut pool = format!("pool_mode = \"{mode}\"\n{pool_extra}\n");
    for (name, config) in policies {
        pool.push_str(&format!(
            "[[pools.{db}.policies]]\nplugin = \"{}\"\nconfig = {config}\n",
            plugin(name).display()
        ));
    }
    // Policies are arrays of tables: they must come after the pool's plain keys, before users.
    let toml = pool_toml(
        cluster,
        &db,
        &pool,
        &format!("[pools.{db}.users.{}]\n", roles::TRUST),
    );
    (db.clone(), Proxy::start("", &toml))
}

fn ports() -> (u16, Vec<u16>) {
    let c = shared_cluster();
    (c.primary.port, c.replicas.iter().map(|r| r.port).collect())
}

async fn port_of(c: &impl tokio_postgres::GenericClient, sql: &str) -> u16 {
    let row = c
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    row.get::<_, i32>(0) as u16
}

#[tokio::test]
async fn reads_go_to_replicas_and_writes_to_the_primary() {
    let (db, proxy) = setup(
        &[
            ("read-write-split", "\"write_functions = ['audit_write']\""),
            ("least-outstanding", "\"\""),
        ],
        "write_functions = [\"audit_write\"]",
    );
    let (primary, replicas) = ports();
    let mut c = match proxy.connect(roles::TRUST, None, &db).await {
        Ok(c) => c,
        Err(e) => panic!("{e:?}\n{}", proxy.log()),
    };
    for _ in 0..10 {
        let p = port_of(&c, "SELECT inet_server_port()").await;
        assert!(
            replicas.contains(&p),
            "a read ran on {p}, not a replica {replicas:?}"
        );
        let in_recovery: bool = c
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .unwrap()
            .get(0);
        assert!(in_recovery);
    }
    // A battery of writes in disguise: each would fail on a replica, so success proves the
    // primary ran it.
    let writes = [
        "INSERT INTO t (v) VALUES ('plain') RETURNING inet_server_port()",
        "WITH d AS (INSERT INTO t (v) VALUES ('cte') RETURNING id) SELECT inet_server_port() FROM d",
        "SELECT inet_server_port() FROM t FOR UPDATE LIMIT 1",
        "SELECT inet_server_port() FROM (SELECT nextval('s')) x",
        "SELECT inet_server_port() FROM (SELECT audit_write('fn')) x",
        "/* switchyard: primary */ SELECT inet_server_port()",
    ];
    for sql in writes {
        assert_eq!(port_of(&c, sql).await, primary, "{sql}");
    }
    // Multi-statement strings mixing read and write, and SQL the lexer cannot classify.
    c.batch_execute("SELECT 1; INSERT INTO t (v) VALUES ('multi')")
        .await
        .unwrap();
    c.batch_execute("DO $$ BEGIN INSERT INTO t (v) VALUES ('do'); END $$")
        .await
        .unwrap();
    // A transaction that starts with SELECT and then writes stays on the primary.
    let tx = c.transaction().await.unwrap();
    let p = port_of(&tx, "SELECT inet_server_port()").await;
    assert_eq!(p, primary, "explicit transactions go to the primary");
    tx.execute("INSERT INTO t (v) VALUES ('tx')", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // BEGIN READ ONLY may go to a replica.
    c.batch_execute("BEGIN READ ONLY").await.unwrap();
    let p = port_of(&c, "SELECT inet_server_port()").await;
    assert!(replicas.contains(&p), "read-only transaction on {p}");
    c.batch_execute("COMMIT").await.unwrap();
    // Everything written is on the primary.
    let n: i64 = c
        .query_one("/* switchyard: primary */ SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 6);
}

#[tokio::test]
async fn session_mode_routes_per_statement_when_the_policy_asks() {
    let (db, proxy) = setup_mode(
        "session",
        &[
            ("read-write-split", "\"session_routing = 'per-statement'\""),
            ("round-robin", "\"\""),
        ],
        "",
    );
    let (primary, replicas) = ports();
    let conn = format!(
        "{} application_name=per_statement",
        proxy.conn_str(roles::TRUST, None, &db)
    );
    let (mut c, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    // Reads go to the replicas, alternating; writes to the primary; one session throughout.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let msgs = c.simple_query("SELECT inet_server_port()").await.unwrap();
        seen.push(first_value::<u16>(&msgs).unwrap());
        let msgs = c
            .simple_query("INSERT INTO t (v) VALUES ('s') RETURNING inet_server_port()")
            .await
            .unwrap();
        assert_eq!(first_value::<u16>(&msgs), Some(primary));
    }
    assert!(seen.iter().all(|p| replicas.contains(p)), "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] != w[1]), "{seen:?}");
    // Session state follows the client to every server: a reported setting is applied where
    // the next statement lands, and a prepared statement works wherever it executes.
    c.batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    let stmt = c
        .prepare("SELECT current_setting('TimeZone'), inet_server_port()")
        .await
        .unwrap();
    let mut ports_seen = std::collections::HashSet::new();
    for _ in 0..4 {
        let row = c.query_one(&stmt, &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "Asia/Tokyo");
        ports_seen.insert(row.get::<_, i32>(1) as u16);
    }
    assert!(
        ports_seen.iter().all(|p| replicas.contains(p)),
        "{ports_seen:?}"
    );
    // A transaction stays on one server (the primary, for read-write-split).
    let tx = c.transaction().await.unwrap();
    assert_eq!(port_of(&tx, "SELECT inet_server_port()").await, primary);
    assert_eq!(port_of(&tx, "SELECT inet_server_port()").await, primary);
    tx.commit().await.unwrap();
    // The session keeps one server connection per backend, not one per statement.
    let cluster = shared_cluster();
    for node in cluster.nodes() {
        let out = cluster
            .psql(
                node.port,
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'per_statement'",
            )
            .unwrap();
        let n: u32 = out.trim().parse().unwrap();
        assert_eq!(n, 1, "connections of the session on {}: {out}", node.port);
    }
    // When the client leaves, every server it held is reset and back in the pool.
    drop(c);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let n: u32 = cluster
            .nodes()
            .map(|node| {
                let out = cluster
                    .psql(
                        node.port,
                        "postgres",
                        "SELECT count(*) FROM pg_stat_activity \
                         WHERE application_name = 'per_statement'",
                    )
                    .unwrap();
                out.trim().parse::<u32>().unwrap()
            })
            .sum();
        if n == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reset (DISCARD ALL) did not reach every server the session held"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_startup_option_hints_the_whole_session() {
    let (db, proxy) = setup(&[("read-write-split", "\"\"")], "");
    let (primary, _) = ports();
    let conn = format!(
        "{} options='-c switchyard.route=primary'",
        proxy.conn_str(roles::TRUST, None, &db)
    );
    let (c, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    for _ in 0..3 {
        let msgs = c.simple_query("SELECT inet_server_port()").await.unwrap();
        assert_eq!(first_value::<u16>(&msgs), Some(primary));
    }
}

#[tokio::test]
async fn round_robin_alternates_between_replicas() {
    let (db, proxy) = setup(&[("read-write-split", "\"\""), ("round-robin", "\"\"")], "");
    let (_, replicas) = ports();
    let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    // Simple queries: one routing decision each (a prepare and an execute would be two).
    let mut seen = Vec::new();
    for _ in 0..6 {
        let msgs = c.simple_query("SELECT inet_server_port()").await.unwrap();
        let port: u16 = first_value(&msgs).unwrap();
        seen.push(port);
    }
    for pair in seen.windows(2) {
        assert_ne!(pair[0], pair[1], "round robin alternates: {seen:?}");
    }
    assert!(seen.iter().all(|p| replicas.contains(p)), "{seen:?}");
}

#[tokio::test]
async fn least_outstanding_avoids_a_busy_replica() {
    let (db, proxy) = setup(
        &[("read-write-split", "\"\""), ("least-outstanding", "\"\"")],
        "",
    );
    let busy = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    // Hold one replica with an open read-only transaction.
    busy.batch_execute("BEGIN READ ONLY").await.unwrap();
    let held = port_of(&busy, "SELECT inet_server_port()").await;
    let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    for _ in 0..10 {
        let p = port_of(&c, "SELECT inet_server_port()").await;
        assert_ne!(p, held, "least-outstanding chose the busy replica");
    }
    busy.batch_execute("COMMIT").await.unwrap();
}

#[test]
fn pgbench_select_only_runs_on_the_replicas() {
    let (db, proxy) = setup(
        &[("read-write-split", "\"\""), ("least-outstanding", "\"\"")],
        "",
    );
    let cluster = shared_cluster();
    cluster.pgbench_init(&db);
    let commits = || -> HashMap<u16, i64> {
        cluster
            .nodes()
            .map(|n| {
                let v = cluster
                    .psql(
                        n.port,
                        "postgres",
                        &format!("select xact_commit from pg_stat_database where datname = '{db}'"),
                    )
                    .unwrap();
                (n.port, v.trim().parse().unwrap_or(0))
            })
            .collect()
    };
    let before = commits();
    // The simple protocol, and named prepared statements (each client's prepared on the
    // replicas as its reads reach them).
    for mode in ["simple", "prepared"] {
        let out = std::process::Command::new(cluster.bindir.join("pgbench"))
            .args(["-S", "-n", "-M", mode, "-c", "4", "-j", "4", "-t", "250"])
            .args(["-h", "127.0.0.1", "-p", &proxy.port.to_string()])
            .args(["-U", roles::TRUST, &db])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{mode}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("number of transactions actually processed: 1000/1000")
                && stdout.contains("number of failed transactions: 0"),
            "{mode}: {stdout}"
        );
    }
    // Backends flush their statistics when they exit: close the pooled connections.
    drop(proxy);
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let after = commits();
    let (primary, replicas) = ports();
    let on = |p: u16| after[&p] - before[&p];
    let replica_total: i64 = replicas.iter().map(|&p| on(p)).sum();
    assert!(
        replica_total >= 2000,
        "replicas ran {replica_total} of 2000 transactions"
    );
    assert!(
        on(primary) < 50,
        "primary ran {} select-only transactions",
        on(primary)
    );
    for &r in &replicas {
        assert!(on(r) > 400, "replica {r} ran only {}: {after:?}", on(r));
    }
}

/// Which replica each of `n` simple-protocol reads ran on.
async fn replica_counts(c: &tokio_postgres::Client, n: usize) -> HashMap<u16, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let msgs = c.simple_query("SELECT inet_server_port()").await.unwrap();
        let port: u16 = first_value(&msgs).unwrap();
        *counts.entry(port).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn weighted_follows_three_to_one() {
    let (db, proxy) = setup(
        &[
            ("read-write-split", "\"\""),
            ("weighted", "\"weights = { replica1 = 3, replica2 = 1 }\""),
        ],
        "",
    );
    let cluster = shared_cluster();
    let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let counts = replica_counts(&c, 1000).await;
    let r1 = counts.get(&cluster.replicas[0].port).copied().unwrap_or(0);
    let r2 = counts.get(&cluster.replicas[1].port).copied().unwrap_or(0);
    assert_eq!(r1 + r2, 1000, "{counts:?}");
    // Per worker the split is exact; over two workers it stays close to 750:250.
    assert!(
        (700..=800).contains(&r1),
        "replica1 got {r1}, replica2 {r2}"
    );
}

#[tokio::test]
async fn random_uses_both_replicas() {
    let (db, proxy) = setup(&[("read-write-split", "\"\""), ("random", "\"\"")], "");
    let cluster = shared_cluster();
    let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let counts = replica_counts(&c, 200).await;
    for r in &cluster.replicas {
        let n = counts.get(&r.port).copied().unwrap_or(0);
        assert!(
            (50..=150).contains(&n),
            "replica {} got {n} of 200: {counts:?}",
            r.name
        );
    }
}

#[tokio::test]
async fn a_replica_that_refuses_connections_is_left_out() {
    let cluster = shared_cluster();
    let db = unique_name("route");
    cluster.create_database(&db, roles::TRUST);
    let live = &cluster.replicas[0];
    let dead = free_port();
    let toml = format!(
        "[pools.{db}]\n\
         servers = [{{ host = \"127.0.0.1\", port = {p}, role = \"primary\" }}, \
                    {{ host = \"127.0.0.1\", port = {live}, role = \"replica\", name = \"live\" }}, \
                    {{ host = \"127.0.0.1\", port = {dead}, role = \"replica\", name = \"dead\" }}]\n\
         pool_mode = \"transaction\"\n\
         [[pools.{db}.policies]]\nplugin = \"{rw}\"\nconfig = \"\"\n\
         [[pools.{db}.policies]]\nplugin = \"{rr}\"\nconfig = \"\"\n\
         [pools.{db}.users.{user}]\n",
        p = cluster.primary.port,
        live = live.port,
        rw = plugin("read-write-split").display(),
        rr = plugin("round-robin").display(),
        user = roles::TRUST,
    );
    let proxy = Proxy::start("server_login_retry_ms = 60000", &toml);
    let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    // Round robin over two replicas, one of which refuses connections: the first read that
    // lands on it is routed again, and from then on the policies no longer see it as a
    // candidate. No read fails.
    for i in 0..8 {
        let msgs = c
            .simple_query("SELECT inet_server_port()")
            .await
            .unwrap_or_else(|e| panic!("read {i}: {e:?}\n{}", proxy.log()));
        assert_eq!(first_value::<u16>(&msgs), Some(live.port), "read {i}");
    }
    let log = proxy.log();
    assert!(
        log.contains("server marked unhealthy") && log.contains("dead"),
        "{log}"
    );
}

/// SQL the proxy cannot read as UTF-8 (a LATIN1 client's literal) is not surely a read: it goes
/// to the primary, never to a replica on a guess.
#[test]
fn sql_in_another_encoding_stays_on_the_primary() {
    use std::os::unix::ffi::OsStrExt;
    let (db, proxy) = setup(&[("read-write-split", "\"\"")], "");
    let (primary, replicas) = ports();
    let cluster = shared_cluster();
    let run = |sql: &[u8]| {
        let out = std::process::Command::new(cluster.bindir.join("psql"))
            .env("PGCLIENTENCODING", "LATIN1")
            .args(["-X", "-At", "-h", "127.0.0.1", "-U", roles::TRUST])
            .args(["-p", &proxy.port.to_string(), "-d", &db, "-c"])
            .arg(std::ffi::OsStr::from_bytes(sql))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            proxy.log()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    // The same read in plain ASCII goes to a replica: the policy is on.
    let ascii: u16 = run(b"SELECT inet_server_port()").parse().unwrap();
    assert!(replicas.contains(&ascii), "ASCII read ran on {ascii}");
    // 'caf\xe9' is "café" in LATIN1 and not valid UTF-8.
    let out = run(b"SELECT inet_server_port(), 'caf\xe9' = 'caf' || chr(233)");
    assert_eq!(out, format!("{primary}|t"));
}
