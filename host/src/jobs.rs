//! What the api and the worker agree on: the job message, where results and failure records live,
//! and how a key's state is read from the store (nothing about jobs is kept in process memory).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::storage::{BlobStore, Bucket, ObjectInfo, ObjectMeta, StoreError};

/// The queue message for one image: ids only, never image bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub key: String,
    /// For an upload of several images: the upload, whose commit record must exist before any of
    /// its jobs runs (its jobs go out in several sends, and one may fail after others went out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadRef>,
    /// Sent by `pixbox jobs retry`: the worker removes the job's failure record (marked
    /// [`RETRYING`]) when it takes the job, then runs it. The retry marks the record instead of
    /// removing it, so the original is never unreferenced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry: bool,
}

/// Which upload a job belongs to and when it was queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRef {
    pub id: String,
    /// Unix time in milliseconds when the job was queued.
    pub queued_ms: u64,
}

impl UploadRef {
    /// A new upload, queued now.
    pub fn new() -> Self {
        UploadRef { id: uuid::Uuid::now_v7().to_string(), queued_ms: unix_ms() }
    }

    /// How long ago the upload's jobs were queued.
    pub fn age(&self) -> std::time::Duration {
        std::time::Duration::from_millis(unix_ms().saturating_sub(self.queued_ms))
    }
}

impl Default for UploadRef {
    fn default() -> Self {
        Self::new()
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Job {
    pub fn to_body(&self) -> String {
        serde_json::to_string(self).expect("job serializes")
    }
}

/// Keys under this prefix are pixbox's own bookkeeping; uploads may not use it.
pub const RESERVED_PREFIX: &str = ".pixbox/";

/// Where the failure record of `key` is kept (permanent bucket).
pub fn failure_key(key: &str) -> String {
    format!("{RESERVED_PREFIX}failed/{key}")
}

/// Where the commit record of an upload of several images is kept (temp bucket). It lists the
/// upload's keys; it is written after all of the upload's jobs are queued and removed when all of
/// them are settled.
pub fn commit_key(upload: &str) -> String {
    format!("{RESERVED_PREFIX}uploads/{upload}")
}

/// Where rendition `name` of `key` is stored (permanent bucket), unless it is the route's default
/// rendition, which is stored under `key` itself. A path below the key: S3 users can serve
/// `{key}` and `{key}/{name}` straight from the bucket.
pub fn rendition_key(key: &str, name: &str) -> String {
    format!("{key}/{name}")
}

/// The metadata entry of a result that lists every rendition its job made (comma-separated).
pub const RENDITIONS_META: &str = "renditions";
/// The metadata entry of an original with the focal point given at upload (`x,y` fractions).
pub const FOCUS_META: &str = "focus";

/// The metadata entry of a result with the input's dominant colour (`#rrggbb`), when the plugin
/// computed a placeholder.
pub const DOMINANT_COLOR_META: &str = "dominant-color";
/// The metadata entry of a result with the input's ThumbHash (standard base64).
pub const THUMBHASH_META: &str = "thumbhash";

/// The upload id of a commit record's key, or `None` for any other key.
pub fn upload_of_commit_key(key: &str) -> Option<&str> {
    key.strip_prefix(RESERVED_PREFIX)?.strip_prefix("uploads/")
}

/// The codes a job's failure (or a retry of it) is recorded and logged with by the worker itself,
/// one table; the plugin's and the sandbox's are `sandbox::TransformError::code`'s.
pub mod codes {
    /// The queue gave up on the job (it is dead-lettered).
    pub const GAVE_UP: &str = "gave-up";
    /// A failure record that `pixbox jobs retry` has queued again: the job reads as pending, and
    /// the record keeps the original from the orphan sweep until a worker takes the retry (and
    /// removes the record).
    pub const RETRYING: &str = "retrying";
    /// The original is not in the temporary bucket (and no result is there).
    pub const MISSING_ORIGINAL: &str = "missing-original";
    /// The original is larger than the worker reads.
    pub const IMAGE_TOO_LARGE: &str = "image-too-large";
    /// The original's header cannot be read.
    pub const UNREADABLE_IMAGE: &str = "unreadable-image";
    /// The original is over today's pixel limits.
    pub const TOO_MANY_PIXELS: &str = "too-many-pixels";
    /// A store call failed: retried.
    pub const STORE_UNAVAILABLE: &str = "store-unavailable";
    /// No sandbox slot in time: retried.
    pub const SANDBOX_BUSY: &str = "sandbox-busy";
    /// The result's write was refused, yet no result is there: retried.
    pub const RESULT_NOT_CONFIRMED: &str = "result-not-confirmed";
    /// A failure record that cannot be read (written by something else).
    pub const FAILED: &str = "failed";
}
pub use codes::{GAVE_UP, RETRYING};

/// Why a job failed for good, as stored and as reported by `/status` and `/download`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Failure {
    /// A stable kebab-case reason (`bad-input`, `timeout`, `too-many-pixels`, ...).
    pub code: String,
    /// A short human-readable reason (details such as plugin output stay in the server's log).
    pub message: String,
    /// The plugin that ran, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// How many times the job was received.
    pub attempts: u32,
}

/// Writes the failure record of `key`.
pub async fn record_failure(store: &dyn BlobStore, key: &str, failure: &Failure) -> Result<(), StoreError> {
    store.put(Bucket::Permanent, &failure_key(key), json(failure), &json_meta()).await
}

/// Writes the commit record of an upload of several images.
pub async fn commit_upload(store: &dyn BlobStore, upload: &str, keys: &[String]) -> Result<(), StoreError> {
    store.put(Bucket::Temp, &commit_key(upload), json(&keys), &json_meta()).await
}

/// The keys of a committed upload, or `None` when it is not committed (yet, or ever).
pub async fn committed_keys(store: &dyn BlobStore, upload: &str) -> Result<Option<Vec<String>>, StoreError> {
    let Some(object) = found(store.get(Bucket::Temp, &commit_key(upload)).await)? else { return Ok(None) };
    let bytes = object.bytes(1 << 20).await?;
    Ok(Some(serde_json::from_slice(&bytes).unwrap_or_default()))
}

fn json(value: &impl Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("record serializes"))
}

fn json_meta() -> ObjectMeta {
    ObjectMeta { content_type: "application/json".into(), metadata: Default::default() }
}

/// Where a key stands.
#[derive(Debug)]
pub enum State {
    Done(ObjectInfo),
    Pending,
    Failed(Failure),
    Unknown,
}

/// Reads a key's state: result, then failure record, then original. The result is looked up
/// again after a miss on the original, because the worker may finish between the two reads.
pub async fn state(store: &dyn BlobStore, key: &str) -> Result<State, StoreError> {
    if let Some(info) = found(store.head(Bucket::Permanent, key).await)? {
        return Ok(State::Done(info));
    }
    if let Some(failure) = failure(store, key).await? {
        return Ok(if failure.code == RETRYING { State::Pending } else { State::Failed(failure) });
    }
    if found(store.head(Bucket::Temp, key).await)?.is_some() {
        return Ok(State::Pending);
    }
    Ok(match found(store.head(Bucket::Permanent, key).await)? {
        Some(info) => State::Done(info),
        None => State::Unknown,
    })
}

/// The failure record of `key`, if there is one.
pub async fn failure(store: &dyn BlobStore, key: &str) -> Result<Option<Failure>, StoreError> {
    let Some(object) = found(store.get(Bucket::Permanent, &failure_key(key)).await)? else { return Ok(None) };
    let bytes = object.bytes(64 * 1024).await?;
    Ok(Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        tracing::warn!(key, "unreadable failure record: {e}");
        Failure { code: codes::FAILED.into(), message: "the job failed".into(), plugin: None, attempts: 0 }
    })))
}

/// `NotFound` as `None`, other errors as errors.
pub fn found<T>(result: Result<T, StoreError>) -> Result<Option<T>, StoreError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}
