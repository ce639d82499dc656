//! Wire protocol behaviour through Switchyard, with real clients against a real primary.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;
use switchyard_tests::wire::{self, message, startup_packet};
use switchyard_tests::{first_value, roles, shared_cluster, trust_proxy, Proxy};
use tokio_postgres::SimpleQueryMessage;

/// A database of its own and a proxy in front of it.
fn setup(pool: &str) -> (String, Proxy) {
    trust_proxy("proto", "", pool)
}

fn rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<String>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn extended_protocol_with_parameters_and_types() {
    let (db, proxy) = setup("pool_mode = \"transaction\"\npool_size = 2");
    let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    c.batch_execute(
        "CREATE TABLE t (id int primary key, name text, price numeric, at timestamptz)",
    )
    .await
    .unwrap();
    for i in 0..20 {
        c.execute(
            "INSERT INTO t VALUES ($1, $2, $3::text::numeric, now())",
            &[&i, &format!("item {i}"), &format!("{}.5", i)],
        )
        .await
        .unwrap();
    }
    let row = c
        .query_one(
            "SELECT count(*), sum(id)::int, max(name) FROM t WHERE id >= $1",
            &[&5i32],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 15);
    assert_eq!(row.get::<_, i32>(1), (5..20).sum::<i32>());
    assert_eq!(row.get::<_, String>(2), "item 9");
    // The same statement prepared once and run many times, across server connections.
    let stmt = c.prepare("SELECT name FROM t WHERE id = $1").await.unwrap();
    for i in 0..20 {
        let r = c.query_one(&stmt, &[&i]).await.unwrap();
        assert_eq!(r.get::<_, String>(0), format!("item {i}"));
    }
}

#[tokio::test]
async fn prepared_statements_in_session_mode() {
    let (db, proxy) = setup("pool_mode = \"session\"\npool_size = 2");
    let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let mut stmts = Vec::new();
    for i in 0..10 {
        stmts.push(c.prepare(&format!("SELECT {i}::int + 1")).await.unwrap());
    }
    // In session mode the client keeps one server: its backend pid never changes.
    let p1: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    for (i, s) in stmts.iter().enumerate() {
        let v: i32 = c.query_one(s, &[]).await.unwrap().get(0);
        assert_eq!(v, i as i32 + 1);
    }
    let p2: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(p1, p2);
    // SQL-level PREPARE works too, since the session owns its server.
    c.batch_execute("PREPARE q(int) AS SELECT $1 * 2")
        .await
        .unwrap();
    let r = c.simple_query("EXECUTE q(21)").await.unwrap();
    assert_eq!(rows(&r), vec![vec!["42".to_string()]]);
}

#[tokio::test]
async fn pipelined_queries_in_transaction_mode() {
    let (db, proxy) = setup("pool_mode = \"transaction\"\npool_size = 1");
    let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    // tokio-postgres pipelines concurrent requests on one connection: many Syncs in flight.
    let futs: Vec<_> = (0..50i32)
        .map(|i| {
            let c = &c;
            async move {
                let r = c.query_one("SELECT $1::int * 2", &[&i]).await.unwrap();
                assert_eq!(r.get::<_, i32>(0), i * 2);
            }
        })
        .collect();
    for f in futs {
        f.await;
    }
    let (a, b) = tokio::join!(
        c.query_one("SELECT 1::int", &[]),
        c.query_one("SELECT 2::int", &[])
    );
    assert_eq!(a.unwrap().get::<_, i32>(0), 1);
    assert_eq!(b.unwrap().get::<_, i32>(0), 2);
}

#[tokio::test]
async fn copy_in_and_out_and_a_server_error_before_copy_done() {
    use futures_util::SinkExt;
    let (db, proxy) = setup("pool_mode = \"transaction\"\npool_size = 1");
    let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    c.batch_execute("CREATE TABLE c (id int primary key, v text)")
        .await
        .unwrap();
    let sink = c.copy_in("COPY c FROM STDIN").await.unwrap();
    let mut sink = Box::pin(sink);
    let mut data = String::new();
    for i in 0..1000 {
        data.push_str(&format!("{i}\tvalue {i}\n"));
    }
    sink.send(bytes::Bytes::from(data)).await.unwrap();
    assert_eq!(sink.as_mut().finish().await.unwrap(), 1000);

    let stream = c
        .copy_out("COPY (SELECT * FROM c ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = futures_util::TryStreamExt::try_collect(stream)
        .await
        .unwrap();
    let text: Vec<u8> = chunks.concat();
    let text = String::from_utf8(text).unwrap();
    assert_eq!(text.lines().count(), 1000);
    assert!(text.starts_with("0\tvalue 0\n"));

    // A duplicate key: the server fails the COPY before the client's CopyDone.
    let sink = c.copy_in("COPY c FROM STDIN").await.unwrap();
    let mut sink = Box::pin(sink);
    let _ = sink.send(bytes::Bytes::from_static(b"1\tdup\n")).await;
    let err = sink.as_mut().finish().await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "23505", "{err}");
    // The connection (and, with pool_size 1, the only server) is usable afterwards.
    let n: i64 = c
        .query_one("SELECT count(*) FROM c", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1000);
    let c2 = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let n: i64 = c2
        .query_one("SELECT count(*) FROM c", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1000);
}

#[tokio::test]
async fn copy_data_sent_right_behind_the_copy_command_is_accounted_for() {
    // A client may send its COPY data, CopyDone and Syncs without waiting for the server's
    // CopyInResponse. The Syncs then reach a server that is out of the copy and answers
    // them: the proxy must count those answers, or it releases the server too early.
    let (db, proxy) = setup("pool_mode = \"transaction\"\npool_size = 1");
    let mut s = login(proxy.port, &db);
    s.write_all(&query("CREATE TABLE c (a int)")).unwrap();
    read_until_ready(&mut s);
    let sync = message(b'S', b"");
    s.write_all(
        &[
            query("COPY c FROM STDIN"),
            message(b'd', b"1\n2\n"),
            message(b'c', b""),
            sync.clone(),
            sync,
            query("SELECT count(*) FROM c"),
        ]
        .concat(),
    )
    .unwrap();
    let reply = read_readies(&mut s, 4);
    assert_eq!(tags(&reply), "GCZZZTDCZ", "{reply:?}");
    assert!(reply[6].1.ends_with(b"2"), "{reply:?}");
    // The only server went back to the pool with nothing left unread.
    let other = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let v: i32 = other.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(v, 7);
}

#[tokio::test]
async fn extended_messages_sent_behind_a_query_keep_the_server_until_their_sync() {
    // A Query, then Parse, Bind and Execute without a Sync: once they are answered, the
    // server is inside the transaction the Execute began. It must stay with this client until
    // the Sync, not go to the next client (here: the only server, so the next client waits).
    let (db, proxy) = trust_proxy(
        "proto",
        "checkout_timeout_ms = 300",
        "pool_mode = \"transaction\"\npool_size = 1",
    );
    let mut s = login(proxy.port, &db);
    let mut unsynced = message(b'Q', b"SELECT 1\0");
    unsynced.extend(parse("", "SELECT 2"));
    unsynced.extend(message(b'B', b"\0\0\0\0\0\0\0\0"));
    unsynced.extend(message(b'E', b"\0\0\0\0\0"));
    unsynced.extend(message(b'H', b""));
    s.write_all(&unsynced).unwrap();
    let got = read_messages(&mut s, 8);
    assert_eq!(tags(&got), "TDCZ12DC", "{got:?}");
    let other = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let e = other.simple_query("SELECT 3").await.unwrap_err();
    assert_eq!(switchyard_tests::sqlstate(&e), Some("53300"), "{e}");
    s.write_all(&message(b'S', b"")).unwrap();
    assert_eq!(tags(&read_until_ready(&mut s)), "Z");
    let v = other.simple_query("SELECT 3").await.unwrap();
    assert_eq!(rows(&v), vec![vec!["3".to_string()]]);
}

/// Reads exactly `n` messages.
fn read_messages(s: &mut TcpStream, n: usize) -> Vec<(u8, Vec<u8>)> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).unwrap();
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).unwrap();
        out.push((head[0], body));
    }
    out
}

#[tokio::test]
async fn one_mebibyte_value_round_trips() {
    let (db, proxy) = setup("pool_mode = \"transaction\"");
    let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let big: String = (0..(1 << 20))
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let r = c
        .query_one("SELECT $1::text, length($1::text)", &[&big])
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), big);
    assert_eq!(r.get::<_, i32>(1), 1 << 20);
    let r = c
        .query_one("SELECT repeat('x', 3000000)", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0).len(), 3_000_000);
}

#[tokio::test]
async fn error_inside_a_transaction_then_rollback() {
    let (db, proxy) = setup("pool_mode = \"transaction\"\npool_size = 1");
    let mut c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    c.batch_execute("CREATE TABLE e (id int primary key)")
        .await
        .unwrap();
    let tx = c.transaction().await.unwrap();
    tx.execute("INSERT INTO e VALUES (1)", &[]).await.unwrap();
    let err = tx
        .execute("INSERT INTO e VALUES (1)", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "23505");
    let err = tx.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(
        err.code().unwrap().code(),
        "25P02",
        "failed transaction stays pinned: {err}"
    );
    tx.rollback().await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM e", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // Syntax errors in the extended protocol recover at Sync.
    let err = c.query("SELEC 1", &[]).await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42601");
    assert_eq!(
        c.query_one("SELECT 7::int", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        7
    );
}

#[tokio::test]
async fn simple_protocol_multi_statement_and_notices() {
    let (db, proxy) = setup("pool_mode = \"transaction\"");
    let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let r = c
        .simple_query("CREATE TABLE m (x int); INSERT INTO m VALUES (1),(2); SELECT sum(x) FROM m; DO $$ BEGIN RAISE NOTICE 'hello'; END $$")
        .await
        .unwrap();
    assert_eq!(rows(&r), vec![vec!["3".to_string()]]);
    // psql, the simple protocol's reference client: multi-statement, notices, errors.
    let out = Command::new(shared_cluster().bindir.join("psql"))
        .args([
            "-X",
            "-At",
            "-h",
            "127.0.0.1",
            "-p",
            &proxy.port.to_string(),
        ])
        .args(["-U", roles::TRUST, "-d", &db])
        .args([
            "-c",
            "SELECT 1; SELECT 'two'; DO $$ BEGIN RAISE NOTICE 'note'; END $$;",
        ])
        .args(["-c", "SELECT count(*) FROM m"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        vec!["1", "two", "DO", "2"]
    );
    assert!(stderr.contains("NOTICE:  note"), "{stderr}");
}

#[tokio::test]
async fn listen_notify_in_session_mode() {
    let (db, proxy) = setup("pool_mode = \"session\"");
    let (listener, mut conn) = tokio_postgres::connect(
        &proxy.conn_str(roles::TRUST, None, &db),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = futures_util::StreamExt::next(&mut stream).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    listener.batch_execute("LISTEN chan").await.unwrap();
    let sender = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    sender.batch_execute("NOTIFY chan, 'ping'").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some("ping"));
}

#[tokio::test]
async fn parameter_status_follows_the_client_across_servers() {
    let (db, proxy) = setup("pool_mode = \"transaction\"\npool_size = 2");
    let a = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    a.batch_execute("SET application_name = 'client_a'; SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    // Another client takes a server and sets something else on it.
    let b = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    b.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    let hold = b.batch_execute("BEGIN; SELECT pg_sleep(0.3)");
    let check = async {
        let r = a.simple_query("SHOW TimeZone").await.unwrap();
        assert_eq!(rows(&r), vec![vec!["Asia/Tokyo".to_string()]]);
        let r = a
            .simple_query("SELECT current_setting('application_name')")
            .await
            .unwrap();
        assert_eq!(rows(&r), vec![vec!["client_a".to_string()]]);
    };
    let (h, ()) = tokio::join!(hold, check);
    h.unwrap();
    b.batch_execute("COMMIT").await.unwrap();
    let r = b.simple_query("SHOW TimeZone").await.unwrap();
    assert_eq!(rows(&r), vec![vec!["UTC".to_string()]]);
}

/// Reads whatever the proxy sends until it closes the socket (bounded by a timeout).
fn read_until_close(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => panic!("proxy neither answered nor closed: {e}"),
        }
    }
}

#[tokio::test]
async fn bad_input_gets_a_clean_close_while_others_keep_working() {
    let (db, proxy) = setup("pool_mode = \"transaction\"\n");
    let good = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let addr = ("127.0.0.1", proxy.port);

    // Garbage before any startup packet (an HTTP request).
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let reply = read_until_close(&mut s);
    assert_eq!(reply[0], b'E');
    assert_eq!(wire::error_code(&reply).as_deref(), Some("08P01"));

    // A truncated startup packet, then the client goes away.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&[0, 0, 0, 40, 0, 3, 0, 0, b'u']).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(read_until_close(&mut s).is_empty());

    // After login: a message claiming 2 GiB.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&startup_packet(roles::TRUST, &db)).unwrap();
    let mut greet = [0u8; 1024];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = s.read(&mut greet).unwrap();
    assert_eq!(greet[0], b'R', "{:?}", &greet[..n]);
    s.write_all(&[b'Q', 0x7f, 0xff, 0xff, 0xff]).unwrap();
    let reply = read_until_close(&mut s);
    assert_eq!(
        wire::error_code(&reply).as_deref(),
        Some("08P01"),
        "{reply:?}"
    );

    // A negative length, and an unknown message type.
    for bad in [&[b'Q', 0xff, 0xff, 0xff, 0xf0][..], &[b'!', 0, 0, 0, 4][..]] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&startup_packet(roles::TRUST, &db)).unwrap();
        let _ = s.read(&mut greet).unwrap();
        s.write_all(bad).unwrap();
        let reply = read_until_close(&mut s);
        assert_eq!(
            wire::error_code(&reply).as_deref(),
            Some("08P01"),
            "{reply:?}"
        );
    }

    // A message PostgreSQL cannot take in the middle of COPY FROM STDIN: the server ends the
    // session (ERROR then FATAL 08P01), and the proxy closes the client as PostgreSQL does.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&startup_packet(roles::TRUST, &db)).unwrap();
    read_until_ready(&mut s);
    let copy = message(b'Q', b"CREATE TEMP TABLE c (a int); COPY c FROM STDIN\0");
    s.write_all(&[copy, parse("", "SELECT 1")].concat())
        .unwrap();
    let got = messages(&read_until_close(&mut s));
    assert_eq!(tags(&got), "CGEE", "{got:?}");
    assert_eq!(wire::error_code(&got[3].1).as_deref(), Some("08P01"));
    assert!(got[3].1.starts_with(b"SFATAL"), "{got:?}");

    // Unsupported protocol version.
    let mut s = TcpStream::connect(addr).unwrap();
    let mut p = startup_packet(roles::TRUST, &db);
    p[4..8].copy_from_slice(&(2i32 << 16).to_be_bytes());
    s.write_all(&p).unwrap();
    let reply = read_until_close(&mut s);
    assert_eq!(wire::error_code(&reply).as_deref(), Some("0A000"));

    // SSL and GSSAPI encryption requests are declined with 'N', then plain startup works.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).unwrap();
    let mut one = [0u8; 1];
    s.read_exact(&mut one).unwrap();
    assert_eq!(&one, b"N");
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).unwrap();
    s.read_exact(&mut one).unwrap();
    assert_eq!(&one, b"N");

    // Through all that, the first client kept working.
    let v: i32 = good.query_one("SELECT 42::int", &[]).await.unwrap().get(0);
    assert_eq!(v, 42);
}

#[tokio::test]
async fn newer_protocol_minor_is_negotiated_down() {
    let (db, proxy) = setup("pool_mode = \"transaction\"\n");
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    let body = format!(
        "user\0{}\0database\0{db}\0_pq_.compression\0on\0\0",
        roles::TRUST
    );
    let mut p = ((body.len() + 8) as i32).to_be_bytes().to_vec();
    p.extend_from_slice(&((3i32 << 16) | 2).to_be_bytes());
    p.extend_from_slice(body.as_bytes());
    s.write_all(&p).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    assert_eq!(
        buf[0],
        b'v',
        "NegotiateProtocolVersion first: {:?}",
        &buf[..n]
    );
    let version = i32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]);
    assert_eq!(version, 3 << 16);
    assert!(buf[..n].windows(16).any(|w| w == b"_pq_.compression"));
}

#[tokio::test]
async fn prepared_statements_per_server_stay_under_the_cap() {
    let (db, proxy) = trust_proxy(
        "proto",
        "max_prepared_statements = 2",
        "pool_mode = \"transaction\"\npool_size = 1",
    );
    let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let on_server = || async {
        let msgs = c
            .simple_query("SELECT count(*) FROM pg_prepared_statements")
            .await
            .unwrap();
        first_value::<i64>(&msgs).unwrap()
    };
    let mut stmts = Vec::new();
    for k in 0..5 {
        stmts.push(c.prepare(&format!("SELECT $1::int + {k}")).await.unwrap());
    }
    // Five statements in turns on one server connection with room for two: each is closed and
    // parsed again there as needed, and every answer is right.
    for round in 0..3i32 {
        for (k, s) in stmts.iter().enumerate() {
            let row = c.query_one(s, &[&round]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), round + k as i32);
        }
    }
    assert_eq!(on_server().await, 2);
    // Pipelined: statements in flight together are never closed under each other.
    let (a, b, d) = tokio::join!(
        c.query_one(&stmts[0], &[&10i32]),
        c.query_one(&stmts[3], &[&10i32]),
        c.query_one(&stmts[4], &[&10i32])
    );
    assert_eq!(
        [a.unwrap(), b.unwrap(), d.unwrap()].map(|r| r.get::<_, i32>(0)),
        [10, 13, 14]
    );
    // The next transaction brings the server back under the cap.
    let row = c.query_one(&stmts[1], &[&0i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    assert!(on_server().await <= 2);
}

#[tokio::test]
async fn a_statement_whose_result_type_changed_can_be_prepared_again() {
    let (db, proxy) = setup("pool_mode = \"transaction\"\npool_size = 1");
    let c = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    c.batch_execute("CREATE TABLE migrating (a int); INSERT INTO migrating VALUES (1)")
        .await
        .unwrap();
    let old = c.prepare("SELECT * FROM migrating").await.unwrap();
    assert_eq!(c.query_one(&old, &[]).await.unwrap().len(), 1);
    c.batch_execute("ALTER TABLE migrating ADD COLUMN b int DEFAULT 2")
        .await
        .unwrap();
    // As on a direct connection: the old statement fails with 0A000 ...
    let e = c.query_one(&old, &[]).await.unwrap_err();
    assert_eq!(switchyard_tests::sqlstate(&e), Some("0A000"), "{e}");
    // ... and the same text prepared again has the new result type, in this session and in
    // another one (on a server, statements are shared by their text).
    let again = c.prepare("SELECT * FROM migrating").await.unwrap();
    let row = c.query_one(&again, &[]).await.unwrap();
    assert_eq!((row.get::<_, i32>(0), row.get::<_, i32>(1)), (1, 2));
    let other = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let s = other.prepare("SELECT * FROM migrating").await.unwrap();
    assert_eq!(other.query_one(&s, &[]).await.unwrap().len(), 2);
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    message(b'P', format!("{name}\0{sql}\0\0\0").as_bytes())
}

fn bind_execute_sync(name: &str) -> Vec<u8> {
    let mut m = message(b'B', format!("\0{name}\0\0\0\0\0\0\0").as_bytes());
    m.extend(message(b'E', b"\0\0\0\0\0"));
    m.extend(message(b'S', b""));
    m
}

/// A raw connection through the proxy, logged in as the trust role to `db`.
fn login(port: u16, db: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&startup_packet(roles::TRUST, db)).unwrap();
    read_until_ready(&mut s);
    s
}

/// Reads messages up to and including the next ReadyForQuery: (tag, body) pairs.
fn read_until_ready(s: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
    read_readies(s, 1)
}

/// Reads messages up to and including the `n`th ReadyForQuery; the connection must stay open.
fn read_readies(s: &mut TcpStream, n: usize) -> Vec<(u8, Vec<u8>)> {
    let (out, closed) = wire::read_readies(s, n);
    assert!(!closed, "closed; got {out:?}");
    out
}

/// Sends `m` and reads the answers up to the next ReadyForQuery: their tags, and them.
fn exchange(s: &mut TcpStream, m: &[u8]) -> (String, Vec<(u8, Vec<u8>)>) {
    s.write_all(m).unwrap();
    let reply = read_until_ready(s);
    (tags(&reply), reply)
}

/// A simple Query message.
fn query(sql: &str) -> Vec<u8> {
    message(b'Q', format!("{sql}\0").as_bytes())
}

fn tags(msgs: &[(u8, Vec<u8>)]) -> String {
    msgs.iter().map(|(t, _)| *t as char).collect()
}

#[tokio::test]
async fn statement_names_behave_as_in_postgresql() {
    let (db, proxy) = setup("pool_mode = \"transaction\"\npool_size = 1");
    let mut s = login(proxy.port, &db);
    let sync = message(b'S', b"");
    // A name in use: 42P05, and the rest of the batch is skipped up to the Sync.
    s.write_all(&[parse("a", "SELECT 1"), sync.clone()].concat())
        .unwrap();
    assert_eq!(tags(&read_until_ready(&mut s)), "1Z");
    s.write_all(&[parse("a", "SELECT 2"), bind_execute_sync("a")].concat())
        .unwrap();
    let reply = read_until_ready(&mut s);
    assert_eq!(tags(&reply), "EZ", "{reply:?}");
    assert_eq!(wire::error_code(&reply[0].1).as_deref(), Some("42P05"));
    // The first "a" is intact.
    s.write_all(&bind_execute_sync("a")).unwrap();
    let reply = read_until_ready(&mut s);
    assert_eq!(tags(&reply), "2DCZ", "{reply:?}");
    assert!(reply[1].1.ends_with(b"1"), "{reply:?}");
    // A Parse the server refuses leaves no name behind: the name can be parsed again.
    s.write_all(&[parse("b", "SELEC 3"), sync.clone()].concat())
        .unwrap();
    let reply = read_until_ready(&mut s);
    assert_eq!(tags(&reply), "EZ", "{reply:?}");
    assert_eq!(wire::error_code(&reply[0].1).as_deref(), Some("42601"));
    s.write_all(&[parse("b", "SELECT 3"), bind_execute_sync("b")].concat())
        .unwrap();
    let reply = read_until_ready(&mut s);
    assert_eq!(tags(&reply), "12DCZ", "{reply:?}");
    // So does one skipped after an earlier error in its batch.
    s.write_all(&[parse("x", "SELEC"), parse("c", "SELECT 4"), sync.clone()].concat())
        .unwrap();
    assert_eq!(tags(&read_until_ready(&mut s)), "EZ");
    s.write_all(&[parse("c", "SELECT 4"), sync.clone()].concat())
        .unwrap();
    assert_eq!(tags(&read_until_ready(&mut s)), "1Z");
    // Also when the name is parsed again in the same write, after the Sync of the batch that
    // skipped it: the server's answer to that batch decides, as on PostgreSQL.
    let execute_nothing = message(b'E', b"\0\0\0\0\0");
    s.write_all(
        &[
            execute_nothing,
            parse("d", "SELECT 5"),
            sync,
            parse("d", "SELECT 6"),
            bind_execute_sync("d"),
        ]
        .concat(),
    )
    .unwrap();
    let reply = read_readies(&mut s, 2);
    assert_eq!(tags(&reply), "EZ12DCZ", "{reply:?}");
    assert_eq!(wire::error_code(&reply[0].1).as_deref(), Some("34000"));
    assert!(reply[4].1.ends_with(b"6"), "{reply:?}");
}

/// Transaction mode: a client's Parse of a statement another client already prepared on the
/// same server connection is checked by the server as PostgreSQL checks any Parse: refused in
/// a failed transaction (unless it ends the transaction), refused when an object it reads is
/// gone since, and opening the implicit transaction. The proxy used to answer ParseComplete
/// itself.
#[tokio::test]
async fn a_parse_of_a_statement_the_server_has_is_checked_as_on_postgresql() {
    let (db, proxy) = setup("pool_mode = \"transaction\"\npool_size = 1");
    let login = || login(proxy.port, &db);
    let sync = message(b'S', b"");
    // A prepares three statements on the only server connection, then leaves.
    let mut a = login();
    a.write_all(&query("CREATE TABLE soon_gone (x int)"))
        .unwrap();
    read_until_ready(&mut a);
    for sql in ["SELECT 1", "ROLLBACK", "SELECT x FROM soon_gone"] {
        a.write_all(&[parse("mine", sql), sync.clone()].concat())
            .unwrap();
        assert_eq!(tags(&read_until_ready(&mut a)), "1Z", "{sql}");
        a.write_all(&[message(b'C', b"Smine\0"), sync.clone()].concat())
            .unwrap();
        assert_eq!(tags(&read_until_ready(&mut a)), "3Z");
    }
    a.write_all(&query("DROP TABLE soon_gone")).unwrap();
    read_until_ready(&mut a);
    drop(a);
    // B, in a failed transaction: the same text is refused (25P02), the rest of the batch
    // skipped; a ROLLBACK may still be prepared, and it ends the transaction.
    let mut b = login();
    b.write_all(&query("BEGIN; SELECT 1/0")).unwrap();
    let reply = read_until_ready(&mut b);
    assert_eq!(tags(&reply).chars().last(), Some('Z'));
    assert_eq!(reply.last().unwrap().1, b"E");
    b.write_all(&[parse("s", "SELECT 1"), bind_execute_sync("s")].concat())
        .unwrap();
    let reply = read_until_ready(&mut b);
    assert_eq!(tags(&reply), "EZ", "{reply:?}");
    assert_eq!(wire::error_code(&reply[0].1).as_deref(), Some("25P02"));
    b.write_all(&[parse("r", "ROLLBACK"), bind_execute_sync("r")].concat())
        .unwrap();
    let reply = read_until_ready(&mut b);
    assert_eq!(tags(&reply), "12CZ", "{reply:?}");
    assert_eq!(reply.last().unwrap().1, b"I");
    // Its Parse of the text whose table is gone fails as on PostgreSQL, and the name is free.
    b.write_all(&[parse("g", "SELECT x FROM soon_gone"), sync.clone()].concat())
        .unwrap();
    let reply = read_until_ready(&mut b);
    assert_eq!(tags(&reply), "EZ", "{reply:?}");
    assert_eq!(wire::error_code(&reply[0].1).as_deref(), Some("42P01"));
    b.write_all(&[parse("g", "SELECT 7"), bind_execute_sync("g")].concat())
        .unwrap();
    let reply = read_until_ready(&mut b);
    assert_eq!(tags(&reply), "12DCZ", "{reply:?}");
    // An unnamed statement it parsed is still its own after a named Parse of known text.
    b.write_all(
        &[
            parse("", "SELECT 8"),
            parse("t", "SELECT 1"),
            bind_execute_sync(""),
        ]
        .concat(),
    )
    .unwrap();
    let reply = read_until_ready(&mut b);
    assert_eq!(tags(&reply), "112DCZ", "{reply:?}");
    assert!(reply[3].1.ends_with(b"8"), "{reply:?}");
    // Such a Parse, by a client that holds the unnamed statement, opens the implicit
    // transaction as on PostgreSQL: a BEGIN that sets the isolation level behind it comes
    // too late (25001). The proxy used to answer that Parse itself.
    let begin = query("BEGIN ISOLATION LEVEL SERIALIZABLE");
    b.write_all(&[parse("u", "SELECT 1"), begin].concat())
        .unwrap();
    let reply = read_until_ready(&mut b);
    assert_eq!(tags(&reply), "1EZ", "{reply:?}");
    assert_eq!(wire::error_code(&reply[1].1).as_deref(), Some("25001"));
    assert_eq!(reply.last().unwrap().1, b"I");
}

/// Transaction mode: a client's Parse of the unnamed statement that the server skips (after
/// an error earlier in its batch) leaves the server's unnamed statement as it was, another
/// client's: a Bind of it in the next batch gets `26000`, as on a connection of its own, never
/// that client's statement.
#[tokio::test]
async fn a_skipped_unnamed_parse_never_binds_another_clients_statement() {
    let (db, proxy) = setup("pool_mode = \"transaction\"\npool_size = 1");
    let login = || login(proxy.port, &db);
    let sync = message(b'S', b"");
    let mut a = login();
    a.write_all(&[parse("", "SELECT $1::int * 1000"), sync.clone()].concat())
        .unwrap();
    assert_eq!(tags(&read_until_ready(&mut a)), "1Z");
    let mut b = login();
    let bind_one = |stmt: &str| {
        let mut body = format!("\0{stmt}\0").into_bytes();
        body.extend_from_slice(b"\0\0\0\x01\0\0\0\x017\0\0");
        message(b'B', &body)
    };
    let execute = message(b'E', b"\0\0\0\0\0");
    b.write_all(
        &[
            bind_one("nope"),
            parse("", "SELECT $1::int"),
            sync.clone(),
            bind_one(""),
            execute,
            sync,
        ]
        .concat(),
    )
    .unwrap();
    let reply = read_readies(&mut b, 2);
    assert_eq!(tags(&reply), "EZEZ", "{reply:?}");
    assert_eq!(wire::error_code(&reply[0].1).as_deref(), Some("26000"));
    assert_eq!(wire::error_code(&reply[2].1).as_deref(), Some("26000"));
}

/// Splits raw protocol bytes into (tag, body) messages.
fn messages(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 5 {
        let len = i32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        out.push((bytes[0], bytes[5..len + 1].to_vec()));
        bytes = &bytes[len + 1..];
    }
    out
}

#[tokio::test]
async fn broken_messages_are_answered_in_order_as_by_postgresql() {
    let (db, proxy) = setup("pool_mode = \"transaction\"\npool_size = 1");
    let mut s = login(proxy.port, &db);
    let sync = message(b'S', b"");
    // A Bind whose names cannot be read: ERROR 08P01, the batch is skipped to its Sync, and
    // the session goes on.
    s.write_all(
        &[
            parse("a", "SELECT 1"),
            message(b'B', b"\xe7\xd8"),
            sync.clone(),
        ]
        .concat(),
    )
    .unwrap();
    let reply = read_until_ready(&mut s);
    assert_eq!(tags(&reply), "1EZ", "{reply:?}");
    assert_eq!(wire::error_code(&reply[1].1).as_deref(), Some("08P01"));
    assert!(reply[1].1.starts_with(b"SERROR"), "{reply:?}");
    s.write_all(&bind_execute_sync("a")).unwrap();
    assert_eq!(tags(&read_until_ready(&mut s)), "2DCZ");
    // An unknown message type ends the session, but only after everything sent before it
    // was answered: a query, a lone Sync, and a Parse the client did not end with a Sync.
    s.write_all(
        &[
            query("SELECT 5"),
            sync,
            parse("", "SELECT 6"),
            message(b'!', b""),
        ]
        .concat(),
    )
    .unwrap();
    let reply = messages(&read_until_close(&mut s));
    assert_eq!(tags(&reply), "TDCZZ1E", "{reply:?}");
    assert!(reply[6].1.starts_with(b"SFATAL"), "{reply:?}");
    assert_eq!(wire::error_code(&reply[6].1).as_deref(), Some("08P01"));
    // The server went back to the pool in good order.
    let other = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let v: i32 = other.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(v, 7);
}

#[tokio::test]
async fn sql_deallocate_of_a_clients_statements_works_as_on_postgresql() {
    // PDO (and psycopg with libpq before 17) prepare with Parse and drop with a simple-query
    // DEALLOCATE. In transaction mode the names are the session's: the proxy answers.
    let (db, proxy) = setup("pool_mode = \"transaction\"\npool_size = 1");
    let mut s = login(proxy.port, &db);
    let sync = message(b'S', b"");
    let mut ask = |m: Vec<u8>| exchange(&mut s, &m);
    let name = "pdo_stmt_00000001";
    assert_eq!(
        ask([parse(name, "SELECT 1"), sync.clone()].concat()).0,
        "1Z"
    );
    // Between transactions.
    let (t, reply) = ask(query(&format!("DEALLOCATE {name}")));
    assert_eq!(t, "CZ", "{reply:?}");
    assert_eq!(reply[0].1, b"DEALLOCATE\0");
    assert_eq!(reply[1].1, b"I");
    // The name is free again.
    let (t, reply) = ask([parse(name, "SELECT 2"), bind_execute_sync(name)].concat());
    assert_eq!(t, "12DCZ", "{reply:?}");
    assert!(reply[2].1.ends_with(b"2"), "{reply:?}");
    // Inside a transaction that holds a server.
    assert_eq!(ask(query("BEGIN")).0, "CZ");
    let (t, reply) = ask(bind_execute_sync(name));
    assert_eq!(t, "2DCZ", "{reply:?}");
    let (t, reply) = ask(query(&format!("deallocate prepare \"{name}\";")));
    assert_eq!(
        (t.as_str(), reply[1].1.as_slice()),
        ("CZ", &b"T"[..]),
        "{reply:?}"
    );
    assert_eq!(ask(query("COMMIT")).0, "CZ");
    // A name the client never prepared: the server's own error.
    let (t, reply) = ask(query("DEALLOCATE nope"));
    assert_eq!(t, "EZ", "{reply:?}");
    assert_eq!(wire::error_code(&reply[0].1).as_deref(), Some("26000"));
    // SQL-level PREPARE and DEALLOCATE in one string still run on the server.
    let (t, reply) = ask(query("PREPARE p AS SELECT 5; EXECUTE p; DEALLOCATE p"));
    assert_eq!(t, "CTDCCZ", "{reply:?}");
    // DEALLOCATE ALL frees every name of the client.
    let parses = [parse("a", "SELECT 1"), parse("b", "SELECT 2"), sync.clone()].concat();
    assert_eq!(ask(parses.clone()).0, "11Z");
    let (t, reply) = ask(query("DEALLOCATE ALL"));
    assert_eq!(t, "CZ", "{reply:?}");
    assert_eq!(reply[0].1, b"DEALLOCATE ALL\0");
    assert_eq!(ask(parses).0, "11Z");
    // Behind extended messages with no Sync between: if one of them fails, PostgreSQL skips
    // the DEALLOCATE up to the Sync, and the names stay; if none fails, it runs.
    // (The same bytes sent to PostgreSQL directly get the same answers.)
    let mut ask_n = |m: Vec<u8>, n: usize| {
        s.write_all(&m).unwrap();
        let reply = read_readies(&mut s, n);
        (tags(&reply), reply)
    };
    let bind_one_param = message(b'B', b"\0a\0\0\0\0\x01\0\0\0\x011\0\0");
    let (t, reply) = ask_n(
        [bind_one_param, query("DEALLOCATE ALL"), sync.clone()].concat(),
        1,
    );
    assert_eq!(t, "EZ", "{reply:?}");
    assert_eq!(wire::error_code(&reply[0].1).as_deref(), Some("08P01"));
    let (t, reply) = ask_n(bind_execute_sync("a"), 1);
    assert_eq!(t, "2DCZ", "`a` is still there: {reply:?}");
    let bind_a = message(b'B', b"\0a\0\0\0\0\0\0\0");
    let (t, reply) = ask_n([bind_a, query("DEALLOCATE a"), sync.clone()].concat(), 2);
    assert_eq!(t, "2CZZ", "{reply:?}");
    let (t, reply) = ask_n(bind_execute_sync("a"), 1);
    assert_eq!(t, "EZ", "{reply:?}");
    assert_eq!(wire::error_code(&reply[0].1).as_deref(), Some("26000"));
    // The only server went back to the pool each time: another client gets it.
    let other = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    let v: i32 = other.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(v, 7);
}

/// Transaction mode: a `DEALLOCATE` of the client's statement sent through the extended
/// protocol (psycopg 3 in pipeline mode sends its `DEALLOCATE`s so) works as on PostgreSQL.
/// The servers know the statement by the proxy's name: they answered 26000.
#[tokio::test]
async fn an_extended_protocol_deallocate_works_as_on_postgresql() {
    let (db, proxy) = setup("pool_mode = \"transaction\"\npool_size = 1");
    let mut s = login(proxy.port, &db);
    let sync = message(b'S', b"");
    let mut ask = |m: Vec<u8>| exchange(&mut s, &m);
    let gone = |reply: &[(u8, Vec<u8>)]| wire::error_code(&reply[0].1).as_deref() == Some("26000");
    assert_eq!(
        ask([parse("_pg3_0", "SELECT 1"), sync.clone()].concat()).0,
        "1Z"
    );
    // psycopg's shape: the unnamed statement, its portal described, then run.
    let describe_portal = message(b'D', b"P\0");
    let bind = message(b'B', b"\0\0\0\0\0\0\0\0");
    let execute = message(b'E', b"\0\0\0\0\0");
    let pipeline = [
        parse("", "DEALLOCATE _pg3_0"),
        bind.clone(),
        describe_portal,
        execute.clone(),
        sync.clone(),
    ];
    let (t, reply) = ask(pipeline.concat());
    assert_eq!(t, "12nCZ", "{reply:?}");
    assert_eq!(reply[3].1, b"DEALLOCATE\0");
    let (t, reply) = ask(bind_execute_sync("_pg3_0"));
    assert_eq!(t, "EZ", "{reply:?}");
    assert!(gone(&reply), "{reply:?}");
    // A named statement that deallocates itself.
    let (t, reply) = ask([parse("s1", "DEALLOCATE s1"), bind_execute_sync("s1")].concat());
    assert_eq!(t, "12CZ", "{reply:?}");
    let (t, reply) = ask(bind_execute_sync("s1"));
    assert_eq!(t, "EZ", "{reply:?}");
    assert!(gone(&reply), "{reply:?}");
    // A name the client never prepared: the server's own error.
    let (t, reply) = ask([parse("", "DEALLOCATE nope"), bind_execute_sync("")].concat());
    assert_eq!(t, "12EZ", "{reply:?}");
    assert!(wire::error_code(&reply[2].1).as_deref() == Some("26000"));
    // In a transaction block the portal outlives a Sync; it ends with the transaction.
    assert_eq!(ask(query("BEGIN")).0, "CZ");
    let parses = [parse("a", "SELECT 1"), parse("", "DEALLOCATE ALL")];
    let (t, reply) = ask([&parses[..], &[bind.clone(), sync.clone()]]
        .concat()
        .concat());
    assert_eq!(t, "112Z", "{reply:?}");
    let (t, reply) = ask([execute.clone(), sync.clone()].concat());
    assert_eq!(t, "CZ", "{reply:?}");
    assert_eq!(reply[0].1, b"DEALLOCATE ALL\0");
    let (t, reply) = ask(bind_execute_sync("a"));
    assert_eq!(t, "EZ", "{reply:?}");
    assert!(gone(&reply), "{reply:?}");
    assert_eq!(ask(query("ROLLBACK")).0, "CZ");
    let (t, reply) = ask([&parses[..], &[bind, sync.clone()]].concat().concat());
    assert_eq!(t, "112Z", "{reply:?}");
    let (t, reply) = ask([execute, sync.clone()].concat());
    assert_eq!(t, "EZ", "the portal is gone: {reply:?}");
    assert_eq!(wire::error_code(&reply[0].1).as_deref(), Some("34000"));
    let (t, reply) = ask(bind_execute_sync("a"));
    assert_eq!(t, "2DCZ", "`a` is still there: {reply:?}");
    // Like PostgreSQL's, both DEALLOCATEs take the transaction's snapshot: a SET TRANSACTION
    // ISOLATION LEVEL behind them is too late (25001). The simple-query one here is the
    // first statement of a transaction whose BEGIN the proxy deferred.
    let two = [parse("x", "SELECT 1"), parse("y", "SELECT 2"), sync.clone()];
    assert_eq!(ask(two.concat()).0, "11Z");
    let extended = [parse("", "DEALLOCATE y"), bind_execute_sync("")].concat();
    for (deallocate, answer) in [(query("DEALLOCATE x"), "CZ"), (extended, "12CZ")] {
        assert_eq!(ask(query("BEGIN")).0, "CZ");
        let (t, reply) = ask(deallocate);
        assert_eq!(t, answer, "{reply:?}");
        let (t, reply) = ask(query("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"));
        assert_eq!(t, "EZ", "{reply:?}");
        assert_eq!(wire::error_code(&reply[0].1).as_deref(), Some("25001"));
        assert_eq!(ask(query("ROLLBACK")).0, "CZ");
    }
    // Pipelined behind a batch whose answer has not come yet: the end of that batch's
    // transaction is not the end of this portal's.
    assert_eq!(
        ask([parse("w", "DEALLOCATE w"), sync.clone()].concat()).0,
        "1Z"
    );
    let pipeline = [
        parse("v", "SELECT 1"),
        sync.clone(),
        message(b'B', b"p1\0w\0\0\0\0\0\0\0"),
        message(b'E', b"p1\0\0\0\0\0"),
        sync,
    ];
    s.write_all(&pipeline.concat()).unwrap();
    let reply = read_readies(&mut s, 2);
    assert_eq!(tags(&reply), "1Z2CZ", "{reply:?}");
    assert_eq!(reply[3].1, b"DEALLOCATE\0");
    // An unnamed DEALLOCATE bound in a later batch than its Parse, as on PostgreSQL: the
    // server's answer to the Parse says whether it is still the unnamed statement.
    let mut ask = |m: Vec<u8>| exchange(&mut s, &m);
    let sync = message(b'S', b"");
    let prepare = |name: &str| {
        [
            parse(name, "SELECT 1"),
            parse("", &format!("DEALLOCATE {name}")),
            message(b'S', b""),
        ]
        .concat()
    };
    assert_eq!(ask(prepare("k1")).0, "11Z");
    let (t, reply) = ask(bind_execute_sync(""));
    assert_eq!(t, "2CZ", "{reply:?}");
    assert_eq!(reply[1].1, b"DEALLOCATE\0");
    let (t, reply) = ask(bind_execute_sync("k1"));
    assert_eq!(t, "EZ", "{reply:?}");
    assert!(gone(&reply), "{reply:?}");
    // A later Parse of the unnamed statement skipped after an error leaves it as it was.
    assert_eq!(ask(prepare("k2")).0, "11Z");
    let bind_nope = message(b'B', b"\0nope\0\0\0\0\0\0\0");
    let skipped = [bind_nope, parse("", "SELECT 2"), sync.clone()];
    assert_eq!(ask(skipped.concat()).0, "EZ");
    let (t, reply) = ask(bind_execute_sync(""));
    assert_eq!(t, "2CZ", "{reply:?}");
    assert_eq!(reply[1].1, b"DEALLOCATE\0");
    // One that is done replaces it; a simple Query drops it.
    assert_eq!(ask(prepare("k3")).0, "11Z");
    assert_eq!(ask([parse("", "SELECT 3"), sync.clone()].concat()).0, "1Z");
    assert_eq!(ask(bind_execute_sync("")).0, "2DCZ");
    assert_eq!(ask(bind_execute_sync("k3")).0, "2DCZ", "k3 is still there");
    assert_eq!(ask([parse("", "DEALLOCATE k3"), sync].concat()).0, "1Z");
    assert_eq!(ask(query("SELECT 4")).0, "TDCZ");
    let (t, reply) = ask(bind_execute_sync(""));
    assert_eq!(t, "EZ", "{reply:?}");
    assert!(gone(&reply), "{reply:?}");
    assert_eq!(ask(bind_execute_sync("k3")).0, "2DCZ", "k3 is still there");
    // All in one write, so that each Parse is sent before the answers to those before it:
    // k6's Parse is skipped after an error, and the Bind finds k5's.
    let pipeline = [
        parse("k5", "SELECT 1"),
        parse("k6", "SELECT 1"),
        parse("", "DEALLOCATE k5"),
        message(b'S', b""),
        message(b'B', b"\0nope\0\0\0\0\0\0\0"),
        parse("", "DEALLOCATE k6"),
        message(b'S', b""),
        bind_execute_sync(""),
        bind_execute_sync("k5"),
        bind_execute_sync("k6"),
    ];
    s.write_all(&pipeline.concat()).unwrap();
    let reply = read_readies(&mut s, 5);
    assert_eq!(tags(&reply), "111ZEZ2CZEZ2DCZ", "{reply:?}");
    assert_eq!(reply[7].1, b"DEALLOCATE\0");
    assert!(gone(&reply[9..]), "k5 is gone: {reply:?}");
}

/// Transaction mode: a Close of a name sent while an earlier Close of it is unanswered closes
/// what that one leaves: the earlier skipped after an error (the statement is still there),
/// the later done, the name is gone, as on PostgreSQL (seed 28002963).
#[tokio::test]
async fn a_second_close_of_a_name_closes_what_a_skipped_first_one_left() {
    let (db, proxy) = setup("pool_mode = \"transaction\"\npool_size = 1");
    let mut s = login(proxy.port, &db);
    let sync = || message(b'S', b"");
    assert_eq!(
        exchange(&mut s, &[parse("s2", "SELECT 1"), sync()].concat()).0,
        "1Z"
    );
    // All in one write: the second Close is sent before the answers to the first batch.
    let bad_describe = message(b'D', b"Xs2\0");
    let close = message(b'C', b"Ss2\0");
    let pipeline = [
        bad_describe,
        close.clone(),
        sync(),
        close,
        sync(),
        bind_execute_sync("s2"),
    ];
    s.write_all(&pipeline.concat()).unwrap();
    let reply = read_readies(&mut s, 3);
    assert_eq!(tags(&reply), "EZ3ZEZ", "{reply:?}");
    assert_eq!(wire::error_code(&reply[4].1).as_deref(), Some("26000"));
}

/// Transaction mode: the portal of an extended-protocol `DEALLOCATE` the proxy answers lives
/// as on PostgreSQL. It runs once (a second Execute is `55000`), and a Close, or for the
/// unnamed portal a simple Query, ends it (`34000`), though the server's portal never ran.
#[tokio::test]
async fn a_deallocate_portal_runs_once_and_ends_as_on_postgresql() {
    let (db, proxy) = setup("pool_mode = \"transaction\"\npool_size = 1");
    let mut s = login(proxy.port, &db);
    let sync = || message(b'S', b"");
    let bind = |portal: &str, statement: &str| {
        message(
            b'B',
            format!("{portal}\0{statement}\0\0\0\0\0\0\0").as_bytes(),
        )
    };
    let execute = |portal: &str| message(b'E', format!("{portal}\0\0\0\0\0").as_bytes());
    let mut ask = |m: Vec<u8>| exchange(&mut s, &m);
    let code = |reply: &[(u8, Vec<u8>)]| wire::error_code(&reply[0].1);
    let prepared = [parse("a", "SELECT 1"), parse("b", "SELECT 2")];
    let deallocates = [parse("da", "DEALLOCATE a"), parse("db", "DEALLOCATE b")];
    let setup = [&prepared[..], &deallocates[..], &[sync()]].concat();
    assert_eq!(ask(setup.concat()).0, "1111Z");
    assert_eq!(ask(query("BEGIN")).0, "CZ");
    assert_eq!(ask([bind("p", "da"), sync()].concat()).0, "2Z");
    let (t, reply) = ask([execute("p"), sync()].concat());
    assert_eq!((t.as_str(), &reply[0].1[..]), ("CZ", &b"DEALLOCATE\0"[..]));
    let (t, reply) = ask([execute("p"), execute(""), sync()].concat());
    assert_eq!(t, "EZ", "run once, and the batch ends there: {reply:?}");
    assert_eq!(code(&reply).as_deref(), Some("55000"));
    assert!(
        String::from_utf8_lossy(&reply[0].1).contains("portal \"p\" cannot be run"),
        "{reply:?}"
    );
    assert_eq!(reply[1].1, b"E", "the transaction failed");
    assert_eq!(ask(query("ROLLBACK")).0, "CZ");
    // Closed, it is gone; so is the unnamed portal after a simple Query.
    assert_eq!(ask(query("BEGIN")).0, "CZ");
    let closed = [bind("q", "db"), message(b'C', b"Pq\0"), sync()];
    assert_eq!(ask(closed.concat()).0, "23Z");
    let (t, reply) = ask([execute("q"), sync()].concat());
    assert_eq!((t.as_str(), code(&reply).as_deref()), ("EZ", Some("34000")));
    assert_eq!(ask(query("ROLLBACK")).0, "CZ");
    assert_eq!(ask(query("BEGIN")).0, "CZ");
    assert_eq!(ask([bind("", "db"), sync()].concat()).0, "2Z");
    assert_eq!(ask(query("SELECT 3")).0, "TDCZ");
    let (t, reply) = ask([execute(""), sync()].concat());
    assert_eq!((t.as_str(), code(&reply).as_deref()), ("EZ", Some("34000")));
    assert_eq!(ask(query("ROLLBACK")).0, "CZ");
    // None of those portals ran: `b` is still there.
    assert_eq!(ask(bind_execute_sync("b")).0, "2DCZ");
}

/// Transaction mode: a SQL `PREPARE` keeps the server with the client, and a `DEALLOCATE ALL`
/// (simple or extended) drops those statements there too, with the client's protocol-level
/// ones, as on PostgreSQL, where both share one namespace.
#[tokio::test]
async fn a_deallocate_all_drops_the_clients_sql_prepared_statements_too() {
    let (db, proxy) = setup("pool_mode = \"transaction\"\npool_size = 2");
    let mut s = login(proxy.port, &db);
    let sync = message(b'S', b"");
    let mut ask = |m: Vec<u8>| {
        let (t, reply) = exchange(&mut s, &m);
        let code = reply
            .iter()
            .find(|(t, _)| *t == b'E')
            .and_then(|(_, body)| wire::error_code(body));
        (t, code)
    };
    let extended = [parse("", "DEALLOCATE ALL"), bind_execute_sync("")].concat();
    for (deallocate, answer) in [(query("DEALLOCATE ALL"), "CZ"), (extended, "12CZ")] {
        assert_eq!(ask([parse("s", "SELECT 1"), sync.clone()].concat()).0, "1Z");
        assert_eq!(ask(query("PREPARE q AS SELECT 2")).0, "CZ");
        assert_eq!(ask(deallocate).0, answer);
        assert_eq!(ask(query("PREPARE q AS SELECT 3")).0, "CZ", "q was dropped");
        let (t, code) = ask(bind_execute_sync("s"));
        assert_eq!((t.as_str(), code.as_deref()), ("EZ", Some("26000")));
        // Statements prepared afresh on that connection work.
        assert_eq!(
            ask([parse("t", "SELECT 4"), bind_execute_sync("t")].concat()).0,
            "12DCZ"
        );
        assert_eq!(ask(query("DEALLOCATE q")).0, "CZ");
        assert_eq!(ask(query("DEALLOCATE t")).0, "CZ");
    }
}

#[tokio::test]
async fn a_stale_statement_prepared_again_before_the_servers_ready_for_query_is_fresh() {
    // The client re-prepares as soon as it reads the error, before the server's
    // ReadyForQuery has reached the proxy: those messages must not be given the stale
    // statement that is still prepared on that server connection. (Here the failing batch
    // ends with a Flush, so the server's ReadyForQuery comes only after the client's Sync,
    // which travels with the new Parse.)
    let (db, proxy) = setup("pool_mode = \"transaction\"\npool_size = 1");
    let mut s = login(proxy.port, &db);
    s.write_all(&query("CREATE TABLE t (a int); INSERT INTO t VALUES (1)"))
        .unwrap();
    read_until_ready(&mut s);
    s.write_all(&[parse("a", "SELECT * FROM t"), bind_execute_sync("a")].concat())
        .unwrap();
    assert_eq!(tags(&read_until_ready(&mut s)), "12DCZ");
    s.write_all(&query("ALTER TABLE t ADD COLUMN b int DEFAULT 2"))
        .unwrap();
    read_until_ready(&mut s);
    let mut bind_execute_flush = bind_execute_sync("a");
    bind_execute_flush.truncate(bind_execute_flush.len() - 5);
    bind_execute_flush.extend(message(b'H', b""));
    s.write_all(&bind_execute_flush).unwrap();
    let mut head = [0u8; 5];
    s.read_exact(&mut head).unwrap();
    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut error = vec![0u8; len - 4];
    s.read_exact(&mut error).unwrap();
    assert_eq!(head[0], b'E');
    assert_eq!(wire::error_code(&error).as_deref(), Some("0A000"));
    s.write_all(
        &[
            message(b'S', b""),
            message(b'C', b"Sa\0"),
            parse("b", "SELECT * FROM t"),
            bind_execute_sync("b"),
        ]
        .concat(),
    )
    .unwrap();
    let again = read_readies(&mut s, 2);
    assert_eq!(tags(&again), "Z312DCZ", "{again:?}");
    // Two columns now: the DataRow holds a count of 2.
    assert_eq!(&again[4].1[..2], &2i16.to_be_bytes(), "{again:?}");
}

/// Transaction mode: a client's statement is prepared on a server connection when first used
/// there. Inside a failed transaction the server refuses that Parse (`25P02`, as PostgreSQL
/// refuses the Bind), and a Bind of the same statement pipelined in a later batch, sent before
/// that answer came, gets the same error, not the server's `26000` about the proxy's own name
/// for the statement; a Bind with too few values gets `08P01` as on PostgreSQL, which checks
/// the count first (seed 32043795).
#[tokio::test]
async fn a_statement_refused_in_a_failed_transaction_is_refused_alike_when_pipelined() {
    let (db, proxy) = setup("pool_mode = \"transaction\"\npool_size = 3");
    let mut client = login(proxy.port, &db);
    // The backend pid in a reply to `SELECT pg_backend_pid()`.
    let pid = |reply: &[(u8, Vec<u8>)]| {
        let row = &reply.iter().find(|(t, _)| *t == b'D').expect("a row").1;
        String::from_utf8_lossy(&row[6..]).into_owned()
    };
    let typed = message(b'P', b"t\0SELECT $1::int\0\0\x01\0\0\0\x17");
    let prepare = [
        query("BEGIN"),
        parse("s", "SELECT 1"),
        typed,
        message(b'S', b""),
        query("SELECT pg_backend_pid()"),
        query("COMMIT"),
    ];
    client.write_all(&prepare.concat()).unwrap();
    let reply = read_readies(&mut client, 4);
    assert_eq!(tags(&reply), "CZ11ZTDCZCZ", "{reply:?}");
    let has_them = pid(&reply);
    // Clients take the pool's connections until one holds the one that has `s` and `t`; the
    // others give theirs back, so the client's next transaction runs on one without them.
    let mut holders = Vec::new();
    loop {
        let mut holder = login(proxy.port, &db);
        let (t, reply) = exchange(&mut holder, &query("BEGIN; SELECT pg_backend_pid()"));
        assert_eq!(t, "CTDCZ");
        let found = pid(&reply) == has_them;
        holders.push(holder);
        if found {
            break;
        }
        assert!(holders.len() < 3, "one of three holds it");
    }
    let mut holder = holders.pop().expect("the one that holds it");
    for mut other in holders {
        assert_eq!(exchange(&mut other, &query("COMMIT")).0, "CZ");
    }
    let pipeline = [
        query("BEGIN"),
        query("SELECT 1/0"),
        bind_execute_sync("s"),
        bind_execute_sync("s"),
    ];
    client.write_all(&pipeline.concat()).unwrap();
    let reply = read_readies(&mut client, 4);
    assert_eq!(tags(&reply), "CZEZEZEZ", "{reply:?}");
    for i in [4, 6] {
        assert_eq!(
            wire::error_code(&reply[i].1).as_deref(),
            Some("25P02"),
            "{}",
            String::from_utf8_lossy(&reply[i].1)
        );
    }
    // A Bind with fewer values than the statement's declared types: PostgreSQL checks the
    // count first, in a failed transaction too.
    let (t, reply) = exchange(&mut client, &bind_execute_sync("t"));
    assert_eq!(t, "EZ");
    assert_eq!(wire::error_code(&reply[0].1).as_deref(), Some("08P01"));
    assert!(
        String::from_utf8_lossy(&reply[0].1).contains(
            "bind message supplies 0 parameters, but prepared statement \"t\" requires 1"
        ),
        "{reply:?}"
    );
    assert_eq!(exchange(&mut client, &query("ROLLBACK")).0, "CZ");
    assert_eq!(exchange(&mut client, &bind_execute_sync("s")).0, "2DCZ");
    assert_eq!(exchange(&mut holder, &query("COMMIT")).0, "CZ");
}

/// Transaction mode: PostgreSQL's errors that name a prepared statement name the client's,
/// not the proxy's name for it on the server.
#[tokio::test]
async fn a_bind_with_the_wrong_count_is_refused_in_the_clients_words() {
    let (db, proxy) = setup("pool_mode = \"transaction\"\npool_size = 1");
    let mut s = login(proxy.port, &db);
    let sync = || message(b'S', b"");
    let typed = message(b'P', b"t\0SELECT $1::int\0\0\x01\0\0\0\x17");
    assert_eq!(
        exchange(&mut s, &[parse("m", "SELECT 1"), typed, sync()].concat()).0,
        "11Z"
    );
    let bind = |statement: &str, values: &[u8]| {
        let mut body = format!("\0{statement}\0").into_bytes();
        body.extend_from_slice(b"\0\0");
        body.extend_from_slice(values);
        body.extend_from_slice(b"\0\0");
        message(b'B', &body)
    };
    for (m, expected) in [
        (
            bind("m", b"\0\x01\0\0\0\x011"),
            "bind message supplies 1 parameters, but prepared statement \"m\" requires 0",
        ),
        (
            bind("t", b"\0\0"),
            "bind message supplies 0 parameters, but prepared statement \"t\" requires 1",
        ),
    ] {
        let (t, reply) = exchange(&mut s, &[m, sync()].concat());
        assert_eq!(t, "EZ");
        assert_eq!(wire::error_code(&reply[0].1).as_deref(), Some("08P01"));
        let text = String::from_utf8_lossy(&reply[0].1).into_owned();
        assert!(text.contains(expected), "{text}");
    }
}
