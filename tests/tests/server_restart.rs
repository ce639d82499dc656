//! The primary restarts under a running proxy: the pool heals without a proxy restart, and
//! clients between transactions do not even notice. This binary has a cluster of its own
//! (a primary alone), since restarting the shared one would disturb other tests.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use switchyard_tests::{roles, trust_pool, unique_name, Cluster, Proxy};

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start(0).unwrap_or_else(|e| panic!("{e}")))
}

extern "C" fn stop_at_exit() {
    cluster().stop();
}

#[tokio::test]
async fn the_pool_heals_after_the_primary_restarts() {
    let c = cluster();
    // SAFETY: registers a plain function with no captured state; it runs at process exit.
    unsafe {
        libc::atexit(stop_at_exit);
    }
    let db = unique_name("restart");
    c.create_database(&db, roles::TRUST);
    let proxy = Proxy::start(
        "connect_timeout_ms = 2000\ncheckout_timeout_ms = 2000",
        &trust_pool(c, &db, "pool_mode = \"transaction\"\npool_size = 4"),
    );
    // A client between transactions, whose pooled server dies in the restart.
    let idle = proxy.connect(roles::TRUST, None, &db).await.unwrap();
    idle.batch_execute("CREATE TABLE t (x int)").await.unwrap();
    let started_at = || {
        c.psql(
            c.primary.port,
            "postgres",
            "SELECT pg_postmaster_start_time()",
        )
    };
    let first_start = started_at().unwrap();
    let before: i32 = idle
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);

    // Clients that keep working through the restart: they may get errors while the server is
    // down, but their sessions go on and succeed again once it is back.
    let stop = Arc::new(AtomicBool::new(false));
    let restarted_at = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..8i32 {
        let client = proxy.connect(roles::TRUST, None, &db).await.unwrap();
        let (stop, restarted_at) = (stop.clone(), restarted_at.clone());
        workers.push(tokio::spawn(async move {
            let (mut ok_after_restart, mut errors) = (0u32, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let r = client.execute("INSERT INTO t VALUES ($1)", &[&w]).await;
                match r {
                    Ok(_) => {
                        let at = restarted_at.load(Ordering::Relaxed);
                        if at > 0 && started.elapsed().as_millis() as u64 > at {
                            ok_after_restart += 1;
                        }
                    }
                    Err(e) => {
                        let closed = client.is_closed();
                        errors.push(e.code().map(|c| c.code().to_string()));
                        if closed {
                            errors.push(Some(format!("closed by {e:?}")));
                            break;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (ok_after_restart, errors)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Off the test's thread: the workers run while the primary is down.
    tokio::task::spawn_blocking(move || c.restart_node(&c.primary))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(started_at().unwrap(), first_start, "the primary restarted");
    restarted_at.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for (w, worker) in workers.into_iter().enumerate() {
        let (ok_after_restart, errors) = worker.await.unwrap();
        assert!(
            ok_after_restart > 10,
            "worker {w}: {ok_after_restart} statements after the restart; errors {errors:?}\n{}",
            proxy.log()
        );
        // What a client sees of the restart is at most an error for a statement that met it:
        // the server's own (57P01), or its connection lost under it (08006). While the server
        // is down, checkouts wait for it (no 08001).
        for code in &errors {
            assert!(
                matches!(code.as_deref(), Some("57P01" | "08006")),
                "worker {w}: {errors:?}\n{}",
                proxy.log()
            );
        }
    }
    // The idle client's next transaction runs on a new server connection, without an error:
    // the dead pooled one is noticed at checkout and replaced.
    let after: i32 = idle
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(before, after);
    let n: i64 = idle
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert!(n > 0);
}
