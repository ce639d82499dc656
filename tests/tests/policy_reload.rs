//! Live swap of routing policies: `SIGHUP` reloads them from the config file while clients
//! run, against a real primary and two streaming replicas. Where each statement ran is proven
//! server-side with `inet_server_port()`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchyard_tests::{plugin, pool_toml, roles, shared_cluster, unique_name, Proxy};

/// The pool's config text with `policies` (plugin name, config) in order.
fn pool_with(db: &str, policies: &[(&str, &str)]) -> String {
    let mut pool = "pool_mode = \"transaction\"\npool_size = 6\n".to_string();
    for (name, config) in policies {
        pool.push_str(&format!(
            "[[pools.{db}.policies]]\nplugin = \"{}\"\nconfig = {config}\n",
            plugin(name).display()
        ));
    }
    pool_toml(
        shared_cluster(),
        db,
        &pool,
        &format!("[pools.{db}.users.{}]\n", roles::TRUST),
    )
}

async fn port(c: &tokio_postgres::Client) -> u16 {
    c.query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get::<_, i32>(0) as u16
}

/// Clients that read without pause until told to stop (or 60 s), counting where each read
/// ran and every error.
struct Readers {
    stop: Arc<AtomicBool>,
    ports: Arc<Mutex<HashMap<u16, u64>>>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Readers {
    async fn start(proxy: &Proxy, db: &str, n: usize) -> Readers {
        let stop = Arc::new(AtomicBool::new(false));
        let ports = Arc::new(Mutex::new(HashMap::new()));
        let mut tasks = Vec::new();
        for i in 0..n {
            let c = proxy.connect(roles::TRUST, None, db).await.unwrap();
            let (stop, ports) = (stop.clone(), ports.clone());
            tasks.push(tokio::spawn(async move {
                let mut errors = Vec::new();
                let until = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    // Half the clients use the simple protocol, half prepared statements.
                    let r = if i % 2 == 0 {
                        c.simple_query("SELECT inet_server_port()")
                            .await
                            .map(|m| switchyard_tests::first_value::<u16>(&m).unwrap())
                    } else {
                        c.query_one("SELECT inet_server_port()", &[])
                            .await
                            .map(|r| r.get::<_, i32>(0) as u16)
                    };
                    match r {
                        Ok(p) => *ports.lock().unwrap().entry(p).or_default() += 1,
                        Err(e) => errors.push(format!("{e:?}")),
                    }
                }
                if c.is_closed() {
                    errors.push("connection closed".into());
                }
                errors
            }));
        }
        Readers { stop, ports, tasks }
    }

    /// Where reads ran since the last call.
    fn take(&self) -> HashMap<u16, u64> {
        std::mem::take(&mut *self.ports.lock().unwrap())
    }

    /// Where reads ran during 300 ms, starting 500 ms from now (reads routed before a swap
    /// may still be answered just after it, later on a busy machine).
    async fn next_reads(&self) -> HashMap<u16, u64> {
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.take();
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.take()
    }

    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for t in self.tasks {
            errors.extend(t.await.unwrap());
        }
        errors
    }
}

#[tokio::test]
async fn sighup_swaps_policies_while_clients_run() {
    let cluster = shared_cluster();
    let db = unique_name("reload");
    cluster.create_database(&db, roles::TRUST);
    let (primary, replicas) = (
        cluster.primary.port,
        cluster.replicas.iter().map(|r| r.port).collect::<Vec<_>>(),
    );
    let split = [("read-write-split", "\"\""), ("least-outstanding", "\"\"")];
    let proxy = Proxy::start("", &pool_with(&db, &split));
    // The port opens before the policies are compiled (seconds in a debug build): a SIGHUP
    // sent then is kept for later, not fatal.
    proxy.signal(libc::SIGHUP);
    proxy.logged("routing policies and servers reloaded", 1);
    let readers = Readers::start(&proxy, &db, 4).await;
    let before = readers.next_reads().await;
    assert!(
        !before.is_empty() && before.keys().all(|p| replicas.contains(p)),
        "reads before the swap: {before:?}"
    );

    // A transaction that starts before the swap keeps its server after it.
    let t = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    t.batch_execute("BEGIN READ ONLY").await.unwrap();
    let first = port(&t).await;
    assert!(replicas.contains(&first), "{first}");

    // No policy: everything to the primary.
    proxy.reload(
        &pool_with(&db, &[]),
        "routing policies and servers reloaded",
    );
    assert_eq!(port(&t).await, first, "the open transaction stayed");
    t.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        port(&t).await,
        primary,
        "its next transaction is routed anew"
    );
    let after = readers.next_reads().await;
    assert!(
        !after.is_empty() && after.keys().all(|p| *p == primary),
        "reads after the swap: {after:?}"
    );

    // A reload that cannot load changes nothing and says why.
    let missing = pool_with(&db, &[("read-write-split", "\"\"")])
        .replace("read_write_split.wasm", "no-such-policy.wasm");
    let log = proxy.reload(&missing, "reload refused");
    assert!(log.contains("no-such-policy.wasm"), "{log}");
    let invalid = pool_with(&db, &split).replace("pool_size = 6", "pool_size = 6\npool_sise = 1");
    let log = proxy.reload(&invalid, "reload refused");
    assert!(log.contains("pool_sise"), "{log}");
    let refused = pool_with(&db, &[("read-write-split", "\"primary_reeds = true\"")]);
    let log = proxy.reload(&refused, "reload refused");
    assert!(log.contains("primary_reeds"), "{log}");
    let kept = readers.next_reads().await;
    assert!(
        !kept.is_empty() && kept.keys().all(|p| *p == primary),
        "reads after refused reloads: {kept:?}"
    );

    // A change that does not reload is named, and the policies reload regardless.
    let log = proxy.log();
    assert!(
        !log.contains("takes effect at the next start key="),
        "{log}"
    );
    let config = std::fs::read_to_string(&proxy.config_path).unwrap();
    let threads = config.replace("worker_threads = 2", "worker_threads = 1");
    std::fs::write(&proxy.config_path, threads).unwrap();
    let log = proxy.reload(
        &pool_with(&db, &[]),
        "routing policies and servers reloaded",
    );
    assert!(
        log.contains(
            "changed in the config file; takes effect at the next start key=general.worker_threads"
        ),
        "{log}"
    );

    // And back, many times over while the readers run: every swap is clean.
    for i in 0..6 {
        let policies: &[(&str, &str)] = if i % 2 == 0 { &split } else { &[] };
        proxy.reload(
            &pool_with(&db, policies),
            "routing policies and servers reloaded",
        );
    }
    proxy.reload(
        &pool_with(&db, &split),
        "routing policies and servers reloaded",
    );
    let back = readers.next_reads().await;
    assert!(
        !back.is_empty() && back.keys().all(|p| replicas.contains(p)),
        "reads after swapping back: {back:?}"
    );
    let errors = readers.finish().await;
    assert!(errors.is_empty(), "{errors:?}\n{}", proxy.log());
}

#[test]
fn pgbench_through_swaps_has_no_failed_transaction() {
    let cluster = shared_cluster();
    let db = unique_name("reload_bench");
    cluster.create_database(&db, roles::TRUST);
    cluster.pgbench_init(&db);
    let split = [("read-write-split", "\"\""), ("least-outstanding", "\"\"")];
    let proxy = Proxy::start("", &pool_with(&db, &split));
    let done = AtomicBool::new(false);
    let swaps = std::thread::scope(|s| {
        let swapper = s.spawn(|| {
            // Swaps every 300 ms while pgbench runs (it runs 6 s), at most 30 times.
            let mut swaps = 0;
            while !done.load(Ordering::Relaxed) && swaps < 30 {
                std::thread::sleep(Duration::from_millis(300));
                let policies: &[(&str, &str)] = if swaps % 2 == 0 { &[] } else { &split };
                proxy.reload(
                    &pool_with(&db, policies),
                    "routing policies and servers reloaded",
                );
                swaps += 1;
            }
            swaps
        });
        for mode in ["simple", "extended"] {
            let (processed, failed) =
                proxy.pgbench(&db, &["-S", "-M", mode, "-c", "8", "-j", "2", "-T", "3"]);
            assert!(processed > 100, "{mode}: {processed}");
            assert_eq!(failed, 0, "{mode}");
        }
        done.store(true, Ordering::Relaxed);
        swapper.join().unwrap()
    });
    assert!(swaps >= 4, "only {swaps} swaps happened during the runs");
}
