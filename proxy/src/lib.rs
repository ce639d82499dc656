//! Switchyard: a PostgreSQL pooling proxy.
//!
//! The data path reads as the module tree: [`listener`] accepts a client, [`client`] runs its
//! session (login, then forwarding), [`router`] decides which server serves it, [`pool`] hands
//! out a connection to that server, and [`server`] speaks to PostgreSQL. [`protocol`] holds the
//! wire format; [`auth`] checks client passwords; [`cancel`] and [`shutdown`] are the two
//! cross-cutting concerns.

pub mod admin;
pub mod auth;
pub mod cancel;
pub mod client;
pub mod clock;
pub mod config;
pub mod listener;
pub mod live;
pub mod pool;
pub mod protocol;
pub mod reload;
pub mod router;
pub mod server;
pub mod shutdown;
pub mod socket;
pub mod workers;

use cancel::CancelRegistry;
use config::{Config, General};
use pool::Pools;
use shutdown::{ClientCounter, Phase, Shutdown, ShutdownController};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// What every client session shares.
#[derive(Debug)]
pub struct Proxy {
    /// The config the proxy started with: what only a restart changes (listen addresses,
    /// worker threads, socket options, the admin users) is read here.
    pub config: Config,
    /// The settings outside the pools that a reload changes (see [`Proxy::general`]).
    pub live: Arc<live::LiveSettings>,
    pub pools: Arc<Pools>,
    pub cancels: CancelRegistry,
    pub clients: Arc<ClientCounter>,
    pub shutdown: Shutdown,
    /// Reloads the routing policies (the admin console's `RELOAD`); `None` when the proxy
    /// runs without a config file to reload from.
    pub reloader: Option<Arc<reload::Reloader>>,
    /// The admin console's `SHUTDOWN`: [`run`] shuts down as on SIGTERM.
    pub stop_requested: tokio::sync::Notify,
}

impl Proxy {
    /// The `[general]` settings in force now (timeouts and limits a reload may have changed):
    /// read one where it is used, not across a wait.
    pub fn general(&self) -> arc_swap::Guard<Arc<General>> {
        self.live.general()
    }
}

/// Half the CPUs, at least one. Most of a pooler's CPU is the kernel's TCP work charged to it;
/// fewer, busier event loops batch more events per `epoll_wait` (measured: one worker costs
/// ~10 % less CPU per transaction than two on a 2-core machine shared with PostgreSQL).
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// Serves clients from `listeners` until `stop` resolves, then shuts down gracefully.
///
/// Runs on the main thread's runtime; accepting and client sessions run on [`workers`] threads.
pub async fn run(
    config: Config,
    mut listeners: listener::Listeners,
    stop: impl Future<Output = ()>,
    reloads: Option<reload::Reloads>,
) -> std::io::Result<()> {
    let n = config
        .general
        .worker_threads
        .unwrap_or_else(default_workers);
    let workers = Arc::new(workers::Workers::start(n)?);
    let (controller, shutdown) = ShutdownController::new();
    let pools = Arc::new(Pools::from_config(&config, n).map_err(std::io::Error::other)?);
    let admin_users = config.admin.as_ref().map(|a| &a.users);
    let live = Arc::new(live::LiveSettings::new(&config.general, admin_users));
    let (reloader, hangups) = match reloads {
        Some(r) => {
            let (reloader, hangups) = r.into_parts(pools.clone(), live.clone(), &workers);
            (Some(reloader), Some(hangups))
        }
        None => (None, None),
    };
    let proxy = Arc::new(Proxy {
        config,
        live,
        pools: pools.clone(),
        cancels: CancelRegistry::default(),
        clients: Arc::new(ClientCounter::default()),
        shutdown: shutdown.clone(),
        reloader: reloader.clone(),
        stop_requested: tokio::sync::Notify::new(),
    });
    // The metrics endpoint, on this runtime: scrapes never queue behind clients.
    if let Some(listener) = listeners.take_metrics() {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
        tokio::spawn(admin::metrics_http::serve(
            listener,
            proxy.clone(),
            shutdown.clone(),
        ));
    }
    tracing::info!(
        addr = %proxy.config.general.listen_addr,
        unix_socket = ?listeners.unix_path(),
        workers = n,
        "switchyard listening"
    );
    // Client traffic keeps the coarse clock ticking; without it, the ticker rests.
    let traffic = pools.clone();
    clock::spawn_ticker(shutdown.clone(), move || {
        traffic.all().iter().fold(0u64, |n, p| {
            let t = p.stats.totals();
            n.wrapping_add(t.received).wrapping_add(t.requests)
        })
    });
    tokio::spawn(pool::stats_log(
        pools.clone(),
        proxy.live.clone(),
        shutdown.clone(),
    ));
    // SIGHUP reloads the routing policies from the config file.
    let hangups = hangups
        .zip(reloader)
        .map(|(h, reloader)| tokio::spawn(h.serve(reloader)));
    // On a worker, so that min_pool_size connections live on a worker's reactor.
    workers.get(0).spawn(pool::reaper(
        pools.clone(),
        Duration::from_secs(1),
        shutdown.clone(),
    ));
    workers
        .get(0)
        .spawn(pool::expire_waiters(pools, shutdown.clone()));
    let mut accept = workers.get(0).spawn(listener::accept_loop(
        listeners,
        proxy.clone(),
        workers.clone(),
    ));

    tokio::pin!(stop);
    tokio::select! {
        _ = &mut stop => {}
        _ = proxy.stop_requested.notified() => {}
        r = &mut accept => {
            // The loop only ends by itself when it could not start accepting.
            let e = match r {
                Ok(Err(e)) => e,
                Ok(Ok(())) => std::io::Error::other("the accept loop stopped"),
                Err(e) => std::io::Error::other(e),
            };
            return Err(std::io::Error::other(format!("cannot accept clients: {e}")));
        }
    }
    let grace = Duration::from_millis(proxy.general().shutdown_timeout_ms);
    tracing::info!(
        clients = proxy.clients.count(),
        grace_ms = grace.as_millis() as u64,
        "shutting down: no new connections; transactions in flight may finish"
    );
    if let Some(h) = hangups {
        // Awaited, so that a reload in progress is over before the workers are stopped.
        h.abort();
        let _ = h.await;
    }
    controller.enter(Phase::Draining);
    proxy.cancels.wake_all();
    let _ = accept.await;
    if tokio::time::timeout(grace, proxy.clients.wait_zero())
        .await
        .is_err()
    {
        tracing::warn!(
            clients = proxy.clients.count(),
            "shutdown_timeout reached: closing remaining clients"
        );
    }
    controller.enter(Phase::Closing);
    proxy.cancels.wake_all();
    let _ = tokio::time::timeout(Duration::from_secs(2), proxy.clients.wait_zero()).await;
    if let Ok(workers) = Arc::try_unwrap(workers) {
        workers.stop();
    }
    tracing::info!("stopped");
    Ok(())
}
