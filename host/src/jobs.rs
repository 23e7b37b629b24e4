//! What the api and the worker agree on: the job message, where results and failure records live,
//! and how a key's state is read from the store (nothing about jobs is kept in process memory).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use sha2::Digest as _;

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
    /// The URL the upload asked to be told at when the job settles (a route's own webhook is
    /// in the configuration, not here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
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
    /// The job of one uploaded image, on its own (not part of a larger upload), with no webhook.
    pub fn new(key: impl Into<String>) -> Job {
        Job { key: key.into(), upload: None, retry: false, webhook: None }
    }

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

/// Where the record that `key` was deleted is kept (permanent bucket): a job still queued for the
/// key, a render in flight and a duplicate upload find it and write nothing (a few bytes a key;
/// it also makes a second delete answer as the first did).
pub fn deleted_key(key: &str) -> String {
    format!("{RESERVED_PREFIX}deleted/{key}")
}

/// Where the alias record of `key` is kept (permanent bucket): a key made by a duplicate upload
/// (route `dedupe = true`), whose images are those of another key ([`Alias::of`]).
pub fn alias_key(key: &str) -> String {
    format!("{RESERVED_PREFIX}alias/{key}")
}

/// The folder of the references to `canonical`'s images (permanent bucket): one record per key
/// that serves them, its own key included, named [`ref_key`]. The images go when the last goes.
pub fn refs_prefix(canonical: &str) -> String {
    // Hashed: a key may be the start of another key, and listing must find this one's only.
    format!("{RESERVED_PREFIX}refs/{}/", &hex::encode(sha2::Sha256::digest(canonical.as_bytes()))[..32])
}

/// The reference of `key` to `canonical`'s images.
pub fn ref_key(canonical: &str, key: &str) -> String {
    format!("{}{key}", refs_prefix(canonical))
}

/// Where the key whose images hold the content `sha256` (hex) of an upload to the route of
/// `prefix` is recorded (permanent bucket), for `dedupe = true` routes.
pub fn content_key(prefix: &str, sha256: &str) -> String {
    let route = &hex::encode(sha2::Sha256::digest(prefix.as_bytes()))[..16];
    format!("{RESERVED_PREFIX}content/{route}/{sha256}")
}

/// An alias record, and a reference record: the key whose images a key serves, and the content
/// record that names it (so the last reference to go can remove it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alias {
    pub of: String,
    pub content: String,
    /// Who uploaded the alias (the API key's id; `None` for an open service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The webhook the alias's upload asked for, told when the images' job settles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
}

/// Whether the images of `key` are still wanted: it was not deleted, or other keys still serve
/// them (a duplicate upload's alias). A job, a render or a delete that finds them unwanted writes
/// nothing, or removes what it wrote.
pub async fn wanted(store: &dyn BlobStore, key: &str) -> Result<bool, StoreError> {
    if found(store.head(Bucket::Permanent, &deleted_key(key)).await)?.is_none() {
        return Ok(true);
    }
    Ok(!store.list(Bucket::Permanent, &refs_prefix(key)).await?.is_empty())
}

/// The alias record of `key`, if it is an alias.
pub async fn alias(store: &dyn BlobStore, key: &str) -> Result<Option<Alias>, StoreError> {
    let Some(object) = found(store.get(Bucket::Permanent, &alias_key(key)).await)? else { return Ok(None) };
    Ok(serde_json::from_slice(&object.bytes(64 * 1024).await?).ok())
}

/// Writes a small JSON record.
pub async fn put_record(
    store: &dyn BlobStore,
    bucket: Bucket,
    key: &str,
    value: &impl Serialize,
) -> Result<(), StoreError> {
    store.put(bucket, key, json(value), &json_meta()).await
}

/// Writes a small JSON record unless one is there; returns whether it was written.
pub async fn put_record_if_absent(
    store: &dyn BlobStore,
    bucket: Bucket,
    key: &str,
    value: &impl Serialize,
) -> Result<bool, StoreError> {
    store.put_if_absent(bucket, key, json(value), &json_meta()).await
}

/// Reads a small JSON record; `None` when it is missing (or not what it should be: logged).
pub async fn record<T: serde::de::DeserializeOwned>(
    store: &dyn BlobStore,
    bucket: Bucket,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let Some(object) = found(store.get(bucket, key).await)? else { return Ok(None) };
    let bytes = object.bytes(1 << 20).await?;
    match serde_json::from_slice(&bytes) {
        Ok(value) => Ok(Some(value)),
        Err(e) => {
            tracing::warn!(key, "unreadable record: {e}");
            Ok(None)
        }
    }
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

/// Where the original of `key` is kept (permanent bucket) when its route keeps originals: the
/// source of later renders on request, never served itself.
pub fn original_key(key: &str) -> String {
    format!("{key}/original")
}

/// Where preset `preset` of `key` in `format` is stored (permanent bucket) once rendered.
pub fn preset_key(key: &str, preset: &str, format: crate::imaging::Format) -> String {
    format!("{key}/p/{preset}.{}", format.extension())
}

/// Where the variant `id` of a signed transform URL of `key` in `format` is stored.
pub fn transform_key(key: &str, id: &str, format: crate::imaging::Format) -> String {
    format!("{key}/t/{id}.{}", format.extension())
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

/// Whether a key (or one segment of it) is named like an uploaded image: it ends with the
/// extension of a format pixbox stores.
pub fn is_image_key(key: &str) -> bool {
    key.rsplit_once('.').is_some_and(|(_, ext)| ["jpg", "png", "webp", "gif", "avif"].contains(&ext))
}

/// Whether `key` names what pixbox derives from an image's key, a kept original or a stored
/// preset or transform, rather than an image: such keys are not read as images (an uploaded key
/// always ends with an image's extension, so `{image}/original`, `{image}/p/{file}` and
/// `{image}/t/{file}` are never uploads).
pub fn is_derived(key: &str) -> bool {
    let image_key = is_image_key;
    if let Some(base) = key.strip_suffix("/original") {
        return image_key(base);
    }
    match key.rsplit_once('/') {
        Some((rest, _)) => rest.strip_suffix("/p").or_else(|| rest.strip_suffix("/t")).is_some_and(image_key),
        None => false,
    }
}

/// What pixbox keeps with an image in its object's string metadata: on an original, its size and
/// the focal point given at upload; on a result, its size, the plugin and the rendition; on a
/// job's default rendition also every rendition the job made, its plugin calls and placeholder.
/// The metadata keys are named here only ([`ImageMeta::KEYS`]); an entry that is missing or does
/// not parse reads as `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageMeta {
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// The focal point given at upload (`x,y` fractions of the width and height).
    pub focus: Option<String>,
    /// The plugin that made a result (`name version`).
    pub plugin: Option<String>,
    /// Which rendition a result is.
    pub rendition: Option<String>,
    /// Every rendition the job made (stored comma-separated).
    pub renditions: Option<Vec<String>>,
    /// How many plugin calls the job took.
    pub plugin_calls: Option<u32>,
    /// The input's dominant colour (`#rrggbb`), when the plugin computed a placeholder.
    pub dominant_color: Option<String>,
    /// The input's ThumbHash (standard base64), with the dominant colour.
    pub thumbhash: Option<String>,
    /// Who uploaded the image: the id of the API key (`None` for an open service), which may
    /// delete it.
    pub owner: Option<String>,
}

impl ImageMeta {
    /// The metadata keys, in the order of the fields.
    pub const KEYS: [&str; 10] = [
        "width",
        "height",
        "focus",
        "plugin",
        "rendition",
        "renditions",
        "plugin-calls",
        "dominant-color",
        "thumbhash",
        "owner",
    ];

    /// The object metadata that stores this record.
    pub fn object(&self, content_type: &str) -> ObjectMeta {
        let number = |n: Option<u32>| n.map(|n| n.to_string());
        let values = [
            number(self.width),
            number(self.height),
            self.focus.clone(),
            self.plugin.clone(),
            self.rendition.clone(),
            self.renditions.as_ref().map(|names| names.join(",")),
            number(self.plugin_calls),
            self.dominant_color.clone(),
            self.thumbhash.clone(),
            self.owner.clone(),
        ];
        let metadata =
            Self::KEYS.iter().zip(values).filter_map(|(key, value)| Some((key.to_string(), value?))).collect();
        ObjectMeta { content_type: content_type.into(), metadata }
    }

    /// The record stored in `meta`.
    pub fn of(meta: &ObjectMeta) -> Self {
        let [width, height, focus, plugin, rendition, renditions, plugin_calls, dominant_color, thumbhash, owner] =
            Self::KEYS.map(|key| meta.metadata.get(key).cloned());
        let number = |text: Option<String>| text?.parse().ok();
        ImageMeta {
            width: number(width),
            height: number(height),
            focus,
            plugin,
            rendition,
            renditions: renditions.map(|list| list.split(',').map(str::to_string).collect()),
            plugin_calls: number(plugin_calls),
            dominant_color,
            thumbhash,
            owner,
        }
    }
}

/// The upload id of a commit record's key, or `None` for any other key.
pub fn upload_of_commit_key(key: &str) -> Option<&str> {
    key.strip_prefix(RESERVED_PREFIX)?.strip_prefix("uploads/")
}

/// Every code a job's outcome carries, and what it means: the `code` of a failure record (what
/// `/status` and `/download` report) and the `code` label of the `pixbox_jobs_total` metric. The
/// one list: the sandbox's errors, the worker and `pixbox jobs` name their codes from it, and the
/// README's table is checked against it.
macro_rules! job_codes {
    ($($name:ident = $code:literal, $meaning:literal;)*) => {
        $(#[doc = $meaning] pub const $name: &str = $code;)*

        /// Every code with its meaning, in the order of the README's table.
        pub const ALL: &[(&str, &str)] = &[$(($code, $meaning),)*];
    };
}

pub mod codes {
    job_codes! {
        BAD_INPUT = "bad-input", "The plugin found the image's data damaged: failed for good.";
        UNSUPPORTED = "unsupported", "The plugin does not support an option, value or format of the job: failed for good.";
        INVALID_OUTPUT = "invalid-output", "The plugin returned something that is not the image it claims: failed for good.";
        OUTPUT_TOO_LARGE = "output-too-large", "The plugin's output is over `sandbox.max_output_mib`: failed for good.";
        PLUGIN_FAILED = "plugin-failed", "The plugin reported a failure of its own: retried until the queue gives up.";
        TIMEOUT = "timeout", "The plugin ran past `sandbox.time_budget_ms`: tried once more, then failed.";
        OUT_OF_MEMORY = "out-of-memory", "The plugin needed more than `sandbox.memory_limit_mib`: tried once more, then failed.";
        TRAP = "trap", "The plugin crashed: retried until the queue gives up.";
        UNAVAILABLE = "unavailable", "The sandbox could not start the plugin: retried until the queue gives up.";
        MISSING_ORIGINAL = "missing-original", "The original is not in the temporary bucket (and no result is there).";
        IMAGE_TOO_LARGE = "image-too-large", "The original is larger than the worker reads.";
        UNREADABLE_IMAGE = "unreadable-image", "The original's header cannot be read.";
        TOO_MANY_PIXELS = "too-many-pixels", "The original is over the pixel limits in force.";
        TOO_MANY_FRAMES = "too-many-frames", "The original animation is over the frame limits in force.";
        GAVE_UP = "gave-up", "The queue gave up on the job after its last attempt (it is dead-lettered).";
        RETRYING = "retrying", "`pixbox jobs retry` queued the job again: it reads as pending until a worker takes it.";
        FAILED = "failed", "A failure record pixbox cannot read (written by something else).";
        STORE_UNAVAILABLE = "store-unavailable", "Metrics only: a store call failed; the job is retried.";
        SANDBOX_BUSY = "sandbox-busy", "Metrics only: no sandbox slot in time; the job is queued again.";
        RESULT_NOT_CONFIRMED = "result-not-confirmed", "Metrics only: the result's write was refused, yet no result is there; retried.";
        NOT_COMMITTED = "not-committed", "Metrics only: the job's upload is not committed yet; the job waits.";
        DROPPED = "dropped", "Metrics only: a queue message that is not a job was dropped.";
        SHUTDOWN = "shutdown", "Metrics only: the worker stopped during the job; it runs again.";
        OK = "ok", "Metrics only: the job is done (or was done already).";
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field is written under its own key and read back as it was.
    #[test]
    fn image_meta_round_trips_through_object_metadata() {
        let full = ImageMeta {
            width: Some(640),
            height: Some(480),
            focus: Some("0.25,0.75".into()),
            plugin: Some("resize 0.2.0".into()),
            rendition: Some("thumb".into()),
            renditions: Some(vec!["large".into(), "thumb".into()]),
            plugin_calls: Some(2),
            dominant_color: Some("#a0b0c0".into()),
            thumbhash: Some("3OcRJYB4d3h/iIeHeEh3eIhw+j3A".into()),
            owner: Some("9f86d081884c7d65".into()),
        };
        let stored = full.object("image/png");
        assert_eq!(stored.content_type, "image/png");
        assert_eq!(stored.metadata.len(), ImageMeta::KEYS.len(), "{stored:?}");
        assert_eq!(stored.metadata["plugin-calls"], "2");
        assert_eq!(stored.metadata["renditions"], "large,thumb");
        assert_eq!(ImageMeta::of(&stored), full);
        assert!(ImageMeta::default().object("image/png").metadata.is_empty());
    }

    #[test]
    fn derived_keys_are_told_from_image_keys() {
        let key = "shop/0193.jpg";
        assert!(is_derived(&original_key(key)));
        assert!(is_derived(&preset_key(key, "card", crate::imaging::Format::Webp)));
        assert!(is_derived(&transform_key(key, "0a1b", crate::imaging::Format::Png)));
        for image in [key, "shop/p/0193.jpg", "original", "a/original", "p/x.png", "shop.v2/p/0193.jpg"] {
            assert!(!is_derived(image), "{image}");
        }
    }

    /// The table as the README shows it.
    fn markdown() -> String {
        let mut table = String::from("| code | meaning |\n|---|---|\n");
        for (code, meaning) in codes::ALL {
            table += &format!("| `{code}` | {meaning} |\n");
        }
        table
    }

    #[test]
    fn job_codes_are_unique_and_the_readme_lists_every_one() {
        for (i, (code, _)) in codes::ALL.iter().enumerate() {
            assert!(code.split('-').all(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase())), "{code}");
            assert!(!codes::ALL[..i].iter().any(|(other, _)| other == code), "{code} twice");
        }
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let table = markdown();
        assert!(
            readme.contains(&table),
            "README.md's job code table differs from jobs::codes::ALL; it should read:\n{table}"
        );
    }
}
