//! `cargo xtask bench`: pgbench -S against PostgreSQL directly, through Switchyard and through
//! PgBouncer (Debian's), interleaved, several runs; medians and ratios. Also the proxies' CPU per
//! transaction (utime+stime from /proc) and their RSS per idle client.
//!
//! Environment: BENCH_SECONDS (15), BENCH_RUNS (3), BENCH_CLIENTS ("10,100"),
//! BENCH_MODES ("simple,extended,connect"; `connect` is the simple protocol with a new
//! connection per transaction, `pgbench -C`, as PHP-style applications do), BENCH_IDLE_CLIENTS
//! (1000), BENCH_SERVER_SOCKET ("tcp", or
//! "unix": both proxies reach PostgreSQL by its Unix socket; pgbench always uses TCP),
//! BENCH_REPLICAS (2: streaming replicas behind the "+replicas" target, where
//! `read-write-split` sends the reads to them and `least-outstanding` picks one; 0 leaves that
//! target out), BENCH_BASELINE (another `switchyard` binary, run alongside with the plain
//! config) and BENCH_BASELINE_PLUGINS (a directory with that build's policy components: the
//! baseline then runs them as "+policies" does, for before/after figures of the policy host).

use crate::instructions::{self, Counted};
use crate::{cargo, install, run};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use switchyard_tests::{free_port, roles, Cluster};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.into())
}

/// A process serving pgbench: PostgreSQL itself or a proxy in front of it.
struct Target {
    name: &'static str,
    port: u16,
    /// The proxy process, whose CPU and memory are measured.
    pid: Option<u32>,
}

/// One pgbench run's results.
#[derive(Debug, Clone, Copy)]
struct Sample {
    tps: f64,
    latency_ms: f64,
    cpu_us_per_tx: Option<f64>,
    /// The user-space part of it: the kernel's TCP work is most of the rest, and the same for
    /// every proxy.
    user_us_per_tx: Option<f64>,
}

fn os_uid_gid(user: &str) -> Result<(u32, u32), String> {
    let id = |flag: &str| -> Result<u32, String> {
        let out = Command::new("id")
            .args([flag, user])
            .output()
            .map_err(|e| e.to_string())?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| format!("no OS user {user}"))
    };
    Ok((id("-u")?, id("-g")?))
}

/// utime and stime of a process, in microseconds.
fn cpu_us(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime * 1e6 / hz, stime * 1e6 / hz))
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn pgbench(
    bindir: &Path,
    target: &Target,
    mode: &str,
    clients: u32,
    seconds: u32,
) -> Result<Sample, String> {
    // `connect`: the simple protocol, with a new connection (login) per transaction.
    let (protocol, connect) = match mode {
        "connect" => ("simple", true),
        m => (m, false),
    };
    let cpu0 = target.pid.and_then(cpu_us);
    let out = pgbench_to(bindir, target.port, roles::TRUST)
        .args([
            "-S",
            "-M",
            protocol,
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
        ])
        .args(connect.then_some("-C"))
        .arg("bench")
        .output()
        .map_err(|e| e.to_string())?;
    let cpu1 = target.pid.and_then(cpu_us);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "pgbench via {} failed: {stdout}{}",
            target.name,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let find = |prefix: &str| -> Option<f64> {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    let tx = find("number of transactions actually processed: ").ok_or("no transaction count")?;
    let failed = find("number of failed transactions: ").unwrap_or(0.0);
    if failed > 0.0 {
        return Err(format!("{failed} failed transactions via {}", target.name));
    }
    Ok(Sample {
        tps: find("tps = ").ok_or("no tps")?,
        latency_ms: find("latency average = ").ok_or("no latency")?,
        cpu_us_per_tx: cpu0
            .zip(cpu1)
            .map(|((u0, s0), (u1, s1))| (u1 + s1 - u0 - s0) / tx),
        user_us_per_tx: cpu0.zip(cpu1).map(|((u0, _), (u1, _))| (u1 - u0) / tx),
    })
}

/// pgbench against a loopback port as `user`; the caller adds the workload.
pub fn pgbench_to(bindir: &Path, port: u16, user: &str) -> Command {
    let mut cmd = Command::new(bindir.join("pgbench"));
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", user]);
    cmd
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Logs in `n` clients (trust) and keeps them idle; returns the sockets.
fn idle_clients(port: u16, n: usize) -> Result<Vec<TcpStream>, String> {
    let mut startup = Vec::new();
    let body = format!("user\0{}\0database\0bench\0\0", roles::TRUST);
    startup.extend_from_slice(&((body.len() + 8) as i32).to_be_bytes());
    startup.extend_from_slice(&196608i32.to_be_bytes());
    startup.extend_from_slice(body.as_bytes());
    let mut socks = Vec::with_capacity(n);
    for i in 0..n {
        let mut s =
            TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("client {i}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        s.write_all(&startup).map_err(|e| e.to_string())?;
        // Read until ReadyForQuery ('Z', length 5, status).
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.windows(5).any(|w| w == b"Z\0\0\0\x05") {
            let k = s
                .read(&mut buf)
                .map_err(|e| format!("client {i} login: {e}"))?;
            if k == 0 {
                return Err(format!(
                    "client {i}: closed during login: {:?}",
                    String::from_utf8_lossy(&got)
                ));
            }
            got.extend_from_slice(&buf[..k]);
        }
        socks.push(s);
    }
    Ok(socks)
}

fn raise_fd_limit() {
    // SAFETY: plain getrlimit/setrlimit on our own process.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max.min(65536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts Switchyard with `config`, quiet, killed when dropped.
fn spawn_switchyard(bin: &Path, config: &Path) -> Result<Killed, String> {
    Command::new(bin)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .map(Killed)
        .map_err(|e| e.to_string())
}

pub fn bench() -> Result<(), String> {
    let seconds: u32 = env_or("BENCH_SECONDS", "15")
        .parse()
        .map_err(|_| "BENCH_SECONDS")?;
    let runs: u32 = env_or("BENCH_RUNS", "3")
        .parse()
        .map_err(|_| "BENCH_RUNS")?;
    let idle: usize = env_or("BENCH_IDLE_CLIENTS", "1000")
        .parse()
        .map_err(|_| "BENCH_IDLE_CLIENTS")?;
    let clients: Vec<u32> = env_or("BENCH_CLIENTS", "10,100")
        .split(',')
        .map(|c| c.trim().parse().map_err(|_| "BENCH_CLIENTS"))
        .collect::<Result<_, _>>()?;
    let server_socket = env_or("BENCH_SERVER_SOCKET", "tcp");
    let replicas: usize = env_or("BENCH_REPLICAS", "2")
        .parse()
        .map_err(|_| "BENCH_REPLICAS")?;
    if server_socket != "tcp" && server_socket != "unix" {
        return Err("BENCH_SERVER_SOCKET must be tcp or unix".into());
    }
    let modes: Vec<String> = env_or("BENCH_MODES", "simple,extended,connect")
        .split(',')
        .map(str::to_owned)
        .collect();

    install::postgres()?;
    install::pgbouncer()?;
    crate::build_plugins()?;
    run(cargo().args(["build", "--release", "-p", "switchyard"]))?;
    raise_fd_limit();
    let bin = crate::target_dir().join("release/switchyard");

    eprintln!("bench: starting PostgreSQL");
    let cluster = Cluster::start(replicas)?;
    cluster.create_database("bench", roles::TRUST);
    run(Command::new(cluster.bindir.join("pgbench"))
        .args([
            "-i",
            "-q",
            "-s",
            "10",
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.primary.port.to_string(),
        ])
        .args(["-U", roles::TRUST, "bench"]))?;
    cluster.wait_replicas_caught_up();

    // How the proxies reach PostgreSQL: loopback TCP, or the socket directory.
    let server_host = if server_socket == "unix" {
        cluster.dir.join("sock").display().to_string()
    } else {
        "127.0.0.1".to_string()
    };
    // Switchyard configs: transaction mode, pool of 20, the primary (and the replicas if
    // asked) as servers, then the policies in order.
    let plugin_dir = crate::target_dir().join("wasm32-wasip2/release");
    let policies = ["read_write_split", "least_outstanding"];
    let server = |port: u16, role: &str, name: &str| {
        format!(
            "{{ host = \"{server_host}\", port = {port}, role = \"{role}\", name = \"{name}\" }}"
        )
    };
    let write_config =
        |name: &str, port: u16, with_replicas: bool, policies: &[&str], plugin_dir: &Path| {
            let mut servers = vec![server(cluster.primary.port, "primary", "primary")];
            if with_replicas {
                servers.extend(
                    cluster
                        .replicas
                        .iter()
                        .map(|r| server(r.port, "replica", &r.name)),
                );
            }
            let mut toml = format!(
                "[general]\nlisten_addr = \"127.0.0.1:{port}\"\nmax_client_conn = {}\n\
             [pools.bench]\npool_mode = \"transaction\"\npool_size = 20\nservers = [{}]\n",
                idle + 200,
                servers.join(", ")
            );
            for p in policies {
                let path = plugin_dir.join(format!("{p}.wasm"));
                toml.push_str(&format!(
                    "[[pools.bench.policies]]\nplugin = \"{}\"\n",
                    path.display()
                ));
            }
            toml.push_str(&format!("[pools.bench.users.{}]\n", roles::TRUST));
            let path = cluster.dir.join(format!("bench-{name}.toml"));
            std::fs::write(&path, toml).map_err(|e| e.to_string())?;
            Ok::<_, String>(path)
        };
    let sy_port = free_port();
    let switchyard = spawn_switchyard(
        &bin,
        &write_config("switchyard", sy_port, false, &[], &plugin_dir)?,
    )?;
    // The same with routing policies: read-write-split + least-outstanding (no replica here, so
    // every query still ends on the primary: this measures the policy host's cost).
    let syp_port = free_port();
    let switchyard_policies = spawn_switchyard(
        &bin,
        &write_config(
            "switchyard-policies",
            syp_port,
            false,
            &policies,
            &plugin_dir,
        )?,
    )?;
    // The same policies with the replicas as servers too: reads leave the primary, and each
    // one is a full chain (read-write-split narrows to the replicas, least-outstanding picks).
    let syr_port = free_port();
    let syr = if replicas > 0 {
        let conf = write_config(
            "switchyard-replicas",
            syr_port,
            true,
            &policies,
            &plugin_dir,
        )?;
        Some(spawn_switchyard(&bin, &conf)?)
    } else {
        None
    };
    // BENCH_BASELINE: another switchyard binary (e.g. built from an earlier commit), run with
    // the plain config, or with BENCH_BASELINE_PLUGINS as "+policies" is, for before/after
    // figures from one run.
    let baseline_port = free_port();
    let baseline_plugins = std::env::var("BENCH_BASELINE_PLUGINS").ok();
    let baseline_name = if baseline_plugins.is_some() {
        "baseline+policies"
    } else {
        "switchyard-baseline"
    };
    let baseline = match std::env::var("BENCH_BASELINE") {
        Ok(path) => {
            let conf = match &baseline_plugins {
                Some(dir) => write_config(
                    baseline_name,
                    baseline_port,
                    false,
                    &policies,
                    Path::new(dir),
                )?,
                None => write_config(baseline_name, baseline_port, false, &[], &plugin_dir)?,
            };
            Some(spawn_switchyard(Path::new(&path), &conf)?)
        }
        Err(_) => None,
    };

    // PgBouncer: the same pool, run as the PostgreSQL OS user (it refuses root). It logs no
    // connections, as Switchyard does not by default: otherwise every login in the `connect`
    // mode would cost it two log writes that Switchyard does not make.
    let pgb_port = free_port();
    let pgb_dir = cluster.dir.join("pgbouncer");
    std::fs::create_dir_all(&pgb_dir).map_err(|e| e.to_string())?;
    std::fs::write(
        pgb_dir.join("userlist.txt"),
        format!("\"{}\" \"\"\n", roles::TRUST),
    )
    .map_err(|e| e.to_string())?;
    let pgb_ini = |port: u16, name: &str| {
        let path = pgb_dir.join(format!("{name}.ini"));
        std::fs::write(
            &path,
            format!(
                "[databases]\nbench = host={server_host} port={} dbname=bench\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\nauth_type = trust\n\
                 auth_file = {}\npool_mode = transaction\ndefault_pool_size = 20\nmax_client_conn = {}\n\
                 log_connections = 0\nlog_disconnections = 0\nlogfile = {}\n",
                cluster.primary.port,
                pgb_dir.join("userlist.txt").display(),
                idle + 200,
                pgb_dir.join(format!("{name}.log")).display()
            ),
        )
        .map_err(|e| e.to_string())?;
        Ok::<_, String>(path)
    };
    let pgb_conf = pgb_ini(pgb_port, "pgbouncer")?;
    let (uid, gid) =
        os_uid_gid(&std::env::var("PG_OS_USER").unwrap_or_else(|_| "postgres".into()))?;
    run(Command::new("chown")
        .args(["-R", &format!("{uid}:{gid}")])
        .arg(&pgb_dir))?;
    let pgbouncer = Killed(
        Command::new("pgbouncer")
            .arg(&pgb_conf)
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("pgbouncer: {e}"))?,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ports = vec![sy_port, syp_port, pgb_port];
    if baseline.is_some() {
        ports.push(baseline_port);
    }
    if syr.is_some() {
        ports.push(syr_port);
    }
    for port in ports {
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(format!("nothing listens on {port}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    let mut targets = vec![
        Target {
            name: "postgres",
            port: cluster.primary.port,
            pid: None,
        },
        Target {
            name: "switchyard",
            port: sy_port,
            pid: Some(switchyard.0.id()),
        },
        Target {
            name: "switchyard+policies",
            port: syp_port,
            pid: Some(switchyard_policies.0.id()),
        },
        Target {
            name: "pgbouncer",
            port: pgb_port,
            pid: Some(pgbouncer.0.id()),
        },
    ];
    if let Some(r) = &syr {
        targets.insert(
            3,
            Target {
                name: "switchyard+replicas",
                port: syr_port,
                pid: Some(r.0.id()),
            },
        );
    }
    if let Some(b) = &baseline {
        targets.insert(
            2,
            Target {
                name: baseline_name,
                port: baseline_port,
                pid: Some(b.0.id()),
            },
        );
    }
    // RSS first, while every proxy is fresh: after pgbench, memory the allocator keeps from
    // the runs would absorb the idle clients' and hide their cost.
    let mut rss_rows = Vec::new();
    for t in targets[1..].iter().filter(|_| idle > 0) {
        let pid = t.pid.expect("proxy pid");
        let before = rss_kib(pid).ok_or("no RSS")?;
        let socks = idle_clients(t.port, idle)?;
        std::thread::sleep(Duration::from_millis(500));
        let after = rss_kib(pid).ok_or("no RSS")?;
        drop(socks);
        rss_rows.push(format!(
            "| {} | {before} KiB | {after} KiB | {:.2} KiB |",
            t.name,
            (after as f64 - before as f64) / idle as f64
        ));
        std::thread::sleep(Duration::from_millis(500));
    }
    // Warm up every path once.
    for t in &targets {
        pgbench(&cluster.bindir, t, "simple", 10, 2)?;
    }
    let mut samples: BTreeMap<(String, u32, &str), Vec<Sample>> = BTreeMap::new();
    for r in 1..=runs {
        for mode in &modes {
            for &c in &clients {
                // The order rotates from run to run, so no target always follows the same one
                // (a run right after another leaves the machine in a different state).
                let n = targets.len();
                for t in (0..n).map(|i| &targets[(i + r as usize) % n]) {
                    let s = pgbench(&cluster.bindir, t, mode, c, seconds)?;
                    eprintln!("bench: run {r}/{runs} {mode:8} c={c:<3} {:19} tps {:>9.0}  lat {:.3} ms  cpu/tx {}",
                        t.name, s.tps, s.latency_ms,
                        s.cpu_us_per_tx.zip(s.user_us_per_tx)
                            .map(|(v, u)| format!("{v:.1} µs (user {u:.1})"))
                            .unwrap_or_else(|| "-".into()));
                    samples
                        .entry((mode.clone(), c, t.name))
                        .or_default()
                        .push(s);
                }
            }
        }
    }

    println!("\npgbench -S, -j 2, {seconds} s, {runs} runs interleaved; medians. Pool: transaction mode, 20 server connections; proxies reach PostgreSQL by {server_socket}. switchyard+policies: read-write-split + least-outstanding on a pool with only the primary; switchyard+replicas: the same with {replicas} streaming replicas, which get the reads.\n");
    println!("Ratios are medians of per-run ratios: within a run the targets go back to back, so a slow change of the shared machine's load affects both sides of a ratio alike.\n");
    println!("| mode | clients | target | tps | latency ms | proxy CPU µs/tx | of which user | CPU vs PgBouncer | tps vs direct | tps vs PgBouncer | tps vs switchyard |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for mode in &modes {
        for &c in &clients {
            let med = |name: &str, f: fn(&Sample) -> Option<f64>| {
                median(
                    samples[&(mode.clone(), c, name)]
                        .iter()
                        .filter_map(f)
                        .collect(),
                )
            };
            // Run i of every target is sample i: pair them up. CPU per transaction is paired
            // too: the kernel's share, most of either proxy's CPU, moves with the machine's
            // load, which a ratio cancels.
            let paired = |name: &str, base: &str, f: fn(&Sample) -> Option<f64>| {
                let a = &samples[&(mode.clone(), c, name)];
                let b = &samples[&(mode.clone(), c, base)];
                median(
                    a.iter()
                        .zip(b)
                        .filter_map(|(a, b)| Some(f(a)? / f(b)?))
                        .collect(),
                )
            };
            let ratio = |name: &str, base: &str| paired(name, base, |s| Some(s.tps));
            for t in &targets {
                let tps = med(t.name, |s| Some(s.tps));
                // `-` where there is no figure (PostgreSQL's own CPU is not measured).
                let num = |v: f64, digits: usize| {
                    if v.is_nan() {
                        "-".to_string()
                    } else {
                        format!("{v:.digits$}")
                    }
                };
                println!(
                    "| {mode} | {c} | {} | {tps:.0} | {:.3} | {} | {} | {} | {:.2} | {:.2} | {:.2} |",
                    t.name,
                    med(t.name, |s| Some(s.latency_ms)),
                    num(med(t.name, |s| s.cpu_us_per_tx), 1),
                    num(med(t.name, |s| s.user_us_per_tx), 1),
                    num(paired(t.name, "pgbouncer", |s| s.cpu_us_per_tx), 2),
                    ratio(t.name, "postgres"),
                    ratio(t.name, "pgbouncer"),
                    ratio(t.name, "switchyard"),
                );
            }
        }
    }

    if !rss_rows.is_empty() {
        println!("\nRSS per idle client ({idle} clients logged in and idle, measured before any pgbench run):\n");
        println!("| proxy | RSS before | RSS with clients | per client |");
        println!("|---|---|---|---|");
        for row in &rss_rows {
            println!("{row}");
        }
    }
    drop(switchyard);
    drop(switchyard_policies);
    drop(syr);
    drop(pgbouncer);

    // User-space instructions per transaction (callgrind): steady where CPU time is not.
    if env_or("BENCH_INSTRUCTIONS", "1") != "0" {
        install::valgrind()?;
        // (name, binary, policies, their directory, with the replicas as servers)
        let mut counted = vec![
            (
                "switchyard",
                bin.clone(),
                Vec::new(),
                plugin_dir.clone(),
                false,
            ),
            (
                "switchyard+policies",
                bin.clone(),
                policies.to_vec(),
                plugin_dir.clone(),
                false,
            ),
        ];
        if replicas > 0 {
            counted.push((
                "switchyard+replicas",
                bin.clone(),
                policies.to_vec(),
                plugin_dir.clone(),
                true,
            ));
        }
        if let Ok(path) = std::env::var("BENCH_BASELINE") {
            let (plugins, dir) = match &baseline_plugins {
                Some(dir) => (policies.to_vec(), PathBuf::from(dir)),
                None => (Vec::new(), plugin_dir.clone()),
            };
            counted.push((baseline_name, PathBuf::from(path), plugins, dir, false));
        }
        let mut rows = Vec::new();
        for &c in &clients {
            for (name, program, plugins, dir, with_replicas) in &counted {
                let port = free_port();
                let conf = write_config(
                    &format!("{name}-callgrind"),
                    port,
                    *with_replicas,
                    plugins,
                    dir,
                )?;
                let target = Counted {
                    name,
                    port,
                    command: Box::new(|out: &Path| {
                        let mut cmd = instructions::callgrind(out, program);
                        cmd.arg("--config").arg(&conf).env("RUST_LOG", "warn");
                        cmd
                    }),
                    dir: cluster.dir.clone(),
                };
                let n = instructions::per_transaction(&cluster.bindir, &target, c, roles::TRUST)?;
                eprintln!("bench: callgrind c={c:<3} {name:19} {n:.0} instructions/tx");
                rows.push(format!("| {c} | {name} | {n:.0} |"));
            }
            let port = free_port();
            let conf = pgb_ini(port, "pgbouncer-callgrind")?;
            let target = Counted {
                name: "pgbouncer",
                port,
                command: Box::new(|out: &Path| {
                    let mut cmd = instructions::callgrind(out, Path::new("pgbouncer"));
                    cmd.arg(&conf).uid(uid).gid(gid);
                    cmd
                }),
                dir: pgb_dir.clone(),
            };
            let n = instructions::per_transaction(&cluster.bindir, &target, c, roles::TRUST)?;
            eprintln!("bench: callgrind c={c:<3} pgbouncer           {n:.0} instructions/tx");
            rows.push(format!("| {c} | pgbouncer | {n:.0} |"));
        }
        println!("\nUser-space instructions per transaction (callgrind; pgbench -S, simple protocol; the difference between a {}- and a {}-transaction-per-client run):\n", instructions::SHORT, instructions::LONG);
        println!("| clients | proxy | instructions/tx |");
        println!("|---|---|---|");
        for row in &rows {
            println!("{row}");
        }
    }
    cluster.stop();
    Ok(())
}
