//! A throwaway PostgreSQL primary with streaming replicas on loopback.

use crate::roles;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// One PostgreSQL server of a cluster.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub port: u16,
    pub datadir: PathBuf,
}

/// A primary and its streaming replicas, removed when stopped.
#[derive(Debug)]
pub struct Cluster {
    pub dir: PathBuf,
    pub bindir: PathBuf,
    pub primary: Node,
    pub replicas: Vec<Node>,
    stopped: AtomicBool,
}

/// Where the PostgreSQL server binaries are: `$PGBIN`, the newest /usr/lib/postgresql/*/bin, or
/// `pg_config --bindir`.
pub fn find_bindir() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("PGBIN") {
        return Some(PathBuf::from(p));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    let bin = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    bin.join("initdb").exists().then_some(bin)
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The OS user PostgreSQL runs as when we are root (it refuses to run as root).
fn os_user() -> String {
    std::env::var("PG_OS_USER").unwrap_or_else(|_| "postgres".into())
}

fn run(cmd: &mut Command) -> Result<Output, String> {
    let desc = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{desc}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{desc} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out)
}

impl Cluster {
    /// A command for a PostgreSQL server binary, run as the PostgreSQL OS user when root.
    fn server_cmd(&self, bin: &str) -> Command {
        server_cmd(&self.bindir, bin)
    }

    /// Initialises and starts a primary and `replicas` streaming replicas; waits for streaming.
    pub fn start(replicas: usize) -> Result<Cluster, String> {
        let bindir = find_bindir().ok_or(
            "PostgreSQL server binaries not found (install the Debian package `postgresql`, or set PGBIN)",
        )?;
        let dir = tempfile::Builder::new()
            .prefix("switchyard-pg-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        let mut cluster = Cluster {
            dir: dir.clone(),
            bindir,
            primary: Node {
                name: "primary".into(),
                port: free_port(),
                datadir: dir.join("primary"),
            },
            replicas: Vec::new(),
            stopped: AtomicBool::new(false),
        };
        let r = cluster.init(replicas);
        if let Err(e) = r {
            let logs = cluster.logs();
            cluster.stop();
            return Err(format!("{e}\n--- server logs ---\n{logs}"));
        }
        cluster.stop_when_orphaned();
        Ok(cluster)
    }

    /// Stops the cluster when this process dies without running its exit hooks (killed by a
    /// signal: Ctrl-C on a hanging test, a CI timeout). PostgreSQL runs in a session of its
    /// own, so nothing else would stop it. A small shell loop, in a process group of its own
    /// so that the same Ctrl-C does not end it, looks for this process once a second; when it
    /// is gone, it stops the nodes and removes the directory. After a normal exit it finds
    /// nothing left to do. It watches for at most 24 hours.
    fn stop_when_orphaned(&self) {
        use std::os::unix::process::CommandExt;
        let pg_ctl = self.bindir.join("pg_ctl");
        let pg_ctl = if is_root() {
            format!("runuser -u '{}' -- '{}'", os_user(), pg_ctl.display())
        } else {
            format!("'{}'", pg_ctl.display())
        };
        let mut script = String::from(
            "i=0; while kill -0 \"$0\" 2>/dev/null; do \
             [ $i -ge 86400 ] && exit 0; sleep 1; i=$((i+1)); done; ",
        );
        for n in self.nodes().collect::<Vec<_>>().into_iter().rev() {
            let d = n.datadir.display();
            script.push_str(&format!(
                "[ -f '{d}/postmaster.pid' ] && {pg_ctl} -D '{d}' -m immediate -w -t 30 stop; "
            ));
        }
        script.push_str(&format!("rm -rf '{}'", self.dir.display()));
        let spawned = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        if let Err(e) = spawned {
            eprintln!("cannot watch for this process's end to stop the test cluster: {e}");
        }
    }

    fn init(&mut self, replicas: usize) -> Result<(), String> {
        std::fs::create_dir_all(self.dir.join("sock")).map_err(|e| e.to_string())?;
        if is_root() {
            run(Command::new("chown")
                .arg("-R")
                .arg(os_user())
                .arg(&self.dir))?;
        }
        run(self
            .server_cmd("initdb")
            .arg("-D")
            .arg(&self.primary.datadir)
            .args([
                "-U",
                roles::ADMIN,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]))?;
        let conf = format!(
            "\n# switchyard test harness\nlisten_addresses = '127.0.0.1'\nport = {}\n\
             unix_socket_directories = '{}'\nmax_connections = 300\nshared_buffers = 64MB\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nwal_level = replica\n\
             max_wal_senders = 10\nhot_standby = on\nwal_keep_size = 256MB\n\
             log_min_messages = warning\ncluster_name = 'primary'\n",
            self.primary.port,
            self.dir.join("sock").display()
        );
        append(&self.primary.datadir.join("postgresql.conf"), &conf)?;
        std::fs::write(
            self.primary.datadir.join("pg_hba.conf"),
            format!(
                "local all all trust\nhost replication {a} 127.0.0.1/32 trust\n\
                 host all {a} 127.0.0.1/32 trust\nhost all {t} 127.0.0.1/32 trust\n\
                 host all {m} 127.0.0.1/32 md5\nhost all {s} 127.0.0.1/32 scram-sha-256\n",
                a = roles::ADMIN,
                t = roles::TRUST,
                m = roles::MD5,
                s = roles::SCRAM
            ),
        )
        .map_err(|e| e.to_string())?;
        self.start_node(&self.primary.clone())?;
        self.psql(
            self.primary.port,
            "postgres",
            &format!(
                "CREATE ROLE {t} LOGIN CREATEDB;\n\
                 SET password_encryption = 'md5';\n\
                 CREATE ROLE {m} LOGIN CREATEDB PASSWORD '{mp}';\n\
                 SET password_encryption = 'scram-sha-256';\n\
                 CREATE ROLE {s} LOGIN CREATEDB PASSWORD '{sp}';\n\
                 GRANT pg_read_all_data, pg_write_all_data, pg_signal_backend TO {t}, {m}, {s};",
                t = roles::TRUST,
                m = roles::MD5,
                mp = roles::MD5_PASSWORD,
                s = roles::SCRAM,
                sp = roles::SCRAM_PASSWORD
            ),
        )?;
        for i in 1..=replicas {
            let node = Node {
                name: format!("replica{i}"),
                port: free_port(),
                datadir: self.dir.join(format!("replica{i}")),
            };
            run(self
                .server_cmd("pg_basebackup")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.primary.port.to_string(),
                    "-U",
                    roles::ADMIN,
                ])
                .arg("-D")
                .arg(&node.datadir)
                .args(["-R", "-X", "stream", "-c", "fast"]))?;
            append(
                &node.datadir.join("postgresql.conf"),
                &format!("\nport = {}\ncluster_name = '{}'\n", node.port, node.name),
            )?;
            self.start_node(&node)?;
            self.replicas.push(node);
        }
        self.wait_streaming(replicas)
    }

    /// Starts a stopped node; it accepts connections when this returns.
    pub fn start_node(&self, node: &Node) -> Result<(), String> {
        self.pg_ctl(node, &["-w", "-t", "60", "start"])
    }

    /// Stops a node with `pg_ctl stop -m fast` (its sessions end with FATAL `57P01`); it
    /// refuses connections until [`Cluster::start_node`].
    pub fn stop_node(&self, node: &Node) -> Result<(), String> {
        self.pg_ctl(node, &["-m", "fast", "-w", "-t", "60", "stop"])
    }

    /// Restarts a node with `pg_ctl restart -m fast`: its sessions are ended with FATAL
    /// `57P01`, as by an operator's restart, and it is back when this returns.
    pub fn restart_node(&self, node: &Node) -> Result<(), String> {
        self.pg_ctl(node, &["-m", "fast", "-w", "-t", "60", "restart"])
    }

    /// Runs `pg_ctl` on a node, logging to its `server.log`.
    fn pg_ctl(&self, node: &Node, args: &[&str]) -> Result<(), String> {
        run(self
            .server_cmd("pg_ctl")
            .arg("-D")
            .arg(&node.datadir)
            .arg("-l")
            .arg(node.datadir.join("server.log"))
            .args(args))
        .map(|_| ())
    }

    fn wait_streaming(&self, want: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n: usize = self
                .psql(
                    self.primary.port,
                    "postgres",
                    "select count(*) from pg_stat_replication where state = 'streaming'",
                )
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            if n >= want {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("only {n}/{want} replicas streaming after 60 s"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs SQL with psql as the superuser on `port`; returns unaligned, tuples-only output.
    pub fn psql(&self, port: u16, db: &str, sql: &str) -> Result<String, String> {
        let out = run(Command::new(self.bindir.join("psql"))
            .args([
                "-X",
                "-q",
                "-At",
                "-h",
                "127.0.0.1",
                "-U",
                roles::ADMIN,
                "-v",
                "ON_ERROR_STOP=1",
            ])
            .args(["-p", &port.to_string(), "-d", db, "-c", sql]))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates a database owned by `owner` on the primary and waits until every replica has it.
    pub fn create_database(&self, name: &str, owner: &str) {
        self.psql(
            self.primary.port,
            "postgres",
            &format!("CREATE DATABASE {name} OWNER {owner}"),
        )
        .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        self.wait_replicas_caught_up();
    }

    /// Waits until every replica has replayed everything the primary has written so far.
    pub fn wait_replicas_caught_up(&self) {
        let lsn = self
            .psql(self.primary.port, "postgres", "select pg_current_wal_lsn()")
            .expect("read primary LSN");
        let lsn = lsn.trim();
        let deadline = Instant::now() + Duration::from_secs(30);
        for r in &self.replicas {
            loop {
                let done = self
                    .psql(
                        r.port,
                        "postgres",
                        &format!("select pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"),
                    )
                    .map(|s| s.trim() == "t")
                    .unwrap_or(false);
                if done {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "replica {} did not catch up",
                    r.name
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// All nodes, primary first.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        std::iter::once(&self.primary).chain(self.replicas.iter())
    }

    /// The tail of every node's server log, for failure reports.
    pub fn logs(&self) -> String {
        self.nodes()
            .map(|n| {
                let log = std::fs::read_to_string(n.datadir.join("server.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                format!(
                    "[{}]\n{}\n",
                    n.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect()
    }

    /// Stops every node (replicas first) and removes the directory. Safe to call twice.
    pub fn stop(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        for n in self.nodes().collect::<Vec<_>>().into_iter().rev() {
            if n.datadir.join("postmaster.pid").exists() {
                let _ = self
                    .server_cmd("pg_ctl")
                    .arg("-D")
                    .arg(&n.datadir)
                    .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn server_cmd(bindir: &Path, bin: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", &os_user(), "--"]).arg(bindir.join(bin));
        c
    } else {
        Command::new(bindir.join(bin))
    }
}

fn append(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("{}: {e}", path.display()))
}
