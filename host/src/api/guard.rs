//! Limits against abuse at the HTTP layer: a rate limit per API key (or per address without
//! one), a cap on uploads in flight, and the answers they give (429 / 503 with `Retry-After`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{ApiError, ApiState};
use crate::auth::Caller;
use crate::config::UploadLimits;

/// Whom a rate limit counts: a key (wherever it calls from) or an address (calls without a key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum RateKey {
    Key(String),
    Address(IpAddr),
}

/// The shared limiters of one api process.
#[derive(Debug, Clone)]
pub struct Guards {
    rate: Option<Arc<DefaultKeyedRateLimiter<RateKey>>>,
    uploads: Arc<Semaphore>,
    max_uploads: usize,
    /// Long polls (`/status?wait=`) and event streams open at once.
    watchers: Arc<Semaphore>,
    max_watchers: usize,
}

impl Guards {
    pub fn new(limits: &UploadLimits) -> Guards {
        let rate = NonZeroU32::new(limits.rate_per_second).map(|per_second| {
            let burst = NonZeroU32::new(limits.rate_burst).unwrap_or(per_second);
            let limiter = Arc::new(RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)));
            // Forget callers whose bucket is full again, so the table does not grow with every
            // address ever seen; the task ends with the last reference to the limiter.
            let weak = Arc::downgrade(&limiter);
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(60));
                loop {
                    every.tick().await;
                    let Some(limiter) = weak.upgrade() else { break };
                    limiter.retain_recent();
                }
            });
            limiter
        });
        let max_uploads = limits.max_concurrent_uploads.max(1) as usize;
        let max_watchers = limits.max_watchers.max(1) as usize;
        Guards {
            rate,
            uploads: Arc::new(Semaphore::new(max_uploads)),
            max_uploads,
            watchers: Arc::new(Semaphore::new(max_watchers)),
            max_watchers,
        }
    }

    /// A slot for one long poll or event stream, or 503 when `max_watchers` are open: each one
    /// reads the store every quarter second.
    pub fn watch_slot(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        slot(&self.watchers, || format!("{} status waits and event streams are already open", self.max_watchers))
    }

    /// A slot for one upload, or 503 when `max_concurrent_uploads` are being received.
    pub fn upload_slot(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        slot(&self.uploads, || format!("{} uploads are already being received", self.max_uploads))
    }
}

/// A permit of `slots`, or 503 `too-busy` saying why (`busy`) and to retry in a second.
fn slot(slots: &Arc<Semaphore>, busy: impl FnOnce() -> String) -> Result<OwnedSemaphorePermit, ApiError> {
    slots.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "too-busy", format!("{}; try again shortly", busy()))
            .retry_after(1)
    })
}

/// Counts the request against its caller's rate; over it, 429 with `Retry-After`. Probes
/// (`/health`, `/ready`) are never limited.
pub async fn rate_limit(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let (Some(limiter), false) = (&state.guards.rate, matches!(request.uri().path(), "/health" | "/ready")) else {
        return next.run(request).await;
    };
    let key = match state.auth.identify(request.headers()) {
        Ok(Caller::Key(id)) => RateKey::Key(id),
        // Without a (valid) key the address is all there is.
        _ => RateKey::Address(
            request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip()),
        ),
    };
    match limiter.check_key(&key) {
        Ok(()) => next.run(request).await,
        Err(not_until) => {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            tracing::info!(?key, "rate limited for {wait:?}");
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", "too many requests; slow down")
                .retry_after(seconds.max(1))
                .into_response()
        }
    }
}
