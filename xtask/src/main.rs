//! The project's two commands for a newcomer, plus the benchmark:
//!
//! * `cargo xtask demo`  — a real primary + 2 streaming replicas and Switchyard in front on
//!   127.0.0.1:6432, until Ctrl-C.
//! * `cargo xtask test`  — everything CI runs: formatting, lints, unit and integration tests.
//!
//! Both install what is missing (PostgreSQL from Debian) and are safe to run again.
//! `cargo xtask bench` (or `bench/pgbench.sh`) compares Switchyard with PostgreSQL and PgBouncer.

mod bench;
mod install;
mod instructions;

use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use switchyard_tests::{pool_toml, roles, Cluster};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo(),
        Some("test") => test(&args[1..]),
        Some("bench") => bench::bench(),
        _ => {
            eprintln!("usage: cargo xtask <demo|test|bench> [test args...]");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {status}"))
    }
}

/// The routing-policy components: built for wasm32-wasip2 (cargo cannot build them as
/// ordinary dependencies of the proxy).
pub const PLUGINS: [&str; 5] = [
    "read-write-split",
    "least-outstanding",
    "round-robin",
    "random",
    "weighted",
];

/// Misbehaving policies the tests load (tests/fixtures).
const FIXTURES: [&str; 2] = ["evil-policy", "forbidden-policy"];

pub fn build_plugins() -> Result<(), String> {
    install::wasm_target()?;
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--target", "wasm32-wasip2"]);
    for p in PLUGINS.iter().chain(FIXTURES.iter()) {
        cmd.args(["-p", p]);
    }
    run(&mut cmd)
}

/// Formatting, lints, then every test in the workspace against real PostgreSQL.
fn test(extra: &[String]) -> Result<(), String> {
    install::postgres()?;
    build_plugins()?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The integration tests run the real binary; build it first.
    run(cargo().args(["build", "-p", "switchyard"]))?;
    run(cargo().args(["test", "--workspace"]).args(extra))
}

/// Cargo's target directory: the one this xtask binary was built into (`target/debug/xtask`),
/// so `CARGO_TARGET_DIR` and a checkout that moved are followed, unlike a compile-time path.
pub fn target_dir() -> std::path::PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// A built policy component.
fn wasm(name: &str) -> std::path::PathBuf {
    target_dir()
        .join("wasm32-wasip2/release")
        .join(format!("{name}.wasm"))
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Primary + 2 replicas + Switchyard on 127.0.0.1:6432, until Ctrl-C.
fn demo() -> Result<(), String> {
    install::postgres()?;
    build_plugins()?;
    run(cargo().args(["build", "--release", "-p", "switchyard"]))?;
    let bin = target_dir().join("release/switchyard");
    if std::net::TcpListener::bind("127.0.0.1:6432").is_err() {
        return Err(
            "127.0.0.1:6432 is in use: stop whatever listens there (an earlier demo?)".into(),
        );
    }
    eprintln!("xtask: starting a PostgreSQL primary and 2 streaming replicas...");
    let cluster = Cluster::start(2)?;
    cluster
        .psql(
            cluster.primary.port,
            "postgres",
            &format!("CREATE DATABASE demo OWNER {}", roles::TRUST),
        )
        .map_err(|e| format!("create demo database: {e}"))?;
    let config = format!(
        "# Written by `cargo xtask demo`; see examples/switchyard.toml for every key.\n\
         [general]\nlisten_addr = \"127.0.0.1:6432\"\nmetrics_addr = \"127.0.0.1:9127\"\n\
         shutdown_timeout_ms = 5000\n\n{}\n\
         [admin.users.admin]\npassword = \"admin\"\n",
        pool_toml(
            &cluster,
            "demo",
            "pool_mode = \"transaction\"\npool_size = 20",
            &format!(
                "[[pools.demo.policies]]\nplugin = \"{}\"\n\
                 [[pools.demo.policies]]\nplugin = \"{}\"\n\
                 [pools.demo.users.demo]\npassword = \"demo\"\nserver_user = \"{}\"\n",
                wasm("read_write_split").display(),
                wasm("least_outstanding").display(),
                roles::TRUST
            ),
        )
    );
    let config_path = cluster.dir.join("switchyard.toml");
    std::fs::write(&config_path, config).map_err(|e| e.to_string())?;

    // SAFETY: installs a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let mut child = Command::new(&bin)
        .arg("--config")
        .arg(&config_path)
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    std::thread::sleep(Duration::from_millis(300));
    let ports: Vec<String> = cluster
        .replicas
        .iter()
        .map(|r| r.port.to_string())
        .collect();
    println!(
        "\nSwitchyard is running in front of a primary (127.0.0.1:{}) and 2 streaming replicas (ports {}).\n\
         Config: {}\n\nConnect with:\n\n    psql \"host=127.0.0.1 port=6432 user=demo password=demo dbname=demo\"\n\n\
         Try: pgbench -i -h 127.0.0.1 -p {} -U {} demo, then pgbench -h 127.0.0.1 -p 6432 -U demo -S -c 10 -T 10 demo\n\
         (password demo). The admin console (password admin; SHOW HELP lists its commands):\n\n\
             psql \"host=127.0.0.1 port=6432 user=admin password=admin dbname=switchyard\" -c 'SHOW POOLS'\n\n\
         Prometheus metrics: curl http://127.0.0.1:9127/metrics\n\n\
         To swap the routing policies live, edit the config and run RELOAD there, or: kill -HUP {}\n\
         Press Ctrl-C to stop everything.\n",
        cluster.primary.port,
        ports.join(", "),
        config_path.display(),
        cluster.primary.port,
        roles::TRUST,
        child.id(),
    );
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!("xtask: switchyard exited ({status}); stopping PostgreSQL");
            break;
        }
        if STOP.load(Ordering::SeqCst) {
            // SAFETY: signal to our own child process.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGINT);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("xtask: stopped switchyard; stopping PostgreSQL");
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.stop();
    Ok(())
}
