//! The HTTP api: upload, download, status, health. Handlers see only the two ports.

mod download;
mod error;
mod health;
mod upload;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};

pub use error::ApiError;

use crate::config::UploadLimits;
use crate::queue::JobQueue;
use crate::storage::BlobStore;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub store: Arc<dyn BlobStore>,
    pub queue: Arc<dyn JobQueue>,
    pub limits: UploadLimits,
}

/// Every route of the api.
pub fn router(state: ApiState) -> Router {
    let body_limit = usize::try_from(state.limits.max_request_bytes).unwrap_or(usize::MAX);
    Router::new()
        .route("/upload", post(upload::upload).layer(DefaultBodyLimit::max(body_limit)))
        .route("/download", get(download::download_by_query))
        .route("/download/{*key}", get(download::download_by_path))
        .route("/status", get(download::status_by_query))
        .route("/status/{*key}", get(download::status_by_path))
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no-such-route", "no such route") })
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// The URL path of a key under `/download/` or `/status/` (segments percent-encoded).
pub fn key_path(route: &str, key: &str) -> String {
    let mut out = format!("/{route}");
    for segment in key.split('/') {
        out.push('/');
        for b in segment.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'~') {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}
