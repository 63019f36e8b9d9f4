//! The HTTP side: `/metrics`, `/livez`, `/readyz`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use daemon_kit::admin::{Readiness, health_router};
use daemon_kit::exposition::CONTENT_TYPE;

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
