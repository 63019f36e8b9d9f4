//! The admin HTTP server every daemon runs: `/livez`, `/readyz` and `/metrics`.
//!
//! `/livez` answers from the process alone, so a liveness probe never restarts a daemon because
//! something *upstream* is down; `/readyz` answers 200 only once the daemon says it is ready (watch
//! caches synced, listener bound, ...).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
#[cfg(feature = "registry")]
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
#[cfg(feature = "registry")]
use prometheus_client::registry::Registry;

/// The content type of what `prometheus_client` encodes.
#[cfg(feature = "registry")]
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether the daemon is ready to serve; shared between the daemon's logic and `/readyz`.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The admin routes. Daemons whose main listener is the admin listener merge their own routes into it.
#[cfg(feature = "registry")]
pub fn router(readiness: Readiness, registry: Arc<Registry>) -> Router {
    health_router(readiness).merge(Router::new().route("/metrics", get(metrics)).with_state(registry))
}

/// `/livez` and `/readyz` alone, for daemons that serve a `/metrics` of their own (the exporters).
pub fn health_router(readiness: Readiness) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(readiness)
}

async fn readyz(State(readiness): State<Readiness>) -> impl IntoResponse {
    if readiness.is_ready() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

#[cfg(feature = "registry")]
async fn metrics(State(registry): State<Arc<Registry>>) -> axum::response::Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &registry) {
        Ok(()) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], body).into_response(),
        Err(error) => {
            tracing::error!(%error, "encoding metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin server on {addr} failed: {source}")]
    Serve {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A bound listener, so the caller learns the real address (port 0) before serving.
#[derive(Debug)]
pub struct BoundServer {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
}

impl BoundServer {
    pub async fn bind(addr: SocketAddr) -> Result<Self, ServeError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, source })?;
        Ok(Self { listener, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `stop` resolves, then finishes the requests in flight; `limits` bounds what clients
    /// can hold (see [`crate::http_server`]).
    pub async fn serve(
        self,
        router: Router,
        limits: crate::http_server::ConnectionLimits,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let addr = self.addr;
        crate::http_server::serve(self.listener, router, limits, stop)
            .await
            .map_err(|source| ServeError::Serve { addr, source })
    }
}

#[cfg(test)]
#[cfg(feature = "registry")]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    async fn start(readiness: Readiness) -> SocketAddr {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        counter.inc();
        registry.register("example_events", "Events seen", counter);
        let server = BoundServer::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = server.local_addr();
        tokio::spawn(server.serve(
            router(readiness, Arc::new(registry)),
            crate::http_server::ConnectionLimits::default(),
            std::future::pending(),
        ));
        addr
    }

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    #[tokio::test]
    async fn readyz_follows_readiness_while_livez_stays_ok() {
        let readiness = Readiness::default();
        let addr = start(readiness.clone()).await;
        assert_eq!(get(addr, "/livez").await.0, 200);
        assert_eq!(get(addr, "/readyz").await.0, 503);
        readiness.set(true);
        assert_eq!(get(addr, "/readyz").await.0, 200);
        assert_eq!(get(addr, "/livez").await.0, 200);
    }

    #[tokio::test]
    async fn metrics_encodes_the_registry() {
        let addr = start(Readiness::default()).await;
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("# TYPE example_events counter"), "{body}");
        assert!(body.contains("example_events_total 1"), "{body}");
    }
}
