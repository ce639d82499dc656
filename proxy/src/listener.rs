//! Accepting clients: one task per connection on a worker thread, bounded by `max_client_conn`.

use crate::protocol::{backend, sqlstate};
use crate::workers::Workers;
use crate::Proxy;
use bytes::BytesMut;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// Accepts until shutdown begins.
pub async fn accept_loop(listener: TcpListener, proxy: Arc<Proxy>, workers: Arc<Workers>) {
    let mut shutdown = proxy.shutdown.clone();
    let max = proxy.config.general.max_client_conn;
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.draining() => return,
        };
        let Some(guard) = proxy.clients.try_enter(max) else {
            tokio::spawn(refuse(stream, max));
            continue;
        };
        // Hand the socket to a worker: deregister here, register on the worker's reactor.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand over a client connection");
                continue;
            }
        };
        let proxy = proxy.clone();
        workers.next().spawn(async move {
            let _guard = guard;
            match TcpStream::from_std(stream) {
                Ok(stream) => crate::client::serve(stream, peer, &proxy).await,
                Err(e) => tracing::warn!(error = %e, "cannot register a client connection"),
            }
        });
    }
}

/// Tells a client over `max_client_conn` why it cannot stay.
async fn refuse(mut stream: TcpStream, max: usize) {
    let mut buf = BytesMut::new();
    backend::error(
        &mut buf,
        backend::Severity::Fatal,
        sqlstate::TOO_MANY_CONNECTIONS,
        &format!("no more connections allowed (max_client_conn = {max})"),
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&buf)).await;
}
