//! Limits against abuse at the HTTP layer: a rate limit per caller (an API key, or without one the
//! client's address), caps on uploads and watchers in flight, overall and per caller, and the
//! answers they give (429 / 503 with `Retry-After`). Behind a trusted proxy the client's address
//! comes from `X-Forwarded-For`; IPv6 clients count per /64.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{ApiError, ApiState, Code};
use crate::auth::Caller;
use crate::config::UploadLimits;

/// Whom a limit counts: a key (wherever it calls from) or a client address (calls without a key;
/// an IPv6 address by its /64). Put on every request by [`rate_limit`] for the handlers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CallerKey {
    Key(String),
    Address(IpAddr),
}

/// The address a client is counted under: itself for IPv4, its /64 for IPv6 (one subscriber
/// usually holds a whole /64, and rotating inside it must not buy more connections or tokens).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

/// Open things (connections, uploads, watchers) per key, each capped.
#[derive(Debug)]
pub struct PerKey<K>(Arc<Mutex<HashMap<K, usize>>>);

impl<K> Clone for PerKey<K> {
    fn clone(&self) -> Self {
        PerKey(self.0.clone())
    }
}

impl<K> Default for PerKey<K> {
    fn default() -> Self {
        PerKey(Arc::default())
    }
}

impl<K: Eq + Hash + Clone> PerKey<K> {
    /// Counts one more for `key`, unless it already holds `max`; the count drops with the guard.
    pub fn hold(&self, key: &K, max: usize) -> Option<Held<K>> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(key.clone()).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Held { map: self.clone(), key: key.clone() })
    }

    /// How many keys hold something now.
    pub fn keys(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// One thing counted against its key, until dropped.
#[derive(Debug)]
pub struct Held<K: Eq + Hash> {
    map: PerKey<K>,
    key: K,
}

impl<K: Eq + Hash> Drop for Held<K> {
    fn drop(&mut self) {
        let mut open = self.map.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// One upload or watcher slot: the caller's and the overall one, given back together on drop.
#[derive(Debug)]
pub struct Slot {
    _overall: OwnedSemaphorePermit,
    _caller: Held<CallerKey>,
}

/// A cap overall and per caller.
#[derive(Debug, Clone)]
struct Cap {
    overall: Arc<Semaphore>,
    max: usize,
    per_caller: PerKey<CallerKey>,
    max_per_caller: usize,
    /// What is capped, for the message ("uploads are being received").
    what: &'static str,
}

impl Cap {
    fn new(max: u32, max_per_caller: u32, what: &'static str) -> Cap {
        let max = max.max(1) as usize;
        Cap {
            overall: Arc::new(Semaphore::new(max)),
            max,
            per_caller: PerKey::default(),
            max_per_caller: max_per_caller.max(1) as usize,
            what,
        }
    }

    /// A slot, or 503 `too-busy` saying which cap is full and to retry in a second.
    fn slot(&self, caller: &CallerKey) -> Result<Slot, ApiError> {
        let busy =
            |message: String| ApiError::new(Code::TooBusy, format!("{message}; try again shortly")).retry_after(1);
        let mine = self
            .per_caller
            .hold(caller, self.max_per_caller)
            .ok_or_else(|| busy(format!("{} of this caller's {} already", self.max_per_caller, self.what)))?;
        let overall = self
            .overall
            .clone()
            .try_acquire_owned()
            .map_err(|_| busy(format!("{} {} already", self.max, self.what)))?;
        Ok(Slot { _overall: overall, _caller: mine })
    }
}

/// The shared limiters of one api process.
#[derive(Debug, Clone)]
pub struct Guards {
    rate: Option<Arc<DefaultKeyedRateLimiter<CallerKey>>>,
    /// Renders on request a caller may start (`[renders] rate_per_caller`).
    renders: Option<Arc<DefaultKeyedRateLimiter<CallerKey>>>,
    uploads: Cap,
    /// Long polls (`/status?wait=`) and event streams open at once.
    watchers: Cap,
    /// Proxies whose `X-Forwarded-For` is believed.
    trusted_proxies: Arc<[ipnet::IpNet]>,
}

impl Guards {
    pub fn new(limits: &UploadLimits) -> Guards {
        Guards {
            rate: keyed_rate(limits.rate_per_second, limits.rate_burst),
            renders: None,
            uploads: Cap::new(limits.max_concurrent_uploads, limits.max_uploads_per_caller, "uploads being received"),
            watchers: Cap::new(
                limits.max_watchers,
                limits.max_watchers_per_caller,
                "status waits and event streams open",
            ),
            // Checked by the configuration's validation; a bad entry cannot get here.
            trusted_proxies: limits.trusted_proxy_nets().unwrap_or_default().into(),
        }
    }

    /// With a rate of renders on request per caller: `per_second`, in bursts of as many (0: none).
    pub fn with_render_rate(mut self, per_second: u32) -> Guards {
        self.renders = keyed_rate(per_second, per_second);
        self
    }

    /// Whether `caller` may start one more render on request now; else 429 `rate-limited` with
    /// when to try again.
    pub fn render_admitted(&self, caller: &CallerKey) -> Result<(), ApiError> {
        let Some(limiter) = &self.renders else { return Ok(()) };
        limiter.check_key(caller).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            ApiError::new(Code::RateLimited, "too many renders on request; slow down").retry_after(seconds.max(1))
        })
    }

    /// A slot for one long poll or event stream, or 503 when the caller has
    /// `max_watchers_per_caller` open or everyone `max_watchers`: each one reads the store every
    /// quarter second.
    pub fn watch_slot(&self, caller: &CallerKey) -> Result<Slot, ApiError> {
        self.watchers.slot(caller)
    }

    /// A slot for one upload, or 503 when the caller has `max_uploads_per_caller` being received
    /// or everyone `max_concurrent_uploads`.
    pub fn upload_slot(&self, caller: &CallerKey) -> Result<Slot, ApiError> {
        self.uploads.slot(caller)
    }

    /// The client's address: the peer, or when the peer is a trusted proxy, the right-most
    /// `X-Forwarded-For` hop that is not one (the hops left of it are whatever the client said).
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let trusted = |ip: &IpAddr| self.trusted_proxies.iter().any(|net| net.contains(ip));
        let mut client = peer.to_canonical();
        if !trusted(&client) {
            return client;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        for hop in hops.iter().rev() {
            // A hop that is not an address ends the chain: the last trusted one saw the client.
            let Ok(ip) = hop.trim().parse::<IpAddr>().map(|ip| ip.to_canonical()) else { break };
            client = ip;
            if !trusted(&ip) {
                break;
            }
        }
        client
    }
}

/// A rate limiter per caller, `per_second` in bursts of `burst` (`None` when `per_second` is 0).
fn keyed_rate(per_second: u32, burst: u32) -> Option<Arc<DefaultKeyedRateLimiter<CallerKey>>> {
    let per_second = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(burst).unwrap_or(per_second);
    let limiter = Arc::new(RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)));
    // Forget callers whose bucket is full again, so the table does not grow with every address
    // ever seen; the task ends with the last reference to the limiter.
    let weak = Arc::downgrade(&limiter);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            let Some(limiter) = weak.upgrade() else { break };
            limiter.retain_recent();
        }
    });
    Some(limiter)
}

/// Tells the handlers who is calling ([`CallerKey`]) and counts the request against that
/// caller's rate; over it, 429 with `Retry-After`. Probes (`/health`, `/ready`) are never limited.
pub async fn rate_limit(State(state): State<ApiState>, mut request: Request, next: Next) -> Response {
    let peer =
        request.extensions().get::<ConnectInfo<SocketAddr>>().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let key = match state.auth.identify(request.headers()) {
        Ok(Caller::Key(id)) => CallerKey::Key(id),
        // Without a (valid) key the address is all there is.
        _ => CallerKey::Address(client_key(state.guards.client_address(peer, request.headers()))),
    };
    request.extensions_mut().insert(key.clone());
    let (Some(limiter), false) = (&state.guards.rate, matches!(request.uri().path(), "/health" | "/ready")) else {
        return next.run(request).await;
    };
    match limiter.check_key(&key) {
        Ok(()) => next.run(request).await,
        Err(not_until) => {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            tracing::info!(?key, "rate limited for {wait:?}");
            ApiError::new(Code::RateLimited, "too many requests; slow down").retry_after(seconds.max(1)).into_response()
        }
    }
}
