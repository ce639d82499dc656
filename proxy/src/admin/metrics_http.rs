//! The metrics endpoint: `GET /metrics` over HTTP/1.1 on `general.metrics_addr`, for Prometheus
//! and anything that scrapes its text format. It runs on the main thread's runtime, apart from
//! the workers that serve clients, and goes on through a shutdown's drain, so a scraper can
//! watch the last transactions end (PgBouncer's exporters cannot: pgbouncer#1354); it stops
//! accepting when the remaining clients are closed.

use super::metrics;
use crate::shutdown::Shutdown;
use crate::Proxy;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Method, Request, Response, StatusCode};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// How long one scrape connection may stay open (a keep-alive scraper reconnects).
const CONNECTION_LIMIT: Duration = Duration::from_secs(60);

/// Answers one request: the exposition at `GET /metrics`, 405 for another method there, 404
/// elsewhere.
fn respond(proxy: &Proxy, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            metrics::CONTENT_TYPE,
            metrics::render(proxy),
        ),
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: the metrics are at /metrics\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// Serves scrapes from `listener` until shutdown closes the clients left.
pub async fn serve(listener: tokio::net::TcpListener, proxy: Arc<Proxy>, mut shutdown: Shutdown) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.closing() => return,
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let response = respond(&proxy, &req);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIMIT, connection).await;
        });
    }
}
