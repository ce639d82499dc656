//! User-space instructions per transaction of a proxy, counted by callgrind.
//!
//! CPU time per transaction on a shared machine moves by 10–30 % from run to run; the number of
//! instructions a proxy executes per transaction barely moves (within 1 % here), so it is the
//! figure to compare builds by when a change touches the query path. It counts user space only:
//! the kernel's TCP work, about 85 % of a proxy's CPU, is the same for every proxy.
//!
//! Method: the proxy runs under `valgrind --tool=callgrind` twice, serving `pgbench -S -t`
//! with the same clients, once with few and once with many transactions per client; the
//! difference of the two totals over the difference of the transaction counts leaves out start,
//! logins, warm-up and exit. Valgrind runs the proxy on one host thread, so batching differs
//! from a real run: read the figures as a comparison between proxies and builds.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Transactions per client in the short and in the long run.
pub const SHORT: u32 = 200;
pub const LONG: u32 = 1200;

/// A proxy to count: how to start it with callgrind writing to a given file, and its port.
pub struct Counted<'a> {
    pub name: &'a str,
    pub port: u16,
    /// The whole command line (see [`callgrind`]) for a given callgrind output file.
    pub command: Box<dyn Fn(&Path) -> Command + 'a>,
    /// Where the callgrind output files go (writable by the proxy's OS user).
    pub dir: PathBuf,
}

/// The callgrind command line for `program`, writing its counts to `out`.
pub fn callgrind(out: &Path, program: &Path) -> Command {
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(program);
    cmd
}

/// Instructions per transaction for `clients` pgbench clients (simple protocol, `-S`).
pub fn per_transaction(
    bindir: &Path,
    target: &Counted<'_>,
    clients: u32,
    user: &str,
) -> Result<f64, String> {
    let mut totals = Vec::new();
    for per_client in [SHORT, LONG] {
        let out = target.dir.join(format!(
            "callgrind-{}-{clients}-{per_client}.out",
            target.name
        ));
        let _ = std::fs::remove_file(&out);
        let mut child = (target.command)(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("valgrind for {}: {e}", target.name))?;
        let result = run_pgbench(bindir, target, clients, per_client, user);
        // SIGTERM: both proxies exit cleanly on it, and callgrind writes its counts at exit.
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().map_err(|e| e.to_string())?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} did not exit under valgrind", target.name));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        result?;
        totals.push(total_instructions(&out)?);
    }
    let tx = f64::from(clients * (LONG - SHORT));
    Ok((totals[1] as f64 - totals[0] as f64) / tx)
}

fn run_pgbench(
    bindir: &Path,
    target: &Counted<'_>,
    clients: u32,
    per_client: u32,
    user: &str,
) -> Result<(), String> {
    // Under valgrind a start (policies compiled by Cranelift) takes tens of seconds.
    let deadline = Instant::now() + Duration::from_secs(180);
    while std::net::TcpStream::connect(("127.0.0.1", target.port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("{} under valgrind never listened", target.name));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = crate::bench::pgbench_to(bindir, target.port, user)
        .args(["-n", "-S", "-M", "simple", "-j", "2"])
        .args(["-c", &clients.to_string(), "-t", &per_client.to_string()])
        .arg("bench")
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let want = format!("actually processed: {}/", clients * per_client);
    if !out.status.success() || !stdout.contains(&want) {
        return Err(format!(
            "pgbench via {} under valgrind: {stdout}{}",
            target.name,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// The `totals:` line of a callgrind output file.
fn total_instructions(out: &Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(out).map_err(|e| format!("{}: {e}", out.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("totals: "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("{}: no totals line", out.display()))
}
