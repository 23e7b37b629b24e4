//! `GET /health` (the process is up), `GET /ready` (the store and the queue answer), and the
//! admin-only `GET /metrics` (Prometheus text).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use super::{ApiError, Backends};

/// How long readiness waits for each backend.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The body of `/health` and `/ready`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` (health) or `ready` (readiness).
    #[schema(value_type = String, example = "ok")]
    pub status: &'static str,
}

#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "The process is up", body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[utoipa::path(get, path = "/ready", tag = "operations", responses(
    (status = 200, description = "The store and the queue answer", body = Health),
    (status = 503, description = "`not-ready`", body = ApiError),
))]
pub async fn ready(State(state): State<Backends>) -> Result<Json<Health>, ApiError> {
    let not_ready = |what: &str, detail: String| {
        tracing::warn!("not ready: {what}: {detail}");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not-ready", format!("the {what} is not answering"))
    };
    match tokio::time::timeout(CHECK_TIMEOUT, state.store.check()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(not_ready("store", e.to_string())),
        Err(_) => return Err(not_ready("store", "timed out".into())),
    }
    match tokio::time::timeout(CHECK_TIMEOUT, state.queue.check()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(not_ready("queue", e.to_string())),
        Err(_) => return Err(not_ready("queue", "timed out".into())),
    }
    Ok(Json(Health { status: "ready" }))
}

/// Prometheus text, the queue's depths sampled now. Served on the admin address only.
pub async fn metrics(State(state): State<Backends>) -> impl axum::response::IntoResponse {
    let text = crate::telemetry::render(&*state.queue).await;
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
}
