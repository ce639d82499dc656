//! Unix-domain sockets on both sides: servers named by their socket directory (`host = "/..."`,
//! as libpq does), and clients connecting to `general.unix_socket_dir`.

use std::time::{Duration, Instant};
use switchyard_tests::{roles, shared_cluster, sqlstate, unique_name, Proxy};

/// A pool whose primary is reached through its Unix socket directory.
fn unix_server_pool(db: &str, pool: &str) -> String {
    let c = shared_cluster();
    format!(
        "[pools.{db}]\nservers = [{{ host = \"{}\", port = {}, role = \"primary\" }}]\n{pool}\n\
         [pools.{db}.users.{}]\n",
        c.dir.join("sock").display(),
        c.primary.port,
        roles::TRUST
    )
}

#[tokio::test]
async fn a_server_on_a_unix_socket_serves_queries_and_cancels() {
    let c = shared_cluster();
    let db = unique_name("unixsrv");
    c.create_database(&db, roles::TRUST);
    let proxy = Proxy::start(
        "",
        &unix_server_pool(&db, "pool_mode = \"transaction\"\npool_size = 2"),
    );
    let client = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    // PostgreSQL reports no server address for a Unix-socket connection.
    let row = client
        .query_one("SELECT inet_server_addr() IS NULL, current_database()", &[])
        .await
        .unwrap();
    assert!(
        row.get::<_, bool>(0),
        "the server connection is not a Unix socket"
    );
    assert_eq!(row.get::<_, String>(1), db);
    client
        .batch_execute("CREATE TABLE t (x int); BEGIN; INSERT INTO t VALUES (1); COMMIT")
        .await
        .unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);

    // A cancel travels to the server's socket file too.
    let token = client.cancel_token();
    let sleeper = client.simple_query("SELECT pg_sleep(10)");
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sent = Instant::now();
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
        sent
    };
    let (r, sent) = tokio::join!(
        async {
            let r = sleeper.await;
            (r, Instant::now())
        },
        cancel
    );
    let (r, done) = r;
    let err = r.unwrap_err();
    assert_eq!(sqlstate(&err), Some("57014"), "{err}");
    assert!(done.duration_since(sent) < Duration::from_secs(1));
    assert!(client.simple_query("SELECT 1").await.is_ok());
}

#[tokio::test]
async fn a_missing_server_socket_is_a_clean_connection_error() {
    let db = unique_name("unixnone");
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        "connect_timeout_ms = 2000",
        &format!(
            "[pools.{db}]\nservers = [{{ host = \"{}\", port = 5432, role = \"primary\" }}]\n\
             [pools.{db}.users.{}]\n",
            dir.path().display(),
            roles::TRUST
        ),
    );
    // Login needs a server: the client is told which socket file is missing.
    let err = proxy.connect(roles::TRUST, None, &db).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("08001"), "{err}");
    let text = err.as_db_error().unwrap().message().to_owned();
    assert!(text.contains(".s.PGSQL.5432"), "{text}");
    // The proxy goes on serving.
    assert!(proxy.connect(roles::TRUST, None, &db).await.is_err());
    assert!(proxy.log().contains(".s.PGSQL.5432"));
}

#[tokio::test]
async fn clients_connect_through_the_unix_socket_dir() {
    let c = shared_cluster();
    let db = unique_name("unixcli");
    c.create_database(&db, roles::TRUST);
    let sock = tempfile::tempdir().unwrap();
    let dir = sock.path().display().to_string();
    let mut proxy = Proxy::start(
        &format!("unix_socket_dir = \"{dir}\""),
        &unix_server_pool(&db, "pool_mode = \"transaction\""),
    );
    let file = sock.path().join(format!(".s.PGSQL.{}", proxy.port));
    assert!(file.exists(), "{}", proxy.log());

    // tokio-postgres, like libpq, takes a host that starts with `/` as a socket directory.
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host={dir} port={} user={} dbname={db}",
            proxy.port,
            roles::TRUST
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let v: i32 = client.query_one("SELECT 41 + 1", &[]).await.unwrap().get(0);
    assert_eq!(v, 42);

    // psql, with the simple protocol and a multi-statement string.
    let out = std::process::Command::new(c.bindir.join("psql"))
        .args([
            "-h",
            &dir,
            "-p",
            &proxy.port.to_string(),
            "-U",
            roles::TRUST,
        ])
        .args(["-d", &db, "-Atc", "SELECT 1; SELECT 'via unix'"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\nvia unix\n");

    // TCP still works alongside.
    let tcp = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    assert!(tcp.simple_query("SELECT 1").await.is_ok());

    // A proxy that dies leaves its socket file; the next one replaces it.
    drop(client);
    drop(tcp);
    proxy.signal(libc::SIGKILL);
    proxy.wait_exit(Duration::from_secs(10)).expect("killed");
    assert!(file.exists());
    let mut next = Restarted(
        std::process::Command::new(switchyard_tests::switchyard_binary())
            .arg("--config")
            .arg(&proxy.config_path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let conn_str = format!(
        "host={dir} port={} user={} dbname={db}",
        proxy.port,
        roles::TRUST
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let client = loop {
        if let Ok((client, conn)) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls).await
        {
            tokio::spawn(conn);
            break client;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted proxy did not listen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(client.simple_query("SELECT 1").await.is_ok());

    // On shutdown the socket file goes away.
    drop(client);
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(next.0.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = next.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted proxy did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    assert!(!file.exists(), "the socket file was left behind");
}

/// A second switchyard process on the same config, killed if the test fails early.
struct Restarted(std::process::Child);

impl Drop for Restarted {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
