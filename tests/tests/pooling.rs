//! Pooling rules, each checked against what the real server sees.

use std::time::{Duration, Instant};
use switchyard_tests::{
    activity, first_value, pool_toml, roles, shared_cluster, sqlstate, trust_pool, trust_proxy,
    unique_name, Proxy,
};

fn setup(general: &str, pool: &str) -> (String, Proxy) {
    trust_proxy("pool", general, pool)
}

#[tokio::test]
async fn fifty_tasks_share_a_pool_of_five_in_transaction_mode() {
    let (db, proxy) = setup("", "pool_mode = \"transaction\"\npool_size = 5");
    let setup_client = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    setup_client
        .batch_execute("CREATE TABLE counter (task int, n int)")
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for task in 0..50i32 {
        let conn_str = proxy.conn_str(roles::TRUST, None, &db);
        tasks.push(tokio::spawn(async move {
            let (mut c, conn) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            for n in 0..10i32 {
                let tx = c.transaction().await.unwrap();
                tx.execute("INSERT INTO counter VALUES ($1, $2)", &[&task, &n])
                    .await
                    .unwrap();
                let mine: i64 = tx
                    .query_one("SELECT count(*) FROM counter WHERE task = $1", &[&task])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(mine, n as i64 + 1, "a transaction sees its own writes");
                tx.commit().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total: i64 = setup_client
        .query_one("SELECT count(*) FROM counter", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 500);
    // Never more than pool_size server connections to the primary.
    let servers = activity(&db).len();
    assert!(servers <= 5, "{servers} server connections for pool_size 5");
}

#[tokio::test]
async fn exhausted_pool_queues_then_times_out_with_53300() {
    let (db, proxy) = setup(
        "checkout_timeout_ms = 500",
        "pool_mode = \"transaction\"\npool_size = 1",
    );
    let holder = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiter = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let started = Instant::now();
    let err = waiter.simple_query("SELECT 1").await.unwrap_err();
    let waited = started.elapsed();
    let db_err = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db_err.code().code(), "53300");
    assert!(
        db_err.message().contains("exhausted"),
        "{}",
        db_err.message()
    );
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // The waiting session goes on: once the holder commits, it is served.
    holder.batch_execute("COMMIT").await.unwrap();
    let v: i32 = waiter.query_one("SELECT 5::int", &[]).await.unwrap().get(0);
    assert_eq!(v, 5);
    // A queued client is served as soon as a server frees up, before its timeout.
    holder.batch_execute("BEGIN").await.unwrap();
    let release = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        holder.batch_execute("COMMIT").await.unwrap();
    };
    let (r, ()) = tokio::join!(waiter.simple_query("SELECT 1"), release);
    r.unwrap();
}

#[tokio::test]
async fn an_idle_proxy_rests_and_a_checkout_queued_after_the_rest_times_out_on_time() {
    let (db, proxy) = setup(
        "checkout_timeout_ms = 500",
        "pool_mode = \"transaction\"\npool_size = 1",
    );
    let holder = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let waiter = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    holder.simple_query("SELECT 1").await.unwrap();
    // After a second without traffic the clock's ticker rests, the waiter expiry rests while
    // no checkout waits, and the reaper (at its next round) until a connection's idle timeout
    // is due: nothing wakes the process then.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let wakeups = || proxy.wakeups().iter().map(|(_, n)| n).sum::<u64>();
    let before = wakeups();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = wakeups() - before;
    // (About 5 while the reaper still woke each second.)
    assert!(idle <= 1, "{idle} wake-ups in 3 s without traffic");
    // The first checkout that queues wakes the expiry: it times out as usual.
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let started = Instant::now();
    let err = waiter.simple_query("SELECT 1").await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(sqlstate(&err), Some("53300"), "{err}");
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    waiter.simple_query("SELECT 1").await.unwrap();
}

/// The reaper rests too, and still closes idle connections on time: it wakes when a
/// connection goes idle during its rest, and when that connection's idle timeout is due.
#[tokio::test]
async fn a_resting_reaper_still_closes_idle_connections_on_time() {
    let (db, proxy) = setup(
        "idle_timeout_ms = 3000",
        "pool_mode = \"transaction\"\npool_size = 1",
    );
    let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    c.batch_execute("BEGIN; SELECT 1").await.unwrap();
    // The only connection is in use: the proxy comes to rest with nothing due.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    c.batch_execute("COMMIT").await.unwrap();
    let idle_since = Instant::now();
    assert_eq!(activity(&db).len(), 1);
    let deadline = idle_since + Duration::from_secs(6);
    while !activity(&db).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the idle connection was not closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let closed_after = idle_since.elapsed();
    assert!(
        closed_after >= Duration::from_millis(2900) && closed_after < Duration::from_millis(4500),
        "closed {closed_after:?} after it went idle"
    );
    // At rest again, with no connection: a reload that asks for one wakes the reaper.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pool = "pool_mode = \"transaction\"\npool_size = 1\nmin_pool_size = 1";
    proxy.reload(
        &trust_pool(shared_cluster(), &db, pool),
        "routing policies and servers reloaded",
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    while activity(&db).len() != 1 {
        assert!(
            Instant::now() < deadline,
            "min_pool_size not opened after the reload"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn client_leaving_mid_transaction_leaves_no_open_transaction() {
    for mode in ["transaction", "session"] {
        let (db, proxy) = setup("", &format!("pool_mode = \"{mode}\"\npool_size = 2"));
        let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
        c.batch_execute("CREATE TABLE t (x int)").await.unwrap();
        c.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
            .await
            .unwrap();
        assert!(
            activity(&db)
                .iter()
                .any(|(s, _)| s == "idle in transaction"),
            "{mode}: the transaction is open while the client is there"
        );
        drop(c);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let a = activity(&db);
            if !a.iter().any(|(s, _)| s.starts_with("idle in transaction")) {
                assert!(
                    a.iter().any(|(_, q)| q == "ROLLBACK" || q == "DISCARD ALL"),
                    "{mode}: the server connection was rolled back and kept: {a:?}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{mode}: transaction left open: {a:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
        let n: i64 = c
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{mode}: the insert was rolled back");
    }
}

#[tokio::test]
async fn session_mode_resets_the_server_for_the_next_client() {
    let (db, proxy) = setup("", "pool_mode = \"session\"\npool_size = 1");
    let a = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    a.batch_execute("SET work_mem = '7MB'; PREPARE p AS SELECT 1; CREATE TEMP TABLE tmp (x int)")
        .await
        .unwrap();
    let pid_a: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let b = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let pid_b: i32 = b
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        pid_a, pid_b,
        "pool_size 1: the same server connection is reused"
    );
    let wm = b.simple_query("SHOW work_mem").await.unwrap();
    let wm = match &wm[1] {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).unwrap().to_string(),
        other => panic!("{other:?}"),
    };
    assert_eq!(wm, "4MB", "DISCARD ALL restored the default");
    b.batch_execute("PREPARE p AS SELECT 2").await.unwrap();
    assert!(
        b.batch_execute("SELECT * FROM tmp").await.is_err(),
        "temp table is gone"
    );
}

#[tokio::test]
async fn killed_server_backend_gives_an_error_and_the_pool_heals() {
    let (db, proxy) = setup("", "pool_mode = \"transaction\"\npool_size = 2");
    let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let killer = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let victim_pid: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    // Kill a server while the client's query runs on it.
    let sleeper = c.simple_query("SELECT pg_backend_pid(), pg_sleep(10)");
    let kill = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let c = shared_cluster();
        c.psql(
            c.primary.port,
            "postgres",
            &format!("select pg_terminate_backend(pid) from pg_stat_activity where datname = '{db}' and query like '%pg_sleep(10)%' and pid <> pg_backend_pid()"),
        )
        .unwrap();
    };
    let started = Instant::now();
    let (r, ()) = tokio::join!(sleeper, kill);
    assert!(r.is_err(), "the client gets an error");
    assert!(started.elapsed() < Duration::from_secs(5), "and no hang");
    // The same client goes on, on a fresh server connection.
    let v: i32 = match c.query_one("SELECT 3::int", &[]).await {
        Ok(r) => r.get(0),
        Err(e) => panic!("{e:?}\n{}", proxy.log()),
    };
    assert_eq!(v, 3);
    // Kill an idle pooled server: the next checkout notices and replaces it.
    let shared = shared_cluster();
    shared
        .psql(
            shared.primary.port,
            "postgres",
            &format!("select pg_terminate_backend(pid) from pg_stat_activity where datname = '{db}' and pid <> pg_backend_pid()"),
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..5 {
        let v: i32 = killer.query_one("SELECT 4::int", &[]).await.unwrap().get(0);
        assert_eq!(v, 4);
    }
    let _ = victim_pid;
}

#[tokio::test]
async fn cancel_reaches_only_the_query_it_aims_at() {
    let (db, proxy) = setup("", "pool_mode = \"transaction\"\npool_size = 4");
    let a = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let b = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let token = a.cancel_token();
    let other = b.simple_query("SELECT pg_sleep(1.5)");
    let victim = a.simple_query("SELECT pg_sleep(10)");
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sent = Instant::now();
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
        sent
    };
    let (victim, sent, other) = tokio::join!(
        async {
            let r = victim.await;
            (r, Instant::now())
        },
        cancel,
        other
    );
    let (r, done) = victim;
    let err = r.unwrap_err();
    assert_eq!(sqlstate(&err), Some("57014"), "{err}");
    assert!(
        done.duration_since(sent) < Duration::from_secs(1),
        "cancel took {:?}",
        done - sent
    );
    other.expect("the other client's query was not cancelled");
    // A cancel while nothing runs is harmless, and a wrong key cancels nothing.
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let v: i32 = a.query_one("SELECT 1::int", &[]).await.unwrap().get(0);
    assert_eq!(v, 1);
}

#[tokio::test]
async fn cancel_after_the_server_moved_on_cancels_nobody() {
    // With pool_size 1, client A's server goes to client B right after A's query. A stream of
    // cancels for A must never hit B's query.
    let (db, proxy) = setup("", "pool_mode = \"transaction\"\npool_size = 1");
    let a = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let b = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let token = a.cancel_token();
    a.simple_query("SELECT 1").await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let spammer = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !s2.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
            let _ = token.cancel_query(tokio_postgres::NoTls).await;
        }
    });
    for _ in 0..20 {
        b.simple_query("SELECT pg_sleep(0.02)")
            .await
            .expect("B is never cancelled");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    spammer.await.unwrap();
}

#[tokio::test]
async fn max_client_conn_refuses_extra_clients_with_53300() {
    let (db, proxy) = setup("max_client_conn = 2", "pool_mode = \"transaction\"");
    let _a = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let _b = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let err = proxy
        .connect(roles::TRUST, None, &db)
        .await
        .expect_err("third is refused");
    assert_eq!(sqlstate(&err), Some("53300"), "{err}");
    drop(_a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy
        .connect(roles::TRUST, None, &db)
        .await
        .expect("a slot is free again");
}

#[tokio::test]
async fn min_pool_size_opens_connections_and_idle_timeout_closes_extras() {
    let (db, proxy) = setup(
        "idle_timeout_ms = 500",
        "pool_mode = \"transaction\"\npool_size = 4\nmin_pool_size = 2",
    );
    // Connections to the primary appear without any client.
    let deadline = Instant::now() + Duration::from_secs(5);
    while activity(&db).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "min_pool_size not reached: {:?}",
            activity(&db)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Open 4 at once, then watch the extras close after the idle timeout.
    let mut clients = Vec::new();
    for _ in 0..4 {
        let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
        // (A lone BEGIN takes no server; the transaction's first statement does.)
        c.batch_execute("BEGIN").await.unwrap();
        c.batch_execute("SELECT 1").await.unwrap();
        clients.push(c);
    }
    assert!(activity(&db).len() >= 4);
    for c in &clients {
        c.batch_execute("COMMIT").await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = activity(&db).len();
        if n == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "idle connections not closed: {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn server_lifetime_retires_connections() {
    let (db, proxy) = setup(
        "server_lifetime_ms = 300",
        "pool_mode = \"transaction\"\npool_size = 1",
    );
    let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let first: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let second: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(first, second, "the old server connection was retired");
}

/// A minimal raw client for byte-level protocol checks: trust login, then raw messages.
mod raw {
    use switchyard_tests::wire;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub async fn login(port: u16, user: &str, db: &str) -> TcpStream {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(&wire::startup_packet(user, db)).await.unwrap();
        read_until(&mut s, b'Z').await;
        s
    }

    pub use switchyard_tests::wire::{message as msg, query};

    /// Reads whole messages until one with `tag`; returns the tags seen.
    pub async fn read_until(s: &mut TcpStream, tag: u8) -> Vec<u8> {
        let mut tags = Vec::new();
        loop {
            let mut head = [0u8; 5];
            // The tags read so far tell a closed connection's story (an `E` first: an error).
            s.read_exact(&mut head).await.unwrap_or_else(|e| {
                let seen = String::from_utf8_lossy(&tags);
                panic!("reading up to {:?} after {seen:?}: {e}", tag as char)
            });
            let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            let mut body = vec![0u8; len - 4];
            s.read_exact(&mut body).await.unwrap();
            tags.push(head[0]);
            if head[0] == tag {
                return tags;
            }
        }
    }
}

#[tokio::test]
async fn a_client_that_leaves_while_queued_gives_up_its_place_and_its_query() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (db, proxy) = setup("", "pool_mode = \"transaction\"\npool_size = 1");
    let holder = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    holder
        .batch_execute("CREATE TABLE left_behind (x int); BEGIN; SELECT 1")
        .await
        .unwrap();
    let insert = |x: u32| {
        raw::msg(
            b'Q',
            format!("INSERT INTO left_behind VALUES ({x})\0").as_bytes(),
        )
    };
    // The holder has the only server: each of these queues with its query in hand.
    // One closes its socket (as a killed process does) ...
    let mut closes = raw::login(proxy.port, roles::TRUST, &db).await;
    closes.write_all(&insert(1)).await.unwrap();
    // ... one says goodbye with a Terminate and waits for the proxy to close ...
    let mut says_bye = raw::login(proxy.port, roles::TRUST, &db).await;
    says_bye.write_all(&insert(2)).await.unwrap();
    // ... and one pipelines a second query behind the first: it is still there.
    let mut stays = raw::login(proxy.port, roles::TRUST, &db).await;
    let mut two = insert(3);
    two.extend(raw::msg(b'Q', b"SELECT 1\0"));
    stays.write_all(&two).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(closes);
    says_bye.write_all(&raw::msg(b'X', b"")).await.unwrap();
    let mut rest = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(3), says_bye.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "the proxy closes a queued client that sent Terminate: {closed:?}, {rest:?}"
    );
    // The server frees up. Checkouts are first come, first served: had the leavers kept their
    // places, their INSERTs would run before anything queued after them.
    holder.batch_execute("COMMIT").await.unwrap();
    let tags = tokio::time::timeout(Duration::from_secs(3), async {
        let mut tags = raw::read_until(&mut stays, b'Z').await;
        tags.extend(raw::read_until(&mut stays, b'Z').await);
        tags
    })
    .await
    .expect("the client that stayed is served");
    assert_eq!(tags, b"CZTDCZ".to_vec(), "both of its queries answered");
    let rows: Vec<i32> = holder
        .query("SELECT x FROM left_behind ORDER BY x", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows, vec![3], "only the client that stayed wrote");
}

#[tokio::test]
async fn listen_in_transaction_mode_keeps_the_server_and_its_notifications_with_the_client() {
    use tokio::io::AsyncWriteExt;
    let (db, proxy) = setup("", "pool_mode = \"transaction\"\npool_size = 2");
    let q = raw::query;
    let within = |d: u64| Duration::from_secs(d);
    let mut a = raw::login(proxy.port, roles::TRUST, &db).await;
    a.write_all(&q("LISTEN chan")).await.unwrap();
    assert_eq!(raw::read_until(&mut a, b'Z').await, b"CZ".to_vec());
    // Another client notifies. Had A's server gone back to the pool, B would be given it (the
    // idle list is last in, first out) and would receive A's notification itself.
    let mut b = raw::login(proxy.port, roles::TRUST, &db).await;
    b.write_all(&q("NOTIFY chan, 'for A'")).await.unwrap();
    assert_eq!(
        raw::read_until(&mut b, b'Z').await,
        b"CZ".to_vec(),
        "B does not receive a notification for A's LISTEN"
    );
    // A, idle between transactions, receives it: its server stayed with it.
    let got = tokio::time::timeout(within(3), raw::read_until(&mut a, b'A')).await;
    assert_eq!(got.ok(), Some(b"A".to_vec()), "A receives its notification");
    a.write_all(&q("SELECT 1")).await.unwrap();
    assert_eq!(raw::read_until(&mut a, b'Z').await, b"TDCZ".to_vec());
    // A leaves; its server is returned without the LISTEN. Two transactions at once use both
    // servers of the pool: neither may receive a notification on that channel.
    a.write_all(&raw::msg(b'X', b"")).await.unwrap();
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.write_all(&q("BEGIN; SELECT 1")).await.unwrap();
    let mut c = raw::login(proxy.port, roles::TRUST, &db).await;
    c.write_all(&q("BEGIN; SELECT 1")).await.unwrap();
    raw::read_until(&mut b, b'Z').await;
    raw::read_until(&mut c, b'Z').await;
    let cluster = shared_cluster();
    cluster
        .psql(cluster.primary.port, &db, "NOTIFY chan, 'nobody listens'")
        .unwrap();
    for (name, s) in [("B", &mut b), ("C", &mut c)] {
        s.write_all(&q("COMMIT")).await.unwrap();
        let tags = tokio::time::timeout(within(3), raw::read_until(s, b'Z'))
            .await
            .unwrap();
        assert_eq!(tags, b"CZ".to_vec(), "{name}: no notification after A left");
    }
}

#[tokio::test]
async fn a_listening_client_whose_server_dies_is_closed_as_in_session_mode() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (db, proxy) = setup("", "pool_mode = \"transaction\"\npool_size = 2");
    let mut a = raw::login(proxy.port, roles::TRUST, &db).await;
    a.write_all(&raw::query("LISTEN doomed")).await.unwrap();
    assert_eq!(raw::read_until(&mut a, b'Z').await, b"CZ".to_vec());
    let cluster = shared_cluster();
    let killed = cluster
        .psql(
            cluster.primary.port,
            "postgres",
            &format!(
                "select count(pg_terminate_backend(pid)) from pg_stat_activity where datname = '{db}' and query = 'LISTEN doomed'"
            ),
        )
        .unwrap();
    assert_eq!(killed.trim(), "1");
    // Its LISTEN is gone with the server: the client is told so and closed, not left waiting
    // for notifications that can no longer come.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), a.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(_))), "closed: {closed:?}");
    let text = String::from_utf8_lossy(&rest);
    assert!(text.contains("08006"), "FATAL 08006: {text:?}");
}

#[tokio::test]
async fn server_is_not_released_before_the_clients_sync() {
    use tokio::io::AsyncWriteExt;
    let (db, proxy) = setup("", "pool_mode = \"transaction\"\npool_size = 1");
    let mut a = raw::login(proxy.port, roles::TRUST, &db).await;
    // Parse/Bind/Execute and a Flush, but no Sync yet: the server is mid-request.
    let mut batch = raw::msg(b'P', b"\0SELECT 1\0\0\0");
    batch.extend(raw::msg(b'B', b"\0\0\0\0\0\0\0\0"));
    batch.extend(raw::msg(b'E', b"\0\0\0\0\0"));
    batch.extend(raw::msg(b'H', b""));
    a.write_all(&batch).await.unwrap();
    assert_eq!(raw::read_until(&mut a, b'C').await, b"12DC".to_vec());
    // Another client must wait: the only server is still A's.
    let b = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let waiting = tokio::spawn(async move {
        let r = b.query_one("SELECT 2::int", &[]).await.unwrap();
        (r.get::<_, i32>(0), Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !waiting.is_finished(),
        "B got the server while A had not synced"
    );
    let synced_at = Instant::now();
    a.write_all(&raw::msg(b'S', b"")).await.unwrap();
    assert_eq!(raw::read_until(&mut a, b'Z').await, b"Z".to_vec());
    let (v, done) = waiting.await.unwrap();
    assert_eq!(v, 2);
    assert!(done >= synced_at, "B ran only after A's Sync");
}

#[tokio::test]
async fn unreachable_server_fails_cleanly_and_other_pools_keep_working() {
    let cluster = shared_cluster();
    let alive = unique_name("pool");
    cluster.create_database(&alive, roles::TRUST);
    let dead = unique_name("dead");
    let dead_port = switchyard_tests::free_port();
    let pools = format!(
        "{}[pools.{dead}]\nservers = [{{ host = \"127.0.0.1\", port = {dead_port}, role = \"primary\" }}]\n\
         [pools.{dead}.users.{}]\n",
        trust_pool(cluster, &alive, "pool_mode = \"transaction\""),
        roles::TRUST
    );
    let proxy = Proxy::start(
        "connect_timeout_ms = 1000\ncheckout_timeout_ms = 1000",
        &pools,
    );
    let c = proxy.connect(roles::TRUST, None, &alive).await.unwrap();
    // The dead pool's only server is down: login waits checkout_timeout_ms for it (it might
    // be restarting), then fails with 08001 naming the server.
    let started = Instant::now();
    let err = proxy
        .connect(roles::TRUST, None, &dead)
        .await
        .expect_err("no server to log in to");
    let db_err = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db_err.code().code(), "08001", "{db_err:?}");
    assert!(
        db_err.message().contains(&dead_port.to_string()),
        "{}",
        db_err.message()
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // Clients of the other pool are not affected.
    assert_eq!(
        c.query_one("SELECT 1::int", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    let c2 = proxy.connect(roles::TRUST, None, &alive).await.unwrap();
    assert_eq!(
        c2.query_one("SELECT 2::int", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        2
    );
}

/// `txid_current()` and the server pid, by simple query.
async fn xid_and_pid(c: &tokio_postgres::Client) -> (String, String) {
    let rows = c
        .simple_query("SELECT txid_current(), pg_backend_pid()")
        .await
        .unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((r.get(0).unwrap().into(), r.get(1).unwrap().into()))
            }
            _ => None,
        })
        .expect("a row")
}

#[tokio::test]
async fn begin_takes_no_server_until_the_transactions_first_statement() {
    let (db, proxy) = setup(
        "checkout_timeout_ms = 2000",
        "pool_mode = \"transaction\"\npool_size = 1",
    );
    let a = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let b = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    a.batch_execute("CREATE TABLE t (v int)").await.unwrap();
    // A's BEGIN is answered by the proxy: B still gets the only server at once.
    a.batch_execute("BEGIN").await.unwrap();
    let started = Instant::now();
    b.batch_execute("SELECT 1").await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    // Once A runs a statement its transaction is real: one server and one transaction id
    // until it ends, and ROLLBACK undoes its writes.
    let first = xid_and_pid(&a).await;
    a.batch_execute("INSERT INTO t VALUES (1)").await.unwrap();
    assert_eq!(xid_and_pid(&a).await, first);
    let blocked = b.simple_query("SELECT 1");
    let outcome = tokio::time::timeout(Duration::from_secs(5), blocked).await;
    let e = outcome.expect("checkout timeout answers").unwrap_err();
    assert_eq!(sqlstate(&e), Some("53300"), "A holds the only server");
    a.batch_execute("ROLLBACK").await.unwrap();
    let n = b.simple_query("SELECT count(*) FROM t").await.unwrap();
    assert_eq!(
        first_value::<i64>(&n),
        Some(0),
        "the rollback undid the insert"
    );
    // An empty transaction never needs a server; COMMIT and ROLLBACK of it are answered.
    let mut c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    c.transaction().await.unwrap().commit().await.unwrap();
    c.transaction().await.unwrap().rollback().await.unwrap();
    // BEGIN forms a standby may refuse, and a BEGIN inside a longer string, go to the server.
    a.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE READ WRITE")
        .await
        .unwrap();
    let (_, pid) = xid_and_pid(&a).await;
    a.batch_execute("INSERT INTO t VALUES (2); COMMIT")
        .await
        .unwrap();
    a.batch_execute("BEGIN; INSERT INTO t VALUES (3); COMMIT")
        .await
        .unwrap();
    let n = a.simple_query("SELECT count(*) FROM t").await.unwrap();
    assert_eq!(first_value::<i64>(&n), Some(2));
    assert!(!pid.is_empty());
    // A transaction status seen by the client matches the server's: a failed statement in a
    // deferred transaction fails it, and COMMIT then reports ROLLBACK.
    a.batch_execute("BEGIN").await.unwrap();
    a.batch_execute("SELECT 1/0").await.unwrap_err();
    let e = a.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("25P02"));
    a.batch_execute("COMMIT").await.unwrap();
    a.batch_execute("SELECT 1").await.unwrap();
}

/// Statement mode's refusal of a transaction block: FATAL 08P01 in PgBouncer's words, and the
/// client's connection closed.
async fn refused_as_a_transaction_block(
    c: &tokio_postgres::Client,
    result: Result<u64, tokio_postgres::Error>,
) {
    let err = result.expect_err("a transaction block is refused in statement mode");
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(db.code().code(), "08P01");
    assert_eq!(db.severity(), "FATAL");
    assert_eq!(
        db.message(),
        "transaction blocks not allowed in statement pooling mode"
    );
    let after = c.simple_query("SELECT 1").await;
    assert!(after.is_err(), "the refused client is closed");
}

#[tokio::test]
async fn statement_mode_shares_servers_per_statement_and_refuses_transaction_blocks() {
    let (db, proxy) = setup("", "pool_mode = \"statement\"\npool_size = 1");
    let a = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let b = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    a.batch_execute("CREATE TABLE t (x int)").await.unwrap();
    // One server for both clients, statement by statement, in both protocols.
    for i in 0..5i32 {
        a.execute("INSERT INTO t VALUES ($1)", &[&i]).await.unwrap();
        let n: i64 = b
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, i64::from(i) + 1);
    }
    // A whole transaction in one Query ends idle, as one statement does: it runs.
    b.batch_execute("BEGIN; INSERT INTO t VALUES (100); COMMIT")
        .await
        .unwrap();

    // A lone BEGIN is refused before it reaches a server.
    let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let r = c.batch_execute("BEGIN").await.map(|()| 0);
    refused_as_a_transaction_block(&c, r).await;
    // A transaction left open inside a longer string, with the simple protocol...
    let d = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let r = d
        .batch_execute("BEGIN; INSERT INTO t VALUES (99)")
        .await
        .map(|()| 0);
    refused_as_a_transaction_block(&d, r).await;
    // ... with the extended protocol, and with modes the proxy leaves to the server.
    let e = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let r = e.execute("BEGIN", &[]).await;
    refused_as_a_transaction_block(&e, r).await;
    let f = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let r = f
        .batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
        .await
        .map(|()| 0);
    refused_as_a_transaction_block(&f, r).await;

    // What ran inside the refused block was rolled back, and the pool of one still serves.
    let rows: Vec<i32> = a
        .query("SELECT x FROM t WHERE x >= 99 ORDER BY x", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows, vec![100]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let open: Vec<_> = activity(&db)
            .into_iter()
            .filter(|(state, _)| state.starts_with("idle in transaction"))
            .collect();
        if open.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "transactions left open: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v: i32 = b.query_one("SELECT 7::int", &[]).await.unwrap().get(0);
    assert_eq!(v, 7);
}

/// How many connections the primary has for `db` (the harness's own excluded).
fn server_connections(db: &str) -> usize {
    activity(db).len()
}

/// Holds a server in a transaction for each of `holders`, sends a statement for `waiter`, and
/// ends the first transaction 300 ms later: the waiter must be served then, not before, and
/// within the 1,500 ms checkout timeout. Ends the other transactions; gives the waiter back.
async fn served_when_one_goes_idle(
    holders: &[tokio_postgres::Client],
    waiter: tokio_postgres::Client,
) -> tokio_postgres::Client {
    for x in holders {
        x.batch_execute("BEGIN; SELECT 1").await.unwrap();
    }
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        waiter.simple_query("SELECT 2").await.unwrap();
        (started.elapsed(), waiter)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    holders[0].batch_execute("COMMIT").await.unwrap();
    let (waited, waiter) = waiting.await.unwrap();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(1400),
        "{waited:?}"
    );
    for x in &holders[1..] {
        x.batch_execute("COMMIT").await.unwrap();
    }
    waiter
}

/// Connects a client to each of `conn_strs` at once; each runs 15 statements, all of which
/// must be served with the right answer.
async fn all_served(conn_strs: Vec<String>) {
    let mut tasks = Vec::new();
    for (i, conn_str) in conn_strs.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let (client, conn) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            for n in 0..15 {
                let rows = client
                    .simple_query(&format!("SELECT {i} * 100 + {n}"))
                    .await
                    .unwrap();
                assert_eq!(first_value::<i64>(&rows), Some(i as i64 * 100 + n));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn max_db_connections_caps_what_all_users_hold_on_a_server() {
    let c = shared_cluster();
    let db = unique_name("dbcap");
    c.create_database(&db, roles::TRUST);
    // PostgreSQL itself refuses a fourth connection: the cap must never let one through,
    // not even while a connection closed to make room is still going away.
    c.psql(
        c.primary.port,
        "postgres",
        &format!("ALTER DATABASE {db} CONNECTION LIMIT 3"),
    )
    .unwrap();
    // The first user's own pool_size is above the cap.
    let users = format!(
        "[pools.{db}.users.{}]\npool_size = 5\n[pools.{db}.users.{}]\npassword = \"{}\"\n",
        roles::TRUST,
        roles::MD5,
        roles::MD5_PASSWORD
    );
    let pool = "pool_mode = \"transaction\"\npool_size = 3\nmax_db_connections = 3";
    let proxy = Proxy::start(
        "checkout_timeout_ms = 1500",
        &pool_toml(c, &db, pool, &users),
    );
    let b = proxy
        .connect(roles::MD5, Some(roles::MD5_PASSWORD), &db)
        .await
        .unwrap();
    let mut a = Vec::new();
    for _ in 0..3 {
        a.push(proxy.connect(roles::TRUST, None, &db).await.unwrap());
    }

    // The first user takes all three in transactions; the second user's idle connection is
    // closed to make room.
    for x in &a {
        x.batch_execute("BEGIN; SELECT 1").await.unwrap();
    }
    assert_eq!(server_connections(&db), 3);
    // Nothing is idle: the second user waits out checkout_timeout_ms.
    let started = Instant::now();
    let e = b.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("53300"), "{e:?}");
    let message = e.as_db_error().map(|d| d.message()).unwrap_or_default();
    assert!(message.contains("max_db_connections (3)"), "{message}");
    assert!(started.elapsed() >= Duration::from_millis(1400));

    // Idle connections of the first user make room at once.
    for x in &a {
        x.batch_execute("COMMIT").await.unwrap();
    }
    let started = Instant::now();
    b.simple_query("SELECT 1").await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(1000));
    assert_eq!(server_connections(&db), 3);

    // A checkout that waits is served when a connection goes idle.
    let b = served_when_one_goes_idle(&a, b).await;

    // A checkout of the first user that finds the cap reached (its pool_size is not) gets
    // the first of its own connections that goes idle.
    let fourth = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    for x in &a {
        x.batch_execute("BEGIN; SELECT 1").await.unwrap();
    }
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        fourth.simple_query("SELECT 3").await.unwrap();
        started.elapsed()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    a[0].batch_execute("COMMIT").await.unwrap();
    let waited = waiting.await.unwrap();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(1400),
        "{waited:?}"
    );
    for x in &a[1..] {
        x.batch_execute("COMMIT").await.unwrap();
    }
    assert_eq!(server_connections(&db), 3);

    // Both users at once: every statement is served, and PostgreSQL's own limit (the same
    // number) never refuses a connection.
    let clients = [
        (roles::TRUST, None),
        (roles::MD5, Some(roles::MD5_PASSWORD)),
    ];
    all_served(
        clients
            .iter()
            .cycle()
            .take(6)
            .map(|(user, password)| proxy.conn_str(user, *password, &db))
            .collect(),
    )
    .await;
    assert!(server_connections(&db) <= 3);
    drop((a, b));
}

/// How many connections the primary has for server login `login`.
fn login_connections(login: &str) -> usize {
    let c = shared_cluster();
    let out = c
        .psql(
            c.primary.port,
            "postgres",
            &format!("select count(*) from pg_stat_activity where usename = '{login}'"),
        )
        .unwrap();
    out.trim().parse().unwrap()
}

#[tokio::test]
async fn max_user_connections_caps_a_login_across_databases() {
    let c = shared_cluster();
    let login = unique_name("ucap");
    // PostgreSQL itself refuses the login a third connection: the cap must never let one
    // through, not even while a connection closed to make room is still going away.
    c.psql(
        c.primary.port,
        "postgres",
        &format!("CREATE ROLE {login} LOGIN CONNECTION LIMIT 2"),
    )
    .unwrap();
    let (one, two) = (unique_name("ucap_one"), unique_name("ucap_two"));
    c.create_database(&one, roles::TRUST);
    c.create_database(&two, roles::TRUST);
    // Through the socket directory, where pg_hba.conf trusts every role. The cap is set on
    // one pool's user and holds for the login in both.
    let pool = |db: &str, cap: &str| {
        format!(
            "[pools.{db}]\nservers = [{{ host = \"{}\", port = {}, role = \"primary\" }}]\n\
             pool_mode = \"transaction\"\npool_size = 3\n\
             [pools.{db}.users.{}]\nserver_user = \"{login}\"\n{cap}\n",
            c.dir.join("sock").display(),
            c.primary.port,
            roles::TRUST
        )
    };
    let proxy = Proxy::start(
        "checkout_timeout_ms = 1500",
        &(pool(&one, "max_user_connections = 2") + &pool(&two, "")),
    );
    let a = [
        proxy.connect(roles::TRUST, None, &one).await.unwrap(),
        proxy.connect(roles::TRUST, None, &one).await.unwrap(),
    ];
    let b = proxy.connect(roles::TRUST, None, &two).await.unwrap();

    // Two transactions in the first database hold the login's two connections: the second
    // database waits out checkout_timeout_ms.
    for x in &a {
        x.batch_execute("BEGIN; SELECT 1").await.unwrap();
    }
    let started = Instant::now();
    let e = b.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("53300"), "{e:?}");
    let message = e.as_db_error().map(|d| d.message()).unwrap_or_default();
    assert!(message.contains("max_user_connections (2)"), "{message}");
    assert!(message.contains(&login), "{message}");
    assert!(started.elapsed() >= Duration::from_millis(1400));
    assert_eq!(login_connections(&login), 2);

    // Idle connections of the other database make room at once.
    for x in &a {
        x.batch_execute("COMMIT").await.unwrap();
    }
    let started = Instant::now();
    b.simple_query("SELECT 1").await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(1000));
    assert_eq!(login_connections(&login), 2);

    // A checkout that waits is served when a connection of the other database goes idle.
    let b = served_when_one_goes_idle(&a, b).await;

    // Both databases at once: every statement is served, and PostgreSQL's own limit never
    // refuses a connection.
    all_served(
        [&one, &two]
            .into_iter()
            .cycle()
            .take(6)
            .map(|db| proxy.conn_str(roles::TRUST, None, db))
            .collect(),
    )
    .await;
    assert!(login_connections(&login) <= 2);
    drop((a, b));
}

/// Clients that vanish halfway through a request (PgDog's `partial_req` case, and more): half
/// a message, a long query cut short, an extended request without its `Sync`, half a message
/// inside a transaction, a `COPY FROM STDIN` without its end. None may leave a server waiting
/// for the rest, a transaction open, or bytes that a later client's query would be glued to.
#[tokio::test]
async fn clients_that_leave_halfway_through_a_request_leave_no_server_waiting() {
    for (mode, size) in [("transaction", 3), ("session", 5)] {
        leave_halfway(mode, size).await;
    }
}

/// A Query whose length promises `len` bytes of body, of which `sent` come.
fn cut_query(len: usize, sent: usize) -> Vec<u8> {
    let mut m = vec![b'Q'];
    m.extend_from_slice(&((len + 4) as i32).to_be_bytes());
    m.extend(std::iter::repeat_n(b' ', sent));
    m
}

async fn leave_halfway(mode: &str, size: usize) {
    use tokio::io::AsyncWriteExt;
    let (db, proxy) = setup("", &format!("pool_mode = \"{mode}\"\npool_size = {size}"));
    let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    c.batch_execute("CREATE TABLE half_done (x int)")
        .await
        .unwrap();
    let mut leavers = Vec::new();
    for i in 0..50 {
        let port = proxy.port;
        let db = db.clone();
        leavers.push(tokio::spawn(async move {
            let mut s = raw::login(port, roles::TRUST, &db).await;
            match i % 5 {
                0 => s.write_all(&cut_query(100, 30)).await.unwrap(),
                // Longer than any read buffer: the proxy may pass its start on before the end.
                1 => s.write_all(&cut_query(1 << 20, 300_000)).await.unwrap(),
                2 => {
                    let mut batch = raw::msg(b'P', b"\0INSERT INTO half_done VALUES (2)\0\0\0");
                    batch.extend(raw::msg(b'B', b"\0\0\0\0\0\0\0\0"));
                    batch.extend(raw::msg(b'E', b"\0\0\0\0\0"));
                    batch.extend(raw::msg(b'H', b""));
                    s.write_all(&batch).await.unwrap();
                    assert_eq!(raw::read_until(&mut s, b'C').await, b"12C".to_vec());
                }
                3 => {
                    s.write_all(&raw::query("BEGIN; INSERT INTO half_done VALUES (3)"))
                        .await
                        .unwrap();
                    assert_eq!(raw::read_until(&mut s, b'Z').await, b"CCZ".to_vec());
                    s.write_all(&cut_query(100, 30)).await.unwrap();
                }
                _ => {
                    s.write_all(&raw::query("COPY half_done FROM STDIN"))
                        .await
                        .unwrap();
                    assert_eq!(raw::read_until(&mut s, b'G').await, b"G".to_vec());
                    s.write_all(&raw::msg(b'd', b"5\n")).await.unwrap();
                }
            }
            // Give the proxy time to pass on what it will before the socket closes.
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(s);
        }));
    }
    for l in leavers {
        l.await.unwrap();
    }
    // The server sessions come to rest: idle, nothing half read, no transaction open.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let busy: Vec<_> = activity(&db)
            .into_iter()
            .filter(|(state, _)| state != "idle")
            .collect();
        if busy.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{mode}: server sessions still busy: {busy:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        activity(&db).len() <= size,
        "{mode}: no more server connections than the pool's size"
    );
    // Nothing was written, and the pool's connections answer the next clients exactly.
    proxy.each_gets_its_own_answers(&db, 12, 5).await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM half_done", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "{mode}: no write of a client that left survived");
}
