//! Live job status: `GET /status/{key}?wait=SECONDS` answers as soon as the job is no longer
//! pending (or when the wait is over), and `GET /events?keys=...` streams one server-sent event per
//! job as each finishes.
//!
//! The api learns of a finished job the way any client could, by reading the store (the worker
//! may be another process on another machine): each watcher looks every [`POLL`]. Watchers are
//! capped (`limits.max_watchers`) so that they cannot turn into unbounded store traffic.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;

use super::status::{JobStatus, Status, status};
use super::{ApiError, ApiState, CallerKey, Code, Slot};

/// How often a watcher reads a pending job's state again.
pub const POLL: Duration = Duration::from_millis(250);
/// Longest `?wait=`, in seconds.
pub const MAX_WAIT_SECS: u64 = 30;
/// Most keys one event stream follows.
pub const MAX_EVENT_KEYS: usize = 100;
/// Longest an event stream stays open; a client still interested opens another.
pub const MAX_STREAM: Duration = Duration::from_secs(600);

/// Checks a `?wait=` value: whole seconds, at most [`MAX_WAIT_SECS`].
pub fn wait_time(wait: Option<&str>) -> Result<Option<Duration>, ApiError> {
    let Some(raw) = wait else { return Ok(None) };
    match raw.parse::<u64>() {
        Ok(secs) if secs <= MAX_WAIT_SECS => Ok(Some(Duration::from_secs(secs))),
        _ => Err(ApiError::new(
            Code::InvalidWait,
            format!("wait must be whole seconds from 0 to {MAX_WAIT_SECS}, got {raw:?}"),
        )),
    }
}

/// The job's status once it is no longer pending, or its pending status when `wait` is over.
pub async fn status_after(state: &ApiState, caller: &CallerKey, key: &str, wait: Duration) -> Result<Status, ApiError> {
    let _slot = state.guards.watch_slot(caller)?;
    let until = Instant::now() + wait;
    loop {
        let current = status(state, key).await?;
        if current.state != JobStatus::Pending || Instant::now() + POLL > until {
            return Ok(current);
        }
        tokio::time::sleep(POLL).await;
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// The keys to follow, comma-separated (at most 100), as returned by `/upload`.
    keys: String,
}

/// What one event stream still waits for.
struct Watch {
    state: ApiState,
    pending: Vec<String>,
    ready: VecDeque<Event>,
    until: Instant,
    _slot: Slot,
}

#[utoipa::path(
    get,
    path = "/events",
    tag = "images",
    security((), ("apiKey" = [])),
    params(EventsQuery),
    responses(
        (status = 200, description = "A `text/event-stream`: one event per key once its job is settled, named `done`, `failed` or `not-found`, with the key as its id and the `/status` JSON as its data; the stream ends when every key has had its event (or after 10 minutes)", content_type = "text/event-stream", body = String),
        (status = 400, description = "`invalid-key`, `too-many-keys`", body = ApiError),
        (status = 401, description = "`unauthorized`: reads need a key with the `read` scope", body = ApiError),
        (status = 503, description = "`too-busy`: `limits.max_watchers` long polls and streams are open (or the caller's `max_watchers_per_caller`)", body = ApiError),
    )
)]
pub async fn events(
    State(state): State<ApiState>,
    Extension(caller): Extension<CallerKey>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let keys: Vec<String> = query.keys.split(',').map(str::trim).filter(|k| !k.is_empty()).map(String::from).collect();
    if keys.is_empty() || keys.len() > MAX_EVENT_KEYS {
        return Err(ApiError::new(
            Code::TooManyKeys,
            format!("keys must list 1 to {MAX_EVENT_KEYS} keys, comma-separated; got {}", keys.len()),
        ));
    }
    for key in &keys {
        // Signed URLs name one key: a stream needs a key with the read scope (or public reads).
        state.auth.authorize_read(&headers, "status", key, &Default::default())?;
        crate::storage::validate_key(key)?;
    }
    let slot = state.guards.watch_slot(&caller)?;
    let watch = Watch { state, pending: keys, ready: VecDeque::new(), until: Instant::now() + MAX_STREAM, _slot: slot };
    let stream = futures::stream::unfold(watch, |mut watch| async move {
        loop {
            if let Some(event) = watch.ready.pop_front() {
                return Some((Ok(event), watch));
            }
            if watch.pending.is_empty() || Instant::now() >= watch.until {
                return None;
            }
            let mut still = Vec::new();
            for key in std::mem::take(&mut watch.pending) {
                match status(&watch.state, &key).await {
                    Ok(current) if current.state == JobStatus::Pending => still.push(key),
                    Ok(current) => {
                        let event = Event::default().event(current.state.as_str()).id(key).json_data(&current);
                        watch.ready.extend(event.ok());
                    }
                    Err(e) if e.status == StatusCode::NOT_FOUND => {
                        let body = serde_json::json!({ "key": key, "code": e.code, "message": e.message });
                        watch.ready.extend(Event::default().event("not-found").id(key).json_data(&body).ok());
                    }
                    // The store is unavailable for now: look again at the next poll.
                    Err(_) => still.push(key),
                }
            }
            watch.pending = still;
            if watch.ready.is_empty() {
                tokio::time::sleep(POLL).await;
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
