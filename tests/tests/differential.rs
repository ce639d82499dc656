//! Differential test: the same random streams of protocol messages, well-formed and not, sent
//! to PostgreSQL directly and through Switchyard must get the same answers (message types,
//! SQLSTATEs, transaction status and command tags, in order), in session and in transaction
//! mode; in statement mode, the same up to a transaction block, which it refuses.
//!
//! The streams mix simple queries, every extended-protocol message with names that collide,
//! COPY messages in and out of a COPY, function calls, malformed bodies and unknown message
//! types. Several clients run at once on a small pool, so in transaction mode they share
//! server connections: whatever one leaves behind on a server shows up as a difference for the
//! next. That includes session state: settings (also set in a `DO` block), SQL `PREPARE`,
//! temporary tables, `WITH HOLD` cursors and advisory locks,
//! which transaction mode must follow or keep with the client.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_tests::{roles, shared_cluster, trust_proxy};

/// Streams per pool mode (`SWITCHYARD_DIFF_STREAMS` sets another count, and
/// `SWITCHYARD_DIFF_FIRST` the first seed, to explore further), spread over `CLIENTS`
/// concurrent clients (`SWITCHYARD_DIFF_CLIENTS`; 1 replays a failure in order).
const STREAMS: u64 = 400;
const CLIENTS: u64 = 4;
/// `SWITCHYARD_DIFF_DUMP=DIR` writes each stream's bytes to `DIR/seed-N.bin` before it is
/// sent (the login and the closing `Sync`, `ROLLBACK` and `SELECT 42` are not in it).
///
/// Messages per stream: 1 to this many (`SWITCHYARD_DIFF_LONGEST` sets another; the seeds
/// of `FOUND` are streams of the default length).
const LONGEST: u64 = 11;

/// Seeds beyond the usual range whose streams once were answered differently (found by longer
/// runs), replayed every time. 100441: a Close skipped after an error, then a Parse of the
/// same name in the same batch (the name still held its first statement). 506019, 717467:
/// a Parse whose statement name is not UTF-8 (refused with 22021 before its text is read).
///
/// A stream that ran while PostgreSQL itself crashed is run again (see [`CrashWatch`]).
const FOUND: &[u64] = &[100441, 506019, 717467];

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator (SplitMix64), so a failing stream can be replayed by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

const SQL: &[&str] = &[
    "SELECT 1",
    "SELECT $1::int",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SELECT pg_sleep(0.01)",
    "COPY (SELECT 1) TO STDOUT",
    "COPY fz FROM STDIN",
    "COPY fz TO STDOUT",
    "SELEC oops",
    "LISTEN fzchan",
    "NOTIFY fzchan",
    "UNLISTEN *",
    "SET application_name = 'x'",
    "SET LOCAL work_mem = '2MB'",
    "SELECT 1; SELECT 2",
    "BEGIN; SELECT 1",
    "DEALLOCATE s1",
    "DEALLOCATE ALL",
    "SELECT 1/0",
    "",
    "BEGIN READ ONLY",
    "SAVEPOINT a",
    "ROLLBACK TO a",
    "SELECT x FROM fz",
    "INSERT INTO fz VALUES (1)",
    "DISCARD ALL",
    "SELECT generate_series(1, 3)",
    "START TRANSACTION",
    "END",
    "ABORT",
    "begin isolation level serializable",
    "COMMIT AND CHAIN",
    "ROLLBACK AND CHAIN",
    "RELEASE a",
    "SET TRANSACTION READ ONLY",
    "DECLARE c CURSOR FOR SELECT 1",
    "FETCH c",
    "CLOSE c",
    "COMMIT; BEGIN",
    "BEGIN; COMMIT",
    "LOCK TABLE fz",
    "/* c */ BEGIN",
    "PREPARE q AS SELECT 1",
    "EXECUTE q",
    "DEALLOCATE q",
    "CREATE TEMP TABLE tt (x int)",
    "SELECT x FROM tt",
    "DECLARE h CURSOR WITH HOLD FOR SELECT 1",
    "FETCH h",
    "SET work_mem = '3MB'",
    "RESET work_mem",
    "SELECT pg_try_advisory_lock(7)",
    "SHOW work_mem",
    "DO $$ BEGIN PERFORM set_config('work_mem', '5MB', false); END $$",
];
const NAMES: &[&str] = &["", "s1", "s2"];
const PORTALS: &[&str] = &["", "p1"];

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// One random frontend message.
fn random_message(r: &mut Rng) -> Vec<u8> {
    let name = r.pick(NAMES);
    let portal = r.pick(PORTALS);
    let mut body = Vec::new();
    match r.below(100) {
        0..=14 => {
            cstr(&mut body, r.pick(SQL));
            message(b'Q', &body)
        }
        15..=29 => {
            cstr(&mut body, name);
            cstr(&mut body, r.pick(SQL));
            let types = r.below(3) as i16;
            body.extend_from_slice(&types.to_be_bytes());
            for _ in 0..types {
                body.extend_from_slice(&23i32.to_be_bytes());
            }
            message(b'P', &body)
        }
        30..=44 => {
            cstr(&mut body, portal);
            cstr(&mut body, name);
            body.extend_from_slice(&0i16.to_be_bytes());
            let params = r.below(3) as i16;
            body.extend_from_slice(&params.to_be_bytes());
            for _ in 0..params {
                match r.pick(&[&b"1"[..], b"abc", b""]) {
                    b"" => body.extend_from_slice(&(-1i32).to_be_bytes()),
                    v => {
                        body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        body.extend_from_slice(v);
                    }
                }
            }
            body.extend_from_slice(&0i16.to_be_bytes());
            message(b'B', &body)
        }
        45..=54 => {
            cstr(&mut body, portal);
            body.extend_from_slice(&(r.below(2) as i32).to_be_bytes());
            message(b'E', &body)
        }
        55..=61 => {
            body.push(r.pick(b"SPX"));
            cstr(&mut body, r.pick(&[name, portal]));
            message(b'D', &body)
        }
        62..=66 => {
            body.push(r.pick(b"SPZ"));
            cstr(&mut body, r.pick(&[name, portal]));
            message(b'C', &body)
        }
        67..=79 => message(b'S', b""),
        80..=83 => message(b'H', b""),
        84..=87 => message(b'd', b"5\n"),
        88..=90 => message(b'c', b""),
        91..=92 => message(b'f', b"fuzz\0"),
        93..=94 => {
            // A known type whose body is garbage.
            let len = r.below(6);
            let garbage: Vec<u8> = (0..len).map(|_| r.below(256) as u8).collect();
            message(r.pick(b"PBEDCQ"), &garbage)
        }
        95..=96 => {
            // FunctionCall of random() (oid 1598), no arguments.
            message(b'F', &[0, 0, 6, 0x3e, 0, 0, 0, 0, 0, 0])
        }
        _ => message(r.pick(b"AGIJKLMNOTUVWY"), b"x"),
    }
}

/// The complete backend messages in `bytes`, as (type, body).
fn messages(bytes: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        let len = i32::from_be_bytes(rest.get(1..5)?.try_into().ok()?) as usize;
        let body = rest.get(5..len + 1)?;
        let tag = rest[0];
        rest = &rest[len + 1..];
        Some((tag, body))
    })
}

/// What a client got, as comparable text: message types in order, with the SQLSTATE of
/// errors, the transaction status of ReadyForQuery and the command of CommandComplete, and
/// how the stream ended. Rows and COPY data are left out (the shared table grows), and so are
/// notices, parameter changes and notifications.
fn summary(bytes: &[u8], end: &str) -> String {
    let mut out = String::new();
    for (tag, body) in messages(bytes) {
        if matches!(tag, b'N' | b'S' | b'A' | b'K' | b'D' | b'd') {
            continue;
        }
        out.push(tag as char);
        if tag == b'E' {
            let code = body
                .split(|&b| b == 0)
                .find(|f| f.first() == Some(&b'C'))
                .map(|f| String::from_utf8_lossy(&f[1..]).into_owned());
            out.push_str(&code.unwrap_or_default());
        }
        if tag == b'Z' {
            // The transaction status: I, T or E.
            out.push(body.first().copied().unwrap_or(b'?') as char);
        }
        if tag == b'C' {
            // The command, without its row count (the shared table grows).
            let command = body
                .split(|&b| b == b' ' || b == 0)
                .next()
                .unwrap_or_default();
            out.push(':');
            out.push_str(&String::from_utf8_lossy(command));
        }
        out.push(' ');
    }
    out + end
}

/// Logs in as the trust role, up to the first ReadyForQuery. An error says what the server
/// answered (PostgreSQL's own crash shows as 57P02, then 57P03 while it recovers).
fn login(port: u16, db: &str) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    let mut startup = Vec::new();
    startup.extend_from_slice(&196608i32.to_be_bytes());
    for (k, v) in [("user", roles::TRUST), ("database", db)] {
        cstr(&mut startup, k);
        cstr(&mut startup, v);
    }
    startup.push(0);
    let mut packet = ((startup.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend(startup);
    s.write_all(&packet).map_err(|e| format!("startup: {e}"))?;
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Up to the first ReadyForQuery (a 6-byte message at the end of the greeting).
    while !(got.len() >= 6 && got[got.len() - 6] == b'Z') {
        let said = |got: &[u8]| String::from_utf8_lossy(got).into_owned();
        match s.read(&mut chunk) {
            Ok(0) => return Err(format!("closed after {:?}", said(&got))),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("{e} after {:?}", said(&got))),
        }
    }
    Ok(s)
}

/// Logs in as the trust role, sends `stream`, then a Sync, a ROLLBACK and `SELECT 42`, and
/// reads until the 42 has come with its ReadyForQuery, the connection closes, or 5 s pass.
fn run(port: u16, db: &str, stream: &[Vec<u8>]) -> String {
    let mut s = match login(port, db) {
        Ok(s) => s,
        Err(e) => return format!("<login failed: {e}>"),
    };
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut all = stream.concat();
    all.extend(message(b'S', b""));
    all.extend(message(b'Q', b"ROLLBACK\0"));
    all.extend(message(b'Q', b"SELECT 42\0"));
    // The peer may close before reading it all (an unknown message type ends the session).
    let _ = s.write_all(&all);
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let end = loop {
        if answered_42(&got) {
            break "<ok>";
        }
        if Instant::now() > deadline {
            break "<no answer>";
        }
        match s.read(&mut chunk) {
            Ok(0) => break "<closed>",
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break "<closed>",
        }
    };
    let _ = s.write_all(&message(b'X', b""));
    summary(&got, end)
}

/// Whether `got` ends with the answer to `SELECT 42`: its row, CommandComplete and
/// ReadyForQuery, with any notifications, notices or parameter changes in between (another
/// client's `NOTIFY` may arrive there).
fn answered_42(got: &[u8]) -> bool {
    let messages: Vec<(u8, &[u8])> = messages(got)
        .filter(|(tag, _)| !matches!(tag, b'A' | b'N' | b'S'))
        .collect();
    messages.windows(3).any(|w| {
        w[0] == (b'D', &b"\0\x01\0\0\0\x0242"[..])
            && w[1] == (b'C', &b"SELECT 1\0"[..])
            && w[2].0 == b'Z'
    })
}

/// Counts PostgreSQL's own crashes while it lives, from the primary's log: PostgreSQL 15.18
/// crashes now and then on some streams (signal 11, sent directly as well as through
/// Switchyard; every session of the cluster is ended, then logins get 57P03 while it
/// recovers). For instance `BEGIN`, `DISCARD ALL` (refused in a block), `SELECT 1; SELECT 2`
/// (refused, the transaction failed), then an `Execute` of the unnamed portal: the failed
/// Query left that portal behind with parts freed, and the Execute reads freed memory (seed
/// 17006402 at up to 80 messages; others near seeds 28,000,000, 30,000,000 and 31,000,000 at
/// up to 150, 60 and 40). A stream that ran across a crash runs again alone ([`RUNS_ALONE`]).
struct CrashWatch {
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CrashWatch {
    const SIGN: &[u8] = b"terminated by signal";

    fn start(log: std::path::PathBuf) -> CrashWatch {
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, st) = (count.clone(), stop.clone());
        // Only what is written from now on counts (other tests of this binary share the log).
        let mut read = std::fs::metadata(&log).map_or(0, |m| m.len());
        let thread = std::thread::spawn(move || {
            let mut tail = Vec::new();
            while !st.load(Ordering::SeqCst) {
                let mut new = Vec::new();
                if let Ok(mut f) = std::fs::File::open(&log) {
                    use std::io::{Seek, SeekFrom};
                    if f.seek(SeekFrom::Start(read)).is_ok() && f.read_to_end(&mut new).is_ok() {
                        read += new.len() as u64;
                    }
                }
                tail.extend_from_slice(&new);
                let found = tail
                    .windows(Self::SIGN.len())
                    .filter(|w| *w == Self::SIGN)
                    .count();
                c.fetch_add(found as u64, Ordering::SeqCst);
                let keep = tail.len().min(Self::SIGN.len() - 1);
                tail.drain(..tail.len() - keep);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        CrashWatch {
            count,
            stop,
            thread: Some(thread),
        }
    }

    fn crashes(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }
}

impl Drop for CrashWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Streams run under its read lock; one that ran across a crash of PostgreSQL runs again
/// under its write lock, alone (the tests of this binary share the cluster).
static RUNS_ALONE: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Waits (up to a minute) until PostgreSQL takes logins again after a crash.
fn wait_for_recovery(port: u16, db: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while login(port, db).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Statement mode answers as PostgreSQL until a transaction block opens, then refuses it:
/// FATAL `08P01` and the connection closed. Either before it runs (a simple-query `BEGIN`, where
/// PostgreSQL answers `BEGIN`), or when the server reports the block open (`BEGIN` inside a
/// longer string or through the extended protocol: PostgreSQL's next answer is a
/// ReadyForQuery in a block). Whether `through` is that refusal of what got `expected`.
fn refused_block(through: &str, expected: &str) -> bool {
    let Some(before) = through.strip_suffix("E08P01 <closed>") else {
        return false;
    };
    let Some(after) = expected.strip_prefix(before) else {
        return false;
    };
    ["C:BEGIN ", "C:START ", "ZT ", "ZE "]
        .iter()
        .any(|next| after.starts_with(next))
}

fn differential(mode: &str) {
    let statement_mode = mode == "statement";
    let pool = format!("pool_mode = \"{mode}\"\npool_size = 2");
    let (db, proxy) = trust_proxy("diff", "", &pool);
    let cluster = shared_cluster();
    cluster
        .psql(
            cluster.primary.port,
            &db,
            &format!(
                "CREATE TABLE fz (x int); GRANT ALL ON fz TO {}",
                roles::TRUST
            ),
        )
        .expect("create the table");
    let direct = cluster.primary.port;
    let first = env_or("SWITCHYARD_DIFF_FIRST", 0);
    let streams = env_or("SWITCHYARD_DIFF_STREAMS", STREAMS);
    let clients = env_or("SWITCHYARD_DIFF_CLIENTS", CLIENTS);
    let longest = env_or("SWITCHYARD_DIFF_LONGEST", LONGEST);
    let dump = std::env::var("SWITCHYARD_DIFF_DUMP").ok();
    let seeds: Vec<u64> = FOUND
        .iter()
        .copied()
        .chain(first..first + streams)
        .collect();
    let watch = Arc::new(CrashWatch::start(
        cluster.primary.datadir.join("server.log"),
    ));
    let workers: Vec<_> = (0..clients)
        .map(|w| {
            let watch = watch.clone();
            let db = db.clone();
            let port = proxy.port;
            let seeds = seeds.clone();
            let dump = dump.clone();
            std::thread::spawn(move || {
                let mut diffs = Vec::new();
                for &seed in seeds.iter().skip(w as usize).step_by(clients as usize) {
                    let mut r = Rng(seed);
                    let stream: Vec<_> = (0..1 + r.below(longest))
                        .map(|_| random_message(&mut r))
                        .collect();
                    if let Some(dir) = &dump {
                        // For replay by hand, message by message.
                        let _ = std::fs::write(format!("{dir}/seed-{seed}.bin"), stream.concat());
                    }
                    // A run across a crash of PostgreSQL itself is no comparison: the stream
                    // runs again alone once PostgreSQL is back; if it crashes PostgreSQL then
                    // too, it is left out.
                    let (before, mut through, mut expected) = {
                        let _shared = RUNS_ALONE.read().unwrap_or_else(|e| e.into_inner());
                        let before = watch.crashes();
                        let through = run(port, &db, &stream);
                        let expected = run(direct, &db, &stream);
                        if through != expected {
                            // The log line of a crash may come a little after its effects.
                            std::thread::sleep(Duration::from_millis(300));
                        }
                        (before, through, expected)
                    };
                    if watch.crashes() != before {
                        let _alone = RUNS_ALONE.write().unwrap_or_else(|e| e.into_inner());
                        wait_for_recovery(direct, &db);
                        let before = watch.crashes();
                        through = run(port, &db, &stream);
                        expected = run(direct, &db, &stream);
                        std::thread::sleep(Duration::from_millis(300));
                        if watch.crashes() != before {
                            eprintln!("seed {seed}: PostgreSQL crashes under it; left out");
                            wait_for_recovery(direct, &db);
                            continue;
                        }
                    }
                    if through != expected && !(statement_mode && refused_block(&through, &expected)) {
                        let sent: Vec<String> = stream
                            .iter()
                            .map(|m| format!("{}{:?}", m[0] as char, String::from_utf8_lossy(&m[5..])))
                            .collect();
                        diffs.push(format!(
                            "seed {seed}:\n  sent:       {}\n  switchyard: {through}\n  postgresql: {expected}",
                            sent.join(" ")
                        ));
                    }
                }
                diffs
            })
        })
        .collect();
    let diffs: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("worker"))
        .collect();
    assert!(
        diffs.is_empty(),
        "{} of {} streams were answered differently ({mode} mode):\n{}",
        diffs.len(),
        seeds.len(),
        diffs.join("\n")
    );
}

#[test]
fn random_message_streams_get_postgresqls_answers_in_transaction_mode() {
    differential("transaction");
}

#[test]
fn random_message_streams_get_postgresqls_answers_in_session_mode() {
    differential("session");
}

#[test]
fn random_message_streams_get_postgresqls_answers_in_statement_mode_until_a_block_opens() {
    differential("statement");
}
