//! Admin HTTP: `/healthz` and `/metrics` (Prometheus text), on its own small
//! runtime so that nothing it does can slow the game threads.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .with_state(metrics)
}

/// `{"status":"ok"}`, or `{"status":"degraded","storage":"unavailable"}`
/// while storage is away (the server still plays; writes are held). Both
/// answer 200: the process is up and serving players either way.
async fn healthz(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    let body = if metrics.storage_degraded.get() != 0 {
        "{\"status\":\"degraded\",\"storage\":\"unavailable\"}\n"
    } else {
        "{\"status\":\"ok\"}\n"
    };
    ([(header::CONTENT_TYPE, "application/json")], body)
}

async fn render_metrics(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
}
