//! The HTTP side: `/metrics`, `/livez`, `/readyz`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use daemon_kit::admin::{BoundServer, Readiness, ServeError, health_router};
use daemon_kit::exposition::CONTENT_TYPE;
use daemon_kit::shutdown::Shutdown;

use crate::scrape::Exporter;

pub fn router(exporter: Arc<Exporter>, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(exporter)
        .merge(health_router(readiness))
}

async fn metrics(State(exporter): State<Arc<Exporter>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], exporter.metrics().await)
}

/// Serves until the first stop signal; ready as soon as the listener is bound.
pub async fn serve(
    server: BoundServer,
    exporter: Arc<Exporter>,
    shutdown: Shutdown,
) -> Result<(), ServeError> {
    let readiness = Readiness::default();
    readiness.set(true);
    tracing::info!(addr = %server.local_addr(), "serving /metrics");
    server
        .serve(
            router(exporter, readiness),
            async move { shutdown.draining().await },
        )
        .await
}
