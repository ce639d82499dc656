//! The project's test harness: real PostgreSQL clusters and real Switchyard processes.
//!
//! [`Cluster`] starts a primary and streaming replicas (initdb, pg_basebackup -R) in a temporary
//! directory on free loopback ports, as an ordinary OS user when run as root. [`shared_cluster`]
//! gives each test binary one cluster, stopped and removed at process exit (also when tests
//! fail); tests isolate themselves with a database each ([`Cluster::create_database`]).
//! [`Proxy`] runs the `switchyard` binary with a config and stops it when dropped.

mod cluster;
pub mod console;
pub mod metrics;
mod proxy;
pub mod wire;

pub use cluster::{find_bindir, free_port, Cluster, Node};
pub use proxy::{switchyard_binary, Proxy};

use std::sync::OnceLock;

/// Roles every cluster has, with their passwords and the auth method pg_hba.conf requires.
pub mod roles {
    /// Superuser, trust over loopback; used by the harness itself.
    pub const ADMIN: &str = "postgres";
    /// Trust over loopback.
    pub const TRUST: &str = "sy_trust";
    /// md5 over loopback, password `md5_pw`.
    pub const MD5: &str = "sy_md5";
    pub const MD5_PASSWORD: &str = "md5_pw";
    /// scram-sha-256 over loopback, password `scram_pw`.
    pub const SCRAM: &str = "sy_scram";
    pub const SCRAM_PASSWORD: &str = "scram_pw";
}

static SHARED: OnceLock<Cluster> = OnceLock::new();

extern "C" fn stop_shared_at_exit() {
    if let Some(c) = SHARED.get() {
        c.stop();
    }
}

/// The cluster of this test binary: a primary and two streaming replicas, started on first use.
pub fn shared_cluster() -> &'static Cluster {
    SHARED.get_or_init(|| {
        let c = Cluster::start(2).unwrap_or_else(|e| panic!("cannot start the test cluster: {e}"));
        // SAFETY: registers a plain function with no captured state; it runs at process exit.
        unsafe {
            libc::atexit(stop_shared_at_exit);
        }
        c
    })
}

/// A fresh name for a test's database.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The `[pools.<db>]` table for `cluster`: its primary and replicas as servers, `pool` lines
/// (pool_mode, pool_size, ...) and `users` (raw `[pools.<db>.users.<name>]` tables).
pub fn pool_toml(cluster: &Cluster, db: &str, pool: &str, users: &str) -> String {
    let mut servers = format!(
        "{{ host = \"127.0.0.1\", port = {}, role = \"primary\", name = \"primary\" }}",
        cluster.primary.port
    );
    for r in &cluster.replicas {
        servers.push_str(&format!(
            ", {{ host = \"127.0.0.1\", port = {}, role = \"replica\", name = \"{}\" }}",
            r.port, r.name
        ));
    }
    format!("[pools.{db}]\nservers = [{servers}]\n{pool}\n{users}\n")
}

/// A pool for `db` whose single user is the trust role, with `pool` lines.
pub fn trust_pool(cluster: &Cluster, db: &str, pool: &str) -> String {
    pool_toml(
        cluster,
        db,
        pool,
        &format!("[pools.{db}.users.{}]\n", roles::TRUST),
    )
}

/// A database of its own on the shared cluster (owned by the trust role) and a Switchyard in
/// front of it: `general` are extra `[general]` lines, `pool` the pool's lines.
pub fn trust_proxy(prefix: &str, general: &str, pool: &str) -> (String, Proxy) {
    let cluster = shared_cluster();
    let db = unique_name(prefix);
    cluster.create_database(&db, roles::TRUST);
    let proxy = Proxy::start(general, &trust_pool(cluster, &db, pool));
    (db, proxy)
}

/// The SQLSTATE of a tokio-postgres error, when the server (or proxy) sent one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}

/// A built routing-policy component, e.g. `plugin("read-write-split")`.
pub fn plugin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/wasm32-wasip2/release/<name>.wasm
    let target = exe
        .parent()
        .and_then(|d| d.parent())
        .and_then(|d| d.parent())
        .expect("target dir");
    let path = target
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    assert!(
        path.exists(),
        "{} not found: run `cargo xtask test`, which builds the plugins first",
        path.display()
    );
    path
}

impl Cluster {
    /// `pgbench -i -s 1` on the primary for `db` (owned by the trust role), then waits until the
    /// replicas have the tables.
    pub fn pgbench_init(&self, db: &str) {
        let out = std::process::Command::new(self.bindir.join("pgbench"))
            .args([
                "-i",
                "-q",
                "-s",
                "1",
                "-h",
                "127.0.0.1",
                "-p",
                &self.primary.port.to_string(),
            ])
            .args(["-U", roles::TRUST, db])
            .output()
            .expect("run pgbench -i");
        assert!(
            out.status.success(),
            "pgbench -i: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.wait_replicas_caught_up();
    }
}

/// Server-side sessions of `db` as seen by the primary: (state, query) for client backends.
pub fn activity(db: &str) -> Vec<(String, String)> {
    let c = shared_cluster();
    let out = c
        .psql(
            c.primary.port,
            "postgres",
            &format!(
                "select state, query from pg_stat_activity where datname = '{db}' and backend_type = 'client backend' and pid <> pg_backend_pid()"
            ),
        )
        .unwrap();
    out.lines()
        .map(|l| {
            let (s, q) = l.split_once('|').unwrap_or((l, ""));
            (s.to_string(), q.to_string())
        })
        .collect()
}

/// The first column of the first row of a simple-protocol result, parsed.
pub fn first_value<T: std::str::FromStr>(
    messages: &[tokio_postgres::SimpleQueryMessage],
) -> Option<T> {
    messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
        _ => None,
    })
}
