//! The outermost layer of every api and admin request: a request id (the client's `X-Request-Id`
//! when it is sane, a new one otherwise) on the response and on every log line of the request,
//! one access-log line, and the request metrics.

use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The header that carries the request id both ways.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Longest request id taken from a client.
const MAX_ID_BYTES: usize = 128;

/// The request's id, also in its extensions for handlers that want to mention it.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

pub async fn observe(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_sane_id(v))
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_string);
    let route = route_label(request.uri().path());
    let method = request.method().clone();
    request.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, method = %method, route);
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    span.in_scope(|| {
        let ms = elapsed.as_secs_f64() * 1e3;
        // Probes come every few seconds from orchestrators: not worth a line each.
        if matches!(route, "/health" | "/ready" | "/metrics") {
            tracing::debug!(status, ms, "answered");
        } else {
            tracing::info!(status, ms, "answered");
        }
    });
    crate::telemetry::request(route, method.as_str(), status, elapsed);
    response.headers_mut().insert(REQUEST_ID.clone(), HeaderValue::from_str(&id).expect("checked or generated"));
    response
}

/// Ids a client may choose: short, and only characters that are safe in logs and headers.
fn is_sane_id(id: &str) -> bool {
    (1..=MAX_ID_BYTES).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The metric label for a path: the route it belongs to (a fixed set, so a client cannot make
/// up new label values), not the path itself.
fn route_label(path: &str) -> &'static str {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match first {
        "upload" => "/upload",
        "download" => "/download",
        "status" => "/status",
        "events" => "/events",
        "health" => "/health",
        "ready" => "/ready",
        "metrics" => "/metrics",
        "openapi.json" => "/openapi.json",
        "" => "/",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_clients_are_bounded() {
        assert!(is_sane_id("abc-123_x.y:z"));
        assert!(!is_sane_id(""));
        assert!(!is_sane_id("has space"));
        assert!(!is_sane_id("line\nbreak"));
        assert!(!is_sane_id(&"a".repeat(MAX_ID_BYTES + 1)));
    }

    #[test]
    fn paths_map_to_a_fixed_set_of_routes() {
        assert_eq!(route_label("/download/a/b.jpg"), "/download");
        assert_eq!(route_label("/upload"), "/upload");
        assert_eq!(route_label("/whatever/x"), "other");
        assert_eq!(route_label("/"), "/");
        assert_eq!(route_label("/events"), "/events");
    }
}
