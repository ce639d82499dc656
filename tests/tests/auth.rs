//! Client authentication by the proxy, and the proxy's own login to PostgreSQL, with the
//! SQLSTATEs and messages PostgreSQL gives.

use switchyard_tests::{pool_toml, roles, shared_cluster, sqlstate, unique_name, Proxy};

fn err_code(e: &tokio_postgres::Error) -> String {
    sqlstate(e).map_or_else(|| format!("not a db error: {e}"), str::to_owned)
}

/// A pool whose client users each use one auth method, logging in to the server with the
/// trust role unless `server` says otherwise. `<db>` in `users` stands for the pool (a
/// placeholder that base64, and so a SCRAM verifier, cannot contain).
fn proxy_with_users(users: &str) -> (String, Proxy) {
    let cluster = shared_cluster();
    let db = unique_name("auth");
    cluster.create_database(&db, roles::TRUST);
    let proxy = Proxy::start(
        "",
        &pool_toml(
            cluster,
            &db,
            "pool_mode = \"transaction\"",
            &users.replace("<db>", &db),
        ),
    );
    (db, proxy)
}

#[tokio::test]
async fn client_auth_methods_and_failures() {
    let md5_hash = format!("md5{:x}", md5_of(&format!("alicepw{}", "alice")));
    let scram = postgres_protocol::password::scram_sha_256(b"bobpw");
    let users = format!(
        r#"
[pools.<db>.users.alice]
password = "{md5_hash}"
server_user = "{t}"
[pools.<db>.users.bob]
password = "{scram}"
server_user = "{t}"
[pools.<db>.users.carol]
password = "carolpw"
auth = "md5"
server_user = "{t}"
[pools.<db>.users.dave]
password = "davepw"
server_user = "{t}"
[pools.<db>.users.erin]
password = "erinpw"
auth = "password"
server_user = "{t}"
[pools.<db>.users.{t}]
"#,
        t = roles::TRUST
    );
    let (db, proxy) = proxy_with_users(&users);
    for (user, pw) in [
        ("alice", "alicepw"),
        ("bob", "bobpw"),
        ("carol", "carolpw"),
        ("dave", "davepw"),
        ("erin", "erinpw"),
    ] {
        let c = proxy
            .connect(user, Some(pw), &db)
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        let who: String = c
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            who,
            roles::TRUST,
            "{user} runs as the configured server_user"
        );
        let err = proxy
            .connect(user, Some("wrong"), &db)
            .await
            .expect_err("wrong password refused");
        assert_eq!(err_code(&err), "28P01", "{user}: {err}");
        assert_eq!(
            err.as_db_error().unwrap().message(),
            format!("password authentication failed for user \"{user}\"")
        );
    }
    // Trust needs no password.
    proxy.connect(roles::TRUST, None, &db).await.unwrap();
    // Unknown role, unknown database.
    let err = proxy
        .connect("mallory", Some("x"), &db)
        .await
        .err()
        .unwrap();
    assert_eq!(err_code(&err), "28000");
    assert_eq!(msg(&err), "role \"mallory\" does not exist");
    let err = proxy
        .connect(roles::TRUST, None, "nosuchdb")
        .await
        .err()
        .unwrap();
    assert_eq!(err_code(&err), "3D000");
    assert_eq!(msg(&err), "database \"nosuchdb\" does not exist");
}

#[tokio::test]
async fn proxy_logs_in_to_servers_with_md5_and_scram() {
    let users = format!(
        r#"
[pools.<db>.users.{m}]
password = "{mp}"
[pools.<db>.users.{s}]
password = "{sp}"
[pools.<db>.users.wrongpw]
server_user = "{s}"
server_password = "not-it"
[pools.<db>.users.nopw]
server_user = "{m}"
"#,
        m = roles::MD5,
        mp = roles::MD5_PASSWORD,
        s = roles::SCRAM,
        sp = roles::SCRAM_PASSWORD
    );
    let (db, proxy) = proxy_with_users(&users);
    for (user, pw) in [
        (roles::MD5, roles::MD5_PASSWORD),
        (roles::SCRAM, roles::SCRAM_PASSWORD),
    ] {
        let c = proxy
            .connect(user, Some(pw), &db)
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        let who: String = c
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(who, user);
    }
    // A wrong server password: the client is told what the server said, as an error.
    let err = proxy
        .connect("wrongpw", None, &db)
        .await
        .expect_err("server refuses the proxy");
    assert_eq!(err_code(&err), "28P01", "{err}");
    // No server password configured for a server that wants one.
    let err = proxy
        .connect("nopw", None, &db)
        .await
        .expect_err("no password to give");
    assert_eq!(err_code(&err), "08001", "{err}");
    assert!(msg(&err).contains("server_password"), "{}", msg(&err));
}

fn msg(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

fn md5_of(s: &str) -> u128 {
    // md5 through postgres-protocol's helper: md5_hash(user, password, salt) is
    // "md5" + md5(md5(password+user) + salt); we want the inner md5(password+user).
    use md5::{Digest, Md5};
    u128::from_be_bytes(Md5::digest(s.as_bytes()).into())
}
