//! Webhooks: when a job settles, pixbox POSTs `{id, key, state, renditions, error?}` to the URL
//! the route or the upload named, signed with HMAC-SHA256 over a timestamp and the body. A
//! delivery waits in the store (`.pixbox/webhooks/pending/`), so it outlives a restart; it is
//! retried with exponential backoff and recorded as failed (`.pixbox/webhooks/failed/`) once
//! `give_up_after_secs` have passed. Addresses the operator did not allow are never called:
//! loopback, link-local and private ranges are refused unless listed in `allow`, redirects are
//! not followed, and no more than a few KiB of an answer are read.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::jobs::{self, RESERVED_PREFIX};
use crate::storage::{BlobStore, Bucket, StoreError};

/// Where deliveries wait (permanent bucket).
pub const PENDING_PREFIX: &str = ".pixbox/webhooks/pending/";
/// Where deliveries that were given up on are kept, for `pixbox webhooks list --failed` and
/// `redeliver`.
pub const FAILED_PREFIX: &str = ".pixbox/webhooks/failed/";
/// The header with the timestamp and signature: `t=<unix seconds>,v1=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "pixbox-signature";
/// The header naming the delivery (the same on every retry: receivers drop repeats by it).
pub const ID_HEADER: &str = "pixbox-webhook-id";
/// The most of a receiver's answer that is read (for the log), however much it sends.
const MAX_ANSWER_BYTES: usize = 4 * 1024;
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Longest webhook URL accepted.
pub const MAX_URL_BYTES: usize = 2048;

/// `[webhooks]` in pixbox.toml.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// The HMAC key deliveries are signed with (at least 32 characters); needed as soon as a
    /// route names a webhook or `allow` lets uploads name one. `pixbox keys secret` prints one.
    pub signing_secret: String,
    /// Hosts webhook URLs given at upload may name, and the only private addresses any webhook
    /// may reach: names (`hooks.example.com`), addresses (`10.0.0.7`) or ranges (`10.0.0.0/8`),
    /// separated by spaces. Empty: uploads name no webhook, and only public addresses are called.
    pub allow: String,
    /// How long one attempt may take, connecting included.
    pub timeout_ms: u64,
    /// The wait before the first retry; each next one waits twice as long (at most an hour).
    pub first_retry_ms: u64,
    /// How long after the job settled a delivery is still tried; then it is recorded as failed.
    pub give_up_after_secs: u64,
    /// How often the worker looks for deliveries that are due.
    pub poll_ms: u64,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            signing_secret: String::new(),
            allow: String::new(),
            timeout_ms: 5_000,
            first_retry_ms: 10_000,
            give_up_after_secs: 24 * 3600,
            poll_ms: 1_000,
        }
    }
}

/// The secret stays out of logs and error messages.
impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("signing_secret", &if self.signing_secret.is_empty() { "" } else { "<set>" })
            .field("allow", &self.allow)
            .field("timeout_ms", &self.timeout_ms)
            .field("first_retry_ms", &self.first_retry_ms)
            .field("give_up_after_secs", &self.give_up_after_secs)
            .field("poll_ms", &self.poll_ms)
            .finish()
    }
}

/// Why a webhook URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("webhook URL {0:?} is not an http(s) URL with a host")]
    Malformed(String),
    #[error("webhook URL {url:?}: {host} is a private, loopback or link-local address not listed in [webhooks] allow")]
    Private { url: String, host: String },
    #[error("webhook URL {url:?}: {host} is not listed in [webhooks] allow (uploads may name listed hosts only)")]
    NotListed { url: String, host: String },
    #[error("webhooks need [webhooks] signing_secret (PIXBOX_WEBHOOKS_SIGNING_SECRET) of at least 32 characters")]
    NoSecret,
}

/// The hosts and ranges of `allow`.
#[derive(Debug, Clone, Default)]
pub struct Allow {
    names: Vec<String>,
    nets: Vec<ipnet::IpNet>,
}

impl Allow {
    pub fn parse(list: &str) -> Result<Allow, String> {
        let mut allow = Allow::default();
        for entry in list.split_whitespace() {
            if let Ok(net) = entry.parse::<ipnet::IpNet>() {
                allow.nets.push(net);
            } else if let Ok(ip) = entry.parse::<IpAddr>() {
                allow.nets.push(ip.into());
            } else if entry.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') {
                allow.names.push(entry.to_ascii_lowercase());
            } else {
                return Err(format!("[webhooks] allow: {entry:?} is not a host name, address or range"));
            }
        }
        Ok(allow)
    }

    fn lists_name(&self, host: &str) -> bool {
        self.names.iter().any(|n| n.eq_ignore_ascii_case(host))
    }

    fn lists_ip(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// Whether `ip` may be called: a public address, or one that is listed.
    pub fn permits(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.lists_ip(ip)
    }

    /// Whether no upload may name a webhook.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.nets.is_empty()
    }
}

/// Whether an address is on the public internet: not loopback, private (RFC 1918, unique local),
/// link-local, shared (CGNAT), benchmarking, reserved, unspecified, multicast or broadcast; an
/// IPv6 address that carries an IPv4 one (mapped, compatible, NAT64, 6to4) is judged by it.
pub fn is_public(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (18..20).contains(&b)))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                is_public(IpAddr::V4(std::net::Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))))
            };
            // IPv4-compatible (::a.b.c.d), NAT64 (64:ff9b::/96, 64:ff9b:1::/48) and 6to4 (2002::/16).
            if s[..6] == [0; 6] || (s[0] == 0x64 && s[1] == 0xff9b) {
                return embedded(s[6], s[7]);
            }
            if s[0] == 0x2002 {
                return embedded(s[1], s[2]);
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// Who names a webhook URL: the operator (a route) or a client (an upload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamedBy {
    Route,
    Upload,
}

/// Checks a webhook URL without resolving it: its form; an address in it must be permitted; a
/// URL from an upload must name a listed host. Host names are checked again, against every
/// address they resolve to, at each delivery.
pub fn check_url(url: &str, allow: &Allow, by: NamedBy) -> Result<reqwest::Url, UrlError> {
    let malformed = || UrlError::Malformed(url.chars().take(200).collect());
    if url.len() > MAX_URL_BYTES {
        return Err(malformed());
    }
    let parsed = reqwest::Url::parse(url).map_err(|_| malformed())?;
    if !matches!(parsed.scheme(), "http" | "https") || !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(malformed());
    }
    let host = match parsed.host() {
        Some(url::Host::Domain(name)) => Host::Name(name.to_ascii_lowercase()),
        Some(url::Host::Ipv4(ip)) => Host::Ip(ip.into()),
        Some(url::Host::Ipv6(ip)) => Host::Ip(ip.into()),
        None => return Err(malformed()),
    };
    let listed = match &host {
        Host::Name(name) => allow.lists_name(name),
        Host::Ip(ip) => allow.lists_ip(*ip),
    };
    let shown = parsed.host_str().unwrap_or_default().to_string();
    if by == NamedBy::Upload && !listed {
        return Err(UrlError::NotListed { url: url.into(), host: shown });
    }
    let private = match &host {
        Host::Ip(ip) => !allow.permits(*ip),
        Host::Name(name) => {
            let name = name.trim_end_matches('.');
            !listed && (name == "localhost" || name.ends_with(".localhost"))
        }
    };
    if private {
        return Err(UrlError::Private { url: url.into(), host: shown });
    }
    Ok(parsed)
}

enum Host {
    Name(String),
    Ip(IpAddr),
}

/// What a receiver is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// The delivery's id (also in the `Pixbox-Webhook-Id` header).
    pub id: String,
    pub key: String,
    /// `done` or `failed`.
    pub state: String,
    /// The download path of every rendition, by name (relative to the api's address; signed
    /// URLs come from `/status`).
    pub renditions: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<jobs::Failure>,
    /// When the job settled (Unix milliseconds).
    pub settled_ms: u64,
}

impl Event {
    /// The event of `key` settled in `state` now, for `url`. Its id is the same for the same URL,
    /// key and state,
    /// so a job that settles twice (a duplicate delivery) is not announced twice while the first
    /// announcement waits.
    pub fn new(
        url: &str,
        key: &str,
        state: &str,
        renditions: std::collections::BTreeMap<String, String>,
        error: Option<jobs::Failure>,
    ) -> Event {
        use sha2::Digest;
        let id = hex::encode(&Sha256::digest(format!("{url}\n{key}\n{state}").as_bytes())[..16]);
        Event { id, key: key.into(), state: state.into(), renditions, error, settled_ms: unix_ms() }
    }
}

/// A delivery as it waits in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    pub id: String,
    pub url: String,
    /// The JSON body, exactly as signed and sent.
    pub body: String,
    pub attempts: u32,
    /// When the next attempt is due (Unix milliseconds).
    pub next_ms: u64,
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Queues `event` for `url`: written once (a second event with the same id while the first
/// waits is the same announcement).
pub async fn enqueue(store: &dyn BlobStore, url: &str, event: &Event) -> Result<(), StoreError> {
    let now = unix_ms();
    let body = serde_json::to_string(event).expect("an event serializes");
    let outgoing = Outgoing {
        id: event.id.clone(),
        url: url.into(),
        body,
        attempts: 0,
        next_ms: now,
        created_ms: now,
        last_error: None,
    };
    jobs::put_record_if_absent(store, Bucket::Permanent, &format!("{PENDING_PREFIX}{}", event.id), &outgoing).await?;
    Ok(())
}

/// The deliveries waiting (`failed`: those given up on), oldest first.
pub async fn list(store: &dyn BlobStore, failed: bool) -> Result<Vec<Outgoing>, StoreError> {
    let prefix = if failed { FAILED_PREFIX } else { PENDING_PREFIX };
    let mut out = Vec::new();
    for key in store.list(Bucket::Permanent, prefix).await? {
        if let Some(outgoing) = jobs::record::<Outgoing>(store, Bucket::Permanent, &key).await? {
            out.push(outgoing);
        }
    }
    out.sort_by_key(|o| o.created_ms);
    Ok(out)
}

/// Moves failed deliveries (`ids`, or all when empty) back to pending, due now, with a fresh day
/// of retries. Returns how many were moved.
pub async fn redeliver(store: &dyn BlobStore, ids: &[String]) -> Result<usize, StoreError> {
    let mut moved = 0;
    for mut outgoing in list(store, true).await? {
        if !ids.is_empty() && !ids.contains(&outgoing.id) {
            continue;
        }
        outgoing.attempts = 0;
        outgoing.next_ms = unix_ms();
        outgoing.created_ms = unix_ms();
        jobs::put_record(store, Bucket::Permanent, &format!("{PENDING_PREFIX}{}", outgoing.id), &outgoing).await?;
        store.delete(Bucket::Permanent, &format!("{FAILED_PREFIX}{}", outgoing.id)).await?;
        moved += 1;
    }
    Ok(moved)
}

/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, as `Pixbox-Signature` carries it.
pub fn signature(secret: &[u8], timestamp: u64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body.as_bytes());
    format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// What one round of deliveries came to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub delivered: usize,
    pub retried: usize,
    pub failed: usize,
}

/// Delivers what is due, from the store, over one HTTP client that only reaches allowed addresses.
pub struct Deliverer {
    store: Arc<dyn BlobStore>,
    client: reqwest::Client,
    allow: Arc<Allow>,
    secret: Vec<u8>,
    settings: WebhookSettings,
}

impl Deliverer {
    pub fn new(store: Arc<dyn BlobStore>, settings: &WebhookSettings) -> Result<Deliverer, String> {
        let allow = Arc::new(Allow::parse(&settings.allow)?);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve and reach the receiver itself, past the resolver's check.
            .no_proxy()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .connect_timeout(Duration::from_millis(settings.timeout_ms))
            .dns_resolver(Arc::new(Guarded { allow: allow.clone() }))
            .user_agent(concat!("pixbox/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("webhook client: {e}"))?;
        Ok(Deliverer {
            store,
            client,
            allow,
            secret: settings.signing_secret.as_bytes().to_vec(),
            settings: settings.clone(),
        })
    }

    /// Tries every delivery that is due once.
    pub async fn round(&self) -> Result<Round, StoreError> {
        let mut round = Round::default();
        let now = unix_ms();
        for key in self.store.list(Bucket::Permanent, PENDING_PREFIX).await? {
            let Some(mut outgoing) = jobs::record::<Outgoing>(&*self.store, Bucket::Permanent, &key).await? else {
                continue;
            };
            if outgoing.next_ms > now {
                continue;
            }
            // Taken for the length of an attempt: another worker's round leaves it alone meanwhile.
            let lease = outgoing.clone();
            outgoing.next_ms = now + 2 * self.settings.timeout_ms;
            jobs::put_record(&*self.store, Bucket::Permanent, &key, &outgoing).await?;
            outgoing.next_ms = lease.next_ms;
            match self.send(&outgoing).await {
                Ok(()) => {
                    self.store.delete(Bucket::Permanent, &key).await?;
                    tracing::info!(
                        id = outgoing.id,
                        url = outgoing.url,
                        attempts = outgoing.attempts + 1,
                        "webhook delivered"
                    );
                    crate::telemetry::webhook("delivered");
                    round.delivered += 1;
                }
                Err(why) => {
                    outgoing.attempts += 1;
                    outgoing.last_error = Some(why.clone());
                    let age = Duration::from_millis(unix_ms().saturating_sub(outgoing.created_ms));
                    if age >= Duration::from_secs(self.settings.give_up_after_secs) {
                        let failed = format!("{FAILED_PREFIX}{}", outgoing.id);
                        jobs::put_record(&*self.store, Bucket::Permanent, &failed, &outgoing).await?;
                        self.store.delete(Bucket::Permanent, &key).await?;
                        tracing::warn!(
                            id = outgoing.id,
                            url = outgoing.url,
                            attempts = outgoing.attempts,
                            "webhook failed for good: {why}"
                        );
                        crate::telemetry::webhook("failed");
                        round.failed += 1;
                    } else {
                        let backoff = Duration::from_millis(self.settings.first_retry_ms)
                            .saturating_mul(1u32 << (outgoing.attempts - 1).min(20))
                            .min(MAX_BACKOFF);
                        outgoing.next_ms = unix_ms() + backoff.as_millis() as u64;
                        jobs::put_record(&*self.store, Bucket::Permanent, &key, &outgoing).await?;
                        tracing::info!(
                            id = outgoing.id,
                            url = outgoing.url,
                            attempts = outgoing.attempts,
                            retry_in_ms = backoff.as_millis() as u64,
                            "webhook not delivered: {why}"
                        );
                        crate::telemetry::webhook("retry");
                        round.retried += 1;
                    }
                }
            }
        }
        Ok(round)
    }

    /// One attempt: `Ok` on a 2xx answer.
    async fn send(&self, outgoing: &Outgoing) -> Result<(), String> {
        // An address in the URL is not resolved, so the resolver's check does not see it.
        let url = reqwest::Url::parse(&outgoing.url).map_err(|e| format!("not a URL: {e}"))?;
        if let Some(ip) = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::from(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::from(ip)),
            _ => None,
        } && !self.allow.permits(ip)
        {
            return Err(format!("{ip} is not an allowed address"));
        }
        let timestamp = unix_ms() / 1000;
        let answer = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(ID_HEADER, &outgoing.id)
            .header(SIGNATURE_HEADER, signature(&self.secret, timestamp, &outgoing.body))
            .body(outgoing.body.clone())
            .send()
            .await
            .map_err(|e| describe(&e))?;
        let status = answer.status();
        if status.is_success() {
            return Ok(());
        }
        let text = read_at_most(answer, MAX_ANSWER_BYTES).await;
        Err(format!("answered {status}: {}", text.chars().take(200).collect::<String>()))
    }

    /// Delivers what is due every `poll_ms` until `stop`.
    pub async fn run(self, stop: tokio_util::sync::CancellationToken) {
        let every = Duration::from_millis(self.settings.poll_ms.max(50));
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.round().await {
                tracing::warn!("webhooks: {e}");
            }
        }
    }
}

/// An error of the client with its cause (reqwest's own text hides it).
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// Up to `limit` bytes of an answer, as text; the rest is never read.
async fn read_at_most(mut answer: reqwest::Response, limit: usize) -> String {
    let mut read = Vec::new();
    while read.len() < limit {
        match answer.chunk().await {
            Ok(Some(chunk)) => read.extend_from_slice(&chunk[..chunk.len().min(limit - read.len())]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&read).into_owned()
}

/// The resolver of the webhook client: a name's addresses, less those not allowed (a name that
/// is listed may resolve anywhere). A name left with none is refused, so a public name pointed
/// at a private address (DNS rebinding) reaches nothing.
struct Guarded {
    allow: Arc<Allow>,
}

impl reqwest::dns::Resolve for Guarded {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let listed = allow.lists_name(&host);
            let permitted: Vec<SocketAddr> = found.into_iter().filter(|a| listed || allow.permits(a.ip())).collect();
            if permitted.is_empty() {
                let refused: Box<dyn std::error::Error + Send + Sync> = format!(
                    "{host} resolves to no address webhooks may reach (private addresses need [webhooks] allow)"
                )
                .into();
                return Err(refused);
            }
            Ok(Box::new(permitted.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `RESERVED_PREFIX` is where the two folders live; checked so they never move out of it.
const _: () = assert!(PENDING_PREFIX.len() > RESERVED_PREFIX.len());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_refused_unless_listed() {
        let none = Allow::default();
        for url in [
            "http://127.0.0.1:9/x",
            "http://10.1.2.3/",
            "http://[::1]/",
            "http://169.254.169.254/latest",
            "http://localhost:80/",
            "http://localhost./",
            "http://[fe80::1]/",
            "http://100.64.0.1/",
            "http://[::ffff:192.168.0.1]/",
            "http://[64:ff9b::a00:1]/",
            "http://[2002:7f00:1::]/",
            "http://198.18.0.1/",
            "http://[::127.0.0.1]/",
            "http://240.0.0.1/",
        ] {
            assert!(matches!(check_url(url, &none, NamedBy::Route), Err(UrlError::Private { .. })), "{url}");
        }
        assert!(check_url("https://hooks.example.com/pixbox", &none, NamedBy::Route).is_ok());
        assert!(check_url("https://8.8.8.8/", &none, NamedBy::Route).is_ok());
        let listed = Allow::parse("127.0.0.1 10.0.0.0/8 hooks.example.com").unwrap();
        assert!(check_url("http://127.0.0.1:9/x", &listed, NamedBy::Upload).is_ok());
        assert!(check_url("http://10.9.9.9/x", &listed, NamedBy::Upload).is_ok());
        assert!(check_url("https://HOOKS.example.com/x", &listed, NamedBy::Upload).is_ok());
        assert!(matches!(
            check_url("https://other.example.com/", &listed, NamedBy::Upload),
            Err(UrlError::NotListed { .. })
        ));
        for bad in ["ftp://hooks.example.com/", "http://user:pw@hooks.example.com/", "not a url", "http://"] {
            assert!(matches!(check_url(bad, &listed, NamedBy::Route), Err(UrlError::Malformed(_))), "{bad}");
        }
        assert!(Allow::parse("10.0.0.0/8 bad/host").is_err());
    }

    /// The signature a receiver computes from the header's timestamp and the body it received.
    #[test]
    fn the_signature_is_hmac_sha256_over_the_timestamp_and_the_body() {
        let header = signature(b"0123456789abcdef0123456789abcdef", 1_700_000_000, r#"{"key":"a.png"}"#);
        // printf '%s' '1700000000.{"key":"a.png"}' | openssl dgst -sha256 -hmac 0123456789abcdef0123456789abcdef
        assert_eq!(header, "t=1700000000,v1=24f57ad8a9c15a09d3b4d2523c0cf328053d6fa2eebcd9b72b115615df3a1ab0");
    }
}
