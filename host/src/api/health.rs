//! `GET /health` (the process is up) and `GET /ready` (the store and the queue answer).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{ApiError, ApiState};

/// How long readiness waits for each backend.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn ready(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({ "status": "ready" })))
}
