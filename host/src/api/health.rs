//! `GET /health` (the process is up), `GET /ready` (the store and the queue answer), and the
//! admin-only `GET /metrics` (Prometheus text).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::{ApiError, Backends, Code};

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
    match state.probes.ready.get(READY_FRESH, ask(&state)).await {
        Ok(()) => Ok(Json(Health { status: "ready" })),
        Err(what) => Err(ApiError::new(Code::NotReady, format!("the {what} is not answering"))),
    }
}

/// How long a readiness result is served before the backends are asked again.
const READY_FRESH: Duration = Duration::from_secs(1);

/// How long the queue's sampled depths are served to `/metrics` before the queue is asked again.
const SAMPLE_FRESH: Duration = Duration::from_secs(1);

/// What the probes last found, shared by every caller: a readiness check is two S3 requests and
/// one SQS request and a queue sample two SQS requests, billed, and throttled when a probe storm
/// repeats them; so the backends are asked at most once a second, and never twice at once.
#[derive(Debug, Clone, Default)]
pub struct Probes {
    /// `/ready`: `Ok`, or which backend does not answer.
    ready: Arc<Recent<Result<(), &'static str>>>,
    /// `/metrics`: the queue gauges were set.
    queue_sample: Arc<Recent<()>>,
}

/// A value shared by concurrent callers: computed again when older than the age a caller asks
/// for, by one caller at a time (callers arriving meanwhile wait, then take its value).
#[derive(Debug)]
pub struct Recent<T>(tokio::sync::Mutex<Option<(Instant, T)>>);

impl<T> Default for Recent<T> {
    fn default() -> Self {
        Recent(tokio::sync::Mutex::new(None))
    }
}

impl<T: Clone> Recent<T> {
    /// The value, from `compute` unless the last one is under `max_age` old (then `compute` is
    /// dropped unpolled).
    pub async fn get(&self, max_age: Duration, compute: impl Future<Output = T>) -> T {
        let mut last = self.0.lock().await;
        if let Some((at, value)) = &*last
            && at.elapsed() < max_age
        {
            return value.clone();
        }
        let value = compute.await;
        *last = Some((Instant::now(), value.clone()));
        value
    }
}

/// Asks the store, then the queue.
async fn ask(backends: &Backends) -> Result<(), &'static str> {
    let not_ready = |what: &'static str, detail: String| {
        tracing::warn!("not ready: {what}: {detail}");
        what
    };
    match tokio::time::timeout(CHECK_TIMEOUT, backends.store.check()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(not_ready("store", e.to_string())),
        Err(_) => return Err(not_ready("store", "timed out".into())),
    }
    match tokio::time::timeout(CHECK_TIMEOUT, backends.queue.check()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(not_ready("queue", e.to_string())),
        Err(_) => return Err(not_ready("queue", "timed out".into())),
    }
    Ok(())
}

/// Prometheus text, the queue's depths sampled now. Served on the admin address only.
pub async fn metrics(State(state): State<Backends>) -> impl axum::response::IntoResponse {
    state.probes.queue_sample.get(SAMPLE_FRESH, crate::telemetry::sample_queue(&*state.queue)).await;
    let text = crate::telemetry::render();
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
}
