//! Installing what the commands need, when it is missing: the PostgreSQL server binaries (Debian
//! package `postgresql`) and the OS user they run as. Safe to run again: nothing is done twice.

use std::path::Path;
use std::process::Command;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn sh(cmd: &mut Command) -> Result<(), String> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| format!("{cmd:?} failed: {status}"))
}

/// Makes sure PostgreSQL server binaries and the `postgres` OS user exist.
pub fn postgres() -> Result<(), String> {
    if switchyard_tests::find_bindir().is_none() {
        if !is_root() {
            return Err(
                "PostgreSQL server binaries not found: install the Debian package `postgresql` \
                        (sudo apt-get install postgresql), or set PGBIN to their directory"
                    .into(),
            );
        }
        // The package would otherwise create and start a cluster on port 5432 we do not need.
        let conf = Path::new("/etc/postgresql-common/createcluster.conf");
        if !conf.exists() {
            std::fs::create_dir_all("/etc/postgresql-common").map_err(|e| e.to_string())?;
            std::fs::write(conf, "create_main_cluster = false\n").map_err(|e| e.to_string())?;
        }
        sh(Command::new("apt-get").arg("update"))?;
        sh(Command::new("apt-get")
            .args([
                "install",
                "-y",
                "--no-install-recommends",
                "postgresql",
                "postgresql-contrib",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        if switchyard_tests::find_bindir().is_none() {
            return Err(
                "installed `postgresql`, but found no server binaries under /usr/lib/postgresql"
                    .into(),
            );
        }
    }
    if is_root() {
        let user = std::env::var("PG_OS_USER").unwrap_or_else(|_| "postgres".into());
        let exists = Command::new("id")
            .arg(&user)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !exists {
            sh(Command::new("useradd").args(["--system", "--no-create-home", &user]))?;
        }
    }
    Ok(())
}

/// Makes sure PgBouncer (Debian's) is there, for the benchmark.
pub fn pgbouncer() -> Result<(), String> {
    debian_tool("pgbouncer", "pgbouncer")
}

/// Makes sure valgrind is installed (the benchmark counts instructions with callgrind).
pub fn valgrind() -> Result<(), String> {
    debian_tool("valgrind", "valgrind")
}

/// Installs Debian's `package` unless `command` is already on the PATH.
fn debian_tool(command: &str, package: &str) -> Result<(), String> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {command}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if found {
        return Ok(());
    }
    if !is_root() {
        return Err(format!(
            "{command} not found: install the Debian package `{package}`"
        ));
    }
    sh(Command::new("apt-get").arg("update"))?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", package])
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Makes sure the `wasm32-wasip2` Rust target is installed (policies are built for it).
pub fn wasm_target() -> Result<(), String> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == "wasm32-wasip2")
        })
        .unwrap_or(false);
    if installed {
        return Ok(());
    }
    sh(Command::new("rustup").args(["target", "add", "wasm32-wasip2"]))
}
