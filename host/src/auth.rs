//! Who may do what: API keys with scopes, kept as SHA-256 hashes and compared in constant time,
//! and HMAC-SHA256 signed URLs for reads.
//!
//! Secure by default: with no key configured pixbox serves only on a loopback address, where it
//! is open (a developer's machine); anywhere else it refuses to start until a key is added or
//! `[auth] mode = "none"` opts out explicitly.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Whether pixbox checks callers at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// API keys (the default).
    Keys,
    /// Nobody is checked, on any address: an explicit opt-out.
    None,
}

/// Who may read results (`/download`, `/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reads {
    /// Anyone who knows the key (keys are random and unguessable).
    Public,
    /// Callers with an API key holding the `read` scope.
    Key,
    /// A URL signed by pixbox (returned by `/upload`) until it expires, or a `read` key.
    Signed,
}

/// `[auth]` in pixbox.toml.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    pub mode: AuthMode,
    /// API keys as `scopes:sha256-hex` entries separated by spaces or `;`
    /// (`pixbox keys new` prints one), e.g. `upload,read:9f86d0...`.
    pub keys: String,
    pub reads: Reads,
    /// The HMAC key of signed URLs (`reads = "signed"`), at least 32 characters; every api process
    /// must share it.
    pub signing_secret: String,
    /// The signing secret before the current one, while URLs it signed may still be out there:
    /// they stay valid until they expire. New URLs are signed with `signing_secret` only.
    pub signing_secret_previous: String,
    /// How long a signed URL stays valid.
    pub signed_url_ttl_secs: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            mode: AuthMode::Keys,
            keys: String::new(),
            reads: Reads::Public,
            signing_secret: String::new(),
            signing_secret_previous: String::new(),
            signed_url_ttl_secs: 7 * 24 * 3600,
        }
    }
}

/// The secret stays out of logs and error messages.
impl fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthSettings")
            .field("mode", &self.mode)
            .field("keys", &self.keys)
            .field("reads", &self.reads)
            .field("signing_secret", &if self.signing_secret.is_empty() { "" } else { "<set>" })
            .field("signing_secret_previous", &if self.signing_secret_previous.is_empty() { "" } else { "<set>" })
            .field("signed_url_ttl_secs", &self.signed_url_ttl_secs)
            .finish()
    }
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `POST /upload`.
    Upload,
    /// `/download` and `/status` when reads are not public.
    Read,
    /// Operator tools.
    Admin,
}

impl Scope {
    const ALL: [Scope; 3] = [Scope::Upload, Scope::Read, Scope::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Upload => "upload",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }

    fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Why the auth settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error(
        "refusing to listen on {listen} without an API key: anyone who reaches it could upload. \
         Create a key with `pixbox keys new` and put the entry it prints in [auth] keys (or \
         PIXBOX_AUTH_KEYS), or opt out explicitly with [auth] mode = \"none\" (PIXBOX_AUTH_MODE=none)"
    )]
    NoKeys { listen: String },
    #[error("[auth] keys entry {entry:?}: {reason} (expected scopes:sha256-hex, as printed by `pixbox keys new`)")]
    BadEntry { entry: String, reason: String },
    #[error(
        "[auth] reads = \"signed\" needs a signing_secret (PIXBOX_AUTH_SIGNING_SECRET) of at least 32 \
         characters shared by every api process; `pixbox keys secret` prints one"
    )]
    NoSecret,
    #[error(
        "[auth] signing_secret_previous (PIXBOX_AUTH_SIGNING_SECRET_PREVIOUS) must be at least 32 characters, or empty"
    )]
    ShortPreviousSecret,
}

/// One configured key: the hash of the key, never the key.
#[derive(Debug, Clone)]
struct KeyEntry {
    hash: [u8; 32],
    scopes: u8,
}

impl KeyEntry {
    /// The key's id: the first 16 hex digits of its hash.
    fn id(&self) -> String {
        hex::encode(&self.hash[..8])
    }

    fn parse(entry: &str) -> Result<KeyEntry, AuthConfigError> {
        let bad = |reason: &str| AuthConfigError::BadEntry { entry: entry.into(), reason: reason.into() };
        let (scopes, hash) = entry.rsplit_once(':').ok_or_else(|| bad("no ':' between the scopes and the hash"))?;
        let hash = hash.strip_prefix("sha256-").unwrap_or(hash);
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hash, &mut bytes).map_err(|_| bad("the hash is not 64 hex digits"))?;
        let mut bits = 0;
        for name in scopes.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            bits |=
                Scope::parse(name).ok_or_else(|| bad(&format!("unknown scope {name:?} (upload, read, admin)")))?.bit();
        }
        if bits == 0 {
            return Err(bad("no scope"));
        }
        Ok(KeyEntry { hash: bytes, scopes: bits })
    }
}

/// Who made a request, for rate limits and logs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    /// A configured key, named by the first 16 hex digits of its hash (an image records the
    /// key that uploaded it by this id, for deletes).
    Key(String),
    /// No key: known by address only.
    Anonymous,
}

/// The checks, shared by every handler.
#[derive(Clone)]
pub struct Auth(Arc<Inner>);

struct Inner {
    /// False when nobody is checked (opt-out, or no key on a loopback address).
    enforcing: bool,
    keys: Vec<KeyEntry>,
    reads: Reads,
    secret: Vec<u8>,
    /// `signing_secret_previous`, empty when there is none.
    previous_secret: Vec<u8>,
    ttl: Duration,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("enforcing", &self.0.enforcing)
            .field("keys", &self.0.keys.len())
            .field("reads", &self.0.reads)
            .finish()
    }
}

impl Auth {
    /// Nobody is checked.
    pub fn open() -> Auth {
        Auth(Arc::new(Inner {
            enforcing: false,
            keys: Vec::new(),
            reads: Reads::Public,
            secret: Vec::new(),
            previous_secret: Vec::new(),
            ttl: Duration::ZERO,
        }))
    }

    /// Checks the settings against the address the api will listen on.
    pub fn from_settings(settings: &AuthSettings, listen: &str) -> Result<Auth, AuthConfigError> {
        if settings.mode == AuthMode::None {
            tracing::warn!("[auth] mode = \"none\": anyone who reaches {listen} may upload and read");
            return Ok(Auth::open());
        }
        let keys = settings
            .keys
            .split(|c: char| c == ';' || c.is_whitespace())
            .filter(|e| !e.is_empty())
            .map(KeyEntry::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            if !is_loopback(listen) {
                return Err(AuthConfigError::NoKeys { listen: listen.into() });
            }
            tracing::warn!("no API key configured: open to anyone on this machine ({listen})");
            return Ok(Auth::open());
        }
        if settings.reads == Reads::Signed && settings.signing_secret.len() < 32 {
            return Err(AuthConfigError::NoSecret);
        }
        if !settings.signing_secret_previous.is_empty() && settings.signing_secret_previous.len() < 32 {
            return Err(AuthConfigError::ShortPreviousSecret);
        }
        Ok(Auth(Arc::new(Inner {
            enforcing: true,
            keys,
            reads: settings.reads,
            secret: settings.signing_secret.as_bytes().to_vec(),
            previous_secret: settings.signing_secret_previous.as_bytes().to_vec(),
            ttl: Duration::from_secs(settings.signed_url_ttl_secs),
        })))
    }

    /// Who is calling. A presented key must be a configured one (401 otherwise); no key at all is
    /// `Anonymous`, which only an open service lets through [`Auth::require`].
    pub fn identify(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        Ok(self.lookup(headers)?.map_or(Caller::Anonymous, |e| Caller::Key(e.id())))
    }

    /// The caller may do `scope`: 401 without a (valid) key, 403 with a key lacking the scope.
    pub fn require(&self, headers: &HeaderMap, scope: Scope) -> Result<Caller, AuthError> {
        if !self.0.enforcing {
            return Ok(Caller::Anonymous);
        }
        let entry = self
            .lookup(headers)?
            .ok_or(AuthError::Unauthorized("this needs an API key: send `Authorization: Bearer <key>`"))?;
        if entry.scopes & scope.bit() == 0 {
            return Err(AuthError::Forbidden(scope));
        }
        Ok(Caller::Key(entry.id()))
    }

    /// The caller may delete an image uploaded by `owner` (the id of an API key, `None` when not
    /// recorded): with an `admin` key, or with the `upload` key that uploaded it.
    pub fn require_owner(&self, headers: &HeaderMap, owner: Option<&str>) -> Result<Caller, AuthError> {
        if !self.0.enforcing {
            return Ok(Caller::Anonymous);
        }
        let entry = self
            .lookup(headers)?
            .ok_or(AuthError::Unauthorized("this needs an API key: send `Authorization: Bearer <key>`"))?;
        if entry.scopes & Scope::Admin.bit() != 0 {
            return Ok(Caller::Key(entry.id()));
        }
        if entry.scopes & Scope::Upload.bit() == 0 {
            return Err(AuthError::Forbidden(Scope::Upload));
        }
        if owner != Some(entry.id().as_str()) {
            return Err(AuthError::NotOwner);
        }
        Ok(Caller::Key(entry.id()))
    }

    /// The configured entry of the request's key, `None` without one (or when nobody is checked).
    fn lookup(&self, headers: &HeaderMap) -> Result<Option<&KeyEntry>, AuthError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else { return Ok(None) };
        if !self.0.enforcing {
            return Ok(None);
        }
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(AuthError::Unauthorized("the Authorization header must be `Bearer <key>`"))?;
        self.entry(presented).map(Some).ok_or(AuthError::Unauthorized("unknown API key"))
    }

    /// A read of `key` through `/{kind}/...` (`download` or `status`): public, a `read` key, or a
    /// valid signature on this very kind and key, as `reads` says.
    pub fn authorize_read(&self, headers: &HeaderMap, kind: &str, key: &str, signed: &Signed) -> Result<(), AuthError> {
        if !self.0.enforcing || self.0.reads == Reads::Public {
            return Ok(());
        }
        if self.0.reads == Reads::Signed && (signed.sig.is_some() || signed.expires.is_some()) {
            return self.verify(kind, key, signed);
        }
        self.require(headers, Scope::Read).map(|_| ())
    }

    /// Whether anyone may read results (so shared caches may keep them).
    pub fn reads_are_public(&self) -> bool {
        !self.0.enforcing || self.0.reads == Reads::Public
    }

    /// The query string that grants a read of `key` through `/{kind}/...`, when reads are signed.
    pub fn sign(&self, kind: &str, key: &str) -> Option<String> {
        if !self.0.enforcing || self.0.reads != Reads::Signed {
            return None;
        }
        let expires = unix_now().saturating_add(self.0.ttl.as_secs());
        Some(format!(
            "expires={expires}&sig={}",
            URL_SAFE_NO_PAD.encode(mac(&self.0.secret, kind, key, expires).finalize().into_bytes())
        ))
    }

    fn verify(&self, kind: &str, key: &str, signed: &Signed) -> Result<(), AuthError> {
        let (Some(expires), Some(sig)) = (signed.expires, signed.sig.as_deref()) else {
            return Err(AuthError::BadSignature("a signed URL needs both expires and sig"));
        };
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| AuthError::BadSignature("sig is not base64url"))?;
        // Checked before the expiry, so an edited expiry reads as tampering, not as expired.
        let signed_by =
            |secret: &[u8]| !secret.is_empty() && mac(secret, kind, key, expires).verify_slice(&sig).is_ok();
        if !signed_by(&self.0.secret) && !signed_by(&self.0.previous_secret) {
            return Err(AuthError::BadSignature("the signature does not match this URL"));
        }
        if expires < unix_now() {
            return Err(AuthError::Expired);
        }
        Ok(())
    }

    /// The configured entry of a presented key. Every entry is compared, in constant time, so the
    /// answer's timing says nothing about which hash came close.
    fn entry(&self, presented: &str) -> Option<&KeyEntry> {
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for entry in &self.0.keys {
            if bool::from(entry.hash.ct_eq(&hash)) {
                found = Some(entry);
            }
        }
        found
    }
}

/// The HMAC of a signed URL: kind, key and expiry under `secret`.
fn mac(secret: &[u8], kind: &str, key: &str, expires: u64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(format!("{kind}\n{key}\n{expires}").as_bytes());
    mac
}

/// `expires` and `sig` of a signed URL's query.
#[derive(Debug, Default, Deserialize)]
pub struct Signed {
    pub expires: Option<u64>,
    pub sig: Option<String>,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Loopback addresses and `localhost`; a name that does not parse counts as reachable from outside.
fn is_loopback(listen: &str) -> bool {
    if let Ok(addr) = listen.parse::<SocketAddr>() {
        return addr.ip().is_loopback();
    }
    let host = listen.rsplit_once(':').map_or(listen, |(h, _)| h);
    host == "localhost" || host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// 401: no key, an unknown key, or a malformed header.
    Unauthorized(&'static str),
    /// 403: the key lacks the scope.
    Forbidden(Scope),
    /// 403: a signed URL that does not match.
    BadSignature(&'static str),
    /// 403: a signed URL past its expiry.
    Expired,
    /// 403: an `upload` key acting on an image another key uploaded.
    NotOwner,
}

/// A new random API key and the `[auth] keys` entry that admits it with `scopes`.
pub fn new_key(scopes: &[Scope]) -> (String, String) {
    let key = format!("pbx_{}", URL_SAFE_NO_PAD.encode(random_bytes()));
    let names: Vec<&str> = scopes.iter().map(|s| s.name()).collect();
    let entry = format!("{}:{}", names.join(","), hex::encode(Sha256::digest(key.as_bytes())));
    (key, entry)
}

/// A new random signing secret (64 hex digits).
pub fn new_secret() -> String {
    hex::encode(random_bytes())
}

fn random_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    bytes
}

/// Parses `upload,read` as given to `pixbox keys new --scopes`.
pub fn parse_scopes(list: &str) -> Result<Vec<Scope>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| Scope::parse(s).ok_or_else(|| format!("unknown scope {s:?}: use upload, read, admin")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(keys: &str, reads: Reads) -> AuthSettings {
        AuthSettings { keys: keys.into(), reads, signing_secret: "s".repeat(32), ..AuthSettings::default() }
    }

    fn bearer_headers(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, format!("Bearer {key}").parse().unwrap());
        h
    }

    #[test]
    fn keys_are_checked_by_hash_and_scope() {
        let (upload, upload_entry) = new_key(&[Scope::Upload]);
        let (reader, read_entry) = new_key(&[Scope::Read]);
        let auth =
            Auth::from_settings(&settings(&format!("{upload_entry}; {read_entry}"), Reads::Key), "0.0.0.0:1").unwrap();
        assert!(auth.require(&bearer_headers(&upload), Scope::Upload).is_ok());
        assert_eq!(auth.require(&bearer_headers(&reader), Scope::Upload), Err(AuthError::Forbidden(Scope::Upload)));
        assert!(matches!(auth.require(&HeaderMap::new(), Scope::Upload), Err(AuthError::Unauthorized(_))));
        assert!(matches!(auth.require(&bearer_headers("pbx_guess"), Scope::Upload), Err(AuthError::Unauthorized(_))));
        assert!(
            matches!(auth.require(&bearer_headers(&upload_entry), Scope::Upload), Err(AuthError::Unauthorized(_))),
            "the hash is not the key"
        );
    }

    #[test]
    fn no_key_off_loopback_refuses_to_start() {
        let empty = AuthSettings::default();
        assert!(matches!(Auth::from_settings(&empty, "0.0.0.0:3000"), Err(AuthConfigError::NoKeys { .. })));
        assert!(matches!(Auth::from_settings(&empty, "[::]:3000"), Err(AuthConfigError::NoKeys { .. })));
        assert!(matches!(Auth::from_settings(&empty, "pixbox.example:3000"), Err(AuthConfigError::NoKeys { .. })));
        for loopback in ["127.0.0.1:0", "[::1]:3000", "localhost:3000"] {
            assert!(!Auth::from_settings(&empty, loopback).unwrap().0.enforcing, "{loopback}");
        }
        let none = AuthSettings { mode: AuthMode::None, ..AuthSettings::default() };
        assert!(!Auth::from_settings(&none, "0.0.0.0:3000").unwrap().0.enforcing);
    }

    #[test]
    fn bad_entries_and_missing_secrets_are_named() {
        let err = Auth::from_settings(&settings("upload:abc", Reads::Public), "127.0.0.1:1").unwrap_err();
        assert!(err.to_string().contains("64 hex"), "{err}");
        let (_, entry) = new_key(&[Scope::Upload]);
        let err = Auth::from_settings(&settings(&entry.replace("upload", "write"), Reads::Public), "127.0.0.1:1")
            .unwrap_err();
        assert!(err.to_string().contains("\"write\""), "{err}");
        let mut s = settings(&entry, Reads::Signed);
        s.signing_secret = "short".into();
        assert!(matches!(Auth::from_settings(&s, "127.0.0.1:1"), Err(AuthConfigError::NoSecret)));
        assert!(!format!("{:?}", settings(&entry, Reads::Signed)).contains("ssss"), "the secret is not printed");
    }

    #[test]
    fn signatures_bind_kind_key_and_expiry() {
        let (_, entry) = new_key(&[Scope::Upload]);
        let auth = Auth::from_settings(&settings(&entry, Reads::Signed), "127.0.0.1:1").unwrap();
        let query = auth.sign("download", "a/b.jpg").unwrap();
        let signed: Signed = serde_urlencoded::from_str(&query).unwrap();
        let none = HeaderMap::new();
        assert_eq!(auth.authorize_read(&none, "download", "a/b.jpg", &signed), Ok(()));
        assert!(matches!(auth.authorize_read(&none, "download", "a/c.jpg", &signed), Err(AuthError::BadSignature(_))));
        assert!(matches!(auth.authorize_read(&none, "status", "a/b.jpg", &signed), Err(AuthError::BadSignature(_))));
        let later = Signed { expires: signed.expires.map(|e| e + 1), sig: signed.sig.clone() };
        assert!(matches!(auth.authorize_read(&none, "download", "a/b.jpg", &later), Err(AuthError::BadSignature(_))));
        let past = unix_now() - 1;
        let sig = URL_SAFE_NO_PAD.encode(mac(&auth.0.secret, "download", "a/b.jpg", past).finalize().into_bytes());
        let expired = Signed { expires: Some(past), sig: Some(sig) };
        assert_eq!(auth.authorize_read(&none, "download", "a/b.jpg", &expired), Err(AuthError::Expired));
        assert!(matches!(
            auth.authorize_read(&none, "download", "a/b.jpg", &Signed::default()),
            Err(AuthError::Unauthorized(_))
        ));
    }

    /// After a rotation, URLs signed with the previous secret stay valid until they expire; new
    /// URLs use the new secret; a URL signed with neither is refused; a short previous secret is
    /// refused at start.
    #[test]
    fn urls_signed_with_the_previous_secret_stay_valid_until_they_expire() {
        let (_, entry) = new_key(&[Scope::Upload]);
        let old = Auth::from_settings(&settings(&entry, Reads::Signed), "127.0.0.1:1").unwrap();
        let old_url: Signed = serde_urlencoded::from_str(&old.sign("download", "a/b.jpg").unwrap()).unwrap();
        let mut rotated = settings(&entry, Reads::Signed);
        rotated.signing_secret_previous = rotated.signing_secret.clone();
        rotated.signing_secret = "n".repeat(32);
        let new = Auth::from_settings(&rotated, "127.0.0.1:1").unwrap();
        let none = HeaderMap::new();
        assert_eq!(new.authorize_read(&none, "download", "a/b.jpg", &old_url), Ok(()));
        let new_url: Signed = serde_urlencoded::from_str(&new.sign("download", "a/b.jpg").unwrap()).unwrap();
        assert_ne!(new_url.sig, old_url.sig, "new URLs are signed with the new secret");
        assert_eq!(new.authorize_read(&none, "download", "a/b.jpg", &new_url), Ok(()));
        let past = unix_now() - 1;
        let sig = URL_SAFE_NO_PAD.encode(mac(&old.0.secret, "download", "a/b.jpg", past).finalize().into_bytes());
        let expired = Signed { expires: Some(past), sig: Some(sig) };
        assert_eq!(new.authorize_read(&none, "download", "a/b.jpg", &expired), Err(AuthError::Expired));
        rotated.signing_secret_previous = String::new();
        let forgot = Auth::from_settings(&rotated, "127.0.0.1:1").unwrap();
        assert!(matches!(
            forgot.authorize_read(&none, "download", "a/b.jpg", &old_url),
            Err(AuthError::BadSignature(_))
        ));
        rotated.signing_secret_previous = "short".into();
        assert!(matches!(Auth::from_settings(&rotated, "127.0.0.1:1"), Err(AuthConfigError::ShortPreviousSecret)));
    }
}
