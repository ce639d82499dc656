//! Switchyard: a PostgreSQL pooling proxy.
//!
//! The data path reads as the module tree: [`listener`] accepts a client, [`client`] runs its
//! session (login, then forwarding), [`router`] decides which server serves it, [`pool`] hands
//! out a connection to that server, and [`server`] speaks to PostgreSQL. [`protocol`] holds the
//! wire format; [`auth`] checks client passwords; [`cancel`] and [`shutdown`] are the two
//! cross-cutting concerns.

pub mod auth;
pub mod cancel;
pub mod client;
pub mod config;
pub mod listener;
pub mod pool;
pub mod protocol;
pub mod router;
pub mod server;
pub mod shutdown;

use cancel::CancelRegistry;
use config::Config;
use pool::Pools;
use shutdown::{ClientCounter, Phase, Shutdown, ShutdownController};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// What every client session shares.
#[derive(Debug)]
pub struct Proxy {
    pub config: Config,
    pub pools: Arc<Pools>,
    pub cancels: CancelRegistry,
    pub clients: ClientCounter,
    pub shutdown: Shutdown,
}

/// Serves clients from `listener` until `stop` resolves, then shuts down gracefully.
pub async fn run(config: Config, listener: TcpListener, stop: impl Future<Output = ()>) {
    let (controller, shutdown) = ShutdownController::new();
    let pools = Arc::new(Pools::from_config(&config));
    let proxy = Arc::new(Proxy {
        config,
        pools: pools.clone(),
        cancels: CancelRegistry::default(),
        clients: ClientCounter::default(),
        shutdown: shutdown.clone(),
    });
    pool::spawn_reaper(pools, Duration::from_secs(1), shutdown.clone());
    let accept = tokio::spawn(listener::accept_loop(listener, proxy.clone()));

    stop.await;
    let grace = Duration::from_millis(proxy.config.general.shutdown_timeout_ms);
    tracing::info!(
        clients = proxy.clients.count(),
        grace_ms = grace.as_millis() as u64,
        "shutting down: no new connections; transactions in flight may finish"
    );
    controller.enter(Phase::Draining);
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
    let _ = tokio::time::timeout(Duration::from_secs(2), proxy.clients.wait_zero()).await;
    tracing::info!("stopped");
}
