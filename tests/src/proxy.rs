//! A `switchyard` process under test.

use crate::cluster::free_port;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The `switchyard` binary: `$SWITCHYARD_BIN`, or the one cargo built next to this test binary.
pub fn switchyard_binary() -> PathBuf {
    if let Ok(p) = std::env::var("SWITCHYARD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/switchyard
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = profile_dir.join("switchyard");
    assert!(
        bin.exists(),
        "{} not found: run `cargo xtask test` (or `cargo build -p switchyard` first)",
        bin.display()
    );
    bin
}

/// Names a proxy's temporary directory, before the test process's pid.
const DIR_PREFIX: &str = "switchyard-proxy-";

/// Removes, once per test process, the proxy directories that test processes now gone left
/// behind: a killed process runs no `Drop`, and its proxies die with it (`PR_SET_PDEATHSIG`)
/// but not their config and log files.
fn sweep_dirs_of_killed_runs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix(DIR_PREFIX))
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    });
}

/// A running Switchyard, killed when dropped.
pub struct Proxy {
    child: Child,
    pub port: u16,
    pub config_path: PathBuf,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts Switchyard on a free port. `general` is extra `[general]` lines; `rest` is the
    /// `[pools...]` tables.
    pub fn start(general: &str, rest: &str) -> Proxy {
        Proxy::start_at(free_port(), general, rest)
    }

    /// [`Proxy::start`] on `port` (another proxy may be draining there).
    pub fn start_at(port: u16, general: &str, rest: &str) -> Proxy {
        sweep_dirs_of_killed_runs();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir()
            .expect("tempdir");
        let config_path = dir.path().join("switchyard.toml");
        let log_path = dir.path().join("switchyard.log");
        let config = format!(
            "[general]\nlisten_addr = \"127.0.0.1:{port}\"\nworker_threads = 2\n{general}\n{rest}"
        );
        std::fs::write(&config_path, config).expect("write config");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut command = Command::new(switchyard_binary());
        // Dropping the `Proxy` kills it; this kills it also when the test process is killed
        // (Ctrl-C on a hanging test, a CI timeout) and no `Drop` runs. The signal comes when
        // the spawning thread ends: a test's own thread, which outlives its `Proxy`.
        // SAFETY: `prctl` is async-signal-safe and touches nothing of this process's state.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .arg("--config")
            .arg(&config_path)
            .env(
                "RUST_LOG",
                std::env::var("SWITCHYARD_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn switchyard");
        let mut proxy = Proxy {
            child,
            port,
            config_path,
            log_path,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!("switchyard exited with {status}:\n{}", proxy.log());
            }
            assert!(
                Instant::now() < deadline,
                "switchyard did not listen:\n{}",
                proxy.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        proxy
    }

    /// A libpq-style connection string for `user` / `database` through the proxy.
    pub fn conn_str(&self, user: &str, password: Option<&str>, database: &str) -> String {
        let mut s = format!(
            "host=127.0.0.1 port={} user={user} dbname={database}",
            self.port
        );
        if let Some(p) = password {
            s.push_str(&format!(" password={p}"));
        }
        s
    }

    /// Connects with tokio-postgres and drives the connection in a task.
    pub async fn connect(
        &self,
        user: &str,
        password: Option<&str>,
        database: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::connect(
            &self.conn_str(user, password, database),
            tokio_postgres::NoTls,
        )
        .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// `clients` clients of `db` (the trust role) at once, each running `queries` pairs of
    /// statements whose answers are values of its own, and checking them: a pool that handed
    /// out a connection with an answer still owed to someone else fails it.
    pub async fn each_gets_its_own_answers(&self, db: &str, clients: i32, queries: i32) {
        let mut tasks = Vec::new();
        for i in 0..clients {
            let client = self.connect(crate::roles::TRUST, None, db).await.unwrap();
            tasks.push(tokio::spawn(async move {
                for j in 0..queries {
                    let v = i * 1000 + j;
                    let got: i32 = client
                        .query_one(&format!("SELECT {v}::int"), &[])
                        .await
                        .unwrap()
                        .get(0);
                    assert_eq!(got, v);
                    let got: i32 = client
                        .query_one("SELECT $1::int", &[&v])
                        .await
                        .unwrap()
                        .get(0);
                    assert_eq!(got, v);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }

    /// How many times each of the proxy's threads has gone to sleep (voluntary context
    /// switches) so far, by thread name (the kernel keeps 15 characters of it).
    pub fn wakeups(&self) -> Vec<(String, u64)> {
        let dir = format!("/proc/{}/task", self.pid());
        let tasks = std::fs::read_dir(dir).expect("the proxy's threads");
        tasks
            .filter_map(|t| {
                let path = t.ok()?.path();
                let name = std::fs::read_to_string(path.join("comm")).ok()?;
                let status = std::fs::read_to_string(path.join("status")).ok()?;
                let n = status
                    .lines()
                    .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
                    .trim()
                    .parse()
                    .ok()?;
                Some((name.trim().to_string(), n))
            })
            .collect()
    }

    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the proxy.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill with our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs pgbench through the proxy as the trust role and returns (processed, failed)
    /// transactions; a pgbench that fails shows its output and the proxy's log.
    pub fn pgbench(&self, db: &str, args: &[&str]) -> (u64, u64) {
        let c = crate::shared_cluster();
        let out = Command::new(c.bindir.join("pgbench"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U"])
            .arg(crate::roles::TRUST)
            .args(args)
            .arg(db)
            .output()
            .expect("run pgbench");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "pgbench {args:?} failed:\n{stdout}\n{stderr}\n{}",
            self.log()
        );
        let number = |label: &str| -> u64 {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(label))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.split('/').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no '{label}' in pgbench output:\n{stdout}"))
        };
        (
            number("number of transactions actually processed: "),
            number("number of failed transactions: "),
        )
    }

    /// Runs `sql` with psql through the proxy (unaligned, tuples only, stop at the first
    /// error): (success, stdout, stderr, where psql prints notices and errors).
    pub fn psql(
        &self,
        user: &str,
        password: Option<&str>,
        db: &str,
        sql: &str,
    ) -> (bool, String, String) {
        let mut psql = Command::new(crate::shared_cluster().bindir.join("psql"));
        psql.args(["-X", "-At", "-h", "127.0.0.1", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                user,
                "-d",
                db,
                "-c",
                sql,
            ]);
        if let Some(p) = password {
            psql.env("PGPASSWORD", p);
        }
        let out = psql.output().expect("run psql");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Rewrites the config file's pools (everything from the first `[pools.` on) with `pools`,
    /// sends `SIGHUP`, and waits until the log shows `expect` once more (the reload's outcome);
    /// returns the log.
    pub fn reload(&self, pools: &str, expect: &str) -> String {
        let config = std::fs::read_to_string(&self.config_path).expect("read config");
        let general = &config[..config.find("[pools.").expect("a pool")];
        let before = self.log().matches(expect).count();
        std::fs::write(&self.config_path, format!("{general}{pools}")).expect("write config");
        self.signal(libc::SIGHUP);
        self.logged(expect, before + 1)
    }

    /// Waits (up to 20 s) until the log has `expect` `times` times, and returns it.
    pub fn logged(&self, expect: &str, times: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.log();
            if log.matches(expect).count() >= times {
                return log;
            }
            assert!(Instant::now() < deadline, "no \"{expect}\" in:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the proxy logged so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
