//! An image's life after its upload, besides its job: deleting it with everything derived from it
//! (`DELETE /images/{key}`, `pixbox images delete`), and the references by which duplicate
//! uploads to a `dedupe = true` route share one set of images; direct uploads, whose bytes go to
//! the bucket without passing through the api, completed by a check and a job like any upload.
//!
//! A delete writes a record that the key is deleted first, then removes the objects, then looks
//! again: a job still queued for the key, or a render in flight, finds the record and removes
//! what it wrote (whichever of the two comes second sees the other's work). A key's images are
//! removed when no key refers to them any more: its own reference and those of its aliases.

use serde::{Deserialize, Serialize};

use crate::imaging::{self, Format, FormatSettings, Header, PixelLimits};
use crate::jobs::{self, Alias};
use crate::sandbox::RouteConfig;
use crate::storage::{BlobStore, Bucket, StoreError};
use crate::webhooks;

/// Why a delete did not (completely) happen.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("no image with key {0:?}")]
    NotFound(String),
    #[error("{key}: {} objects are still there after the delete ({}); the delete is safe to repeat", left.len(), left.join(", "))]
    Incomplete { key: String, left: Vec<String> },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a key is, for a delete: who uploaded it, and the key whose images it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The id of the API key that uploaded it (`None`: an open service, or not recorded).
    pub owner: Option<String>,
    /// Set when the key is an alias (a duplicate upload).
    pub alias: Option<Alias>,
}

/// What a key is, or `None` when nothing of it is stored (deleted, or never uploaded).
pub async fn find(store: &dyn BlobStore, key: &str) -> Result<Option<Found>, StoreError> {
    if let Some(alias) = jobs::alias(store, key).await? {
        return Ok(Some(Found { owner: alias.owner.clone(), alias: Some(alias) }));
    }
    if !jobs::wanted(store, key).await? {
        return Ok(None);
    }
    for (bucket, object) in [
        (Bucket::Permanent, key.to_string()),
        (Bucket::Temp, key.to_string()),
        (Bucket::Permanent, jobs::original_key(key)),
    ] {
        if let Some(info) = jobs::found(store.head(bucket, &object).await)? {
            return Ok(Some(Found { owner: jobs::ImageMeta::of(&info.meta).owner, alias: None }));
        }
    }
    if jobs::failure(store, key).await?.is_some() {
        return Ok(Some(Found { owner: None, alias: None }));
    }
    Ok(None)
}

/// Whether `key` was deleted (so a second delete answers as the first did).
pub async fn was_deleted(store: &dyn BlobStore, key: &str) -> Result<bool, StoreError> {
    Ok(jobs::found(store.head(Bucket::Permanent, &jobs::deleted_key(key)).await)?.is_some())
}

/// The deletion record's body.
#[derive(Debug, Serialize, Deserialize)]
struct Deletion {
    deleted_ms: u64,
    /// Who uploaded what was deleted, so a repeat is authorised as the delete was.
    #[serde(default)]
    owner: Option<String>,
    /// The key whose images the deleted key served (itself, or for an alias another), and their
    /// duplicate-upload record: what a repeat needs to finish a delete that was cut short.
    #[serde(default)]
    canonical: Option<String>,
    #[serde(default)]
    content: Option<String>,
}

/// Finishes the delete of `key`, deleted before: its reference goes, then whatever of the
/// images is no longer referred to (after a delete cut short by a store error, say). Returns how
/// many objects were removed.
pub async fn finish_delete(store: &dyn BlobStore, key: &str) -> Result<usize, DeleteError> {
    let Some(deletion) = jobs::record::<Deletion>(store, Bucket::Permanent, &jobs::deleted_key(key)).await? else {
        return Err(DeleteError::NotFound(key.into()));
    };
    let canonical = deletion.canonical.unwrap_or_else(|| key.to_string());
    store.delete(Bucket::Permanent, &jobs::ref_key(&canonical, key)).await?;
    if canonical != key {
        store.delete(Bucket::Permanent, &jobs::alias_key(key)).await?;
    }
    purge_if_unreferenced(store, &canonical, deletion.content.as_deref()).await
}

/// `Some(owner)` when `key` was deleted (so a second delete answers as the first did).
pub async fn deleted_by(store: &dyn BlobStore, key: &str) -> Result<Option<Option<String>>, StoreError> {
    Ok(jobs::record::<Deletion>(store, Bucket::Permanent, &jobs::deleted_key(key)).await?.map(|d| d.owner))
}

/// Deletes `key` (found as `found`): its deletion record first, then its alias or reference, then
/// the images once nothing refers to them. Returns how many objects were removed. The answer
/// comes once they are gone, or says what is left; a repeat finishes the work.
pub async fn delete(store: &dyn BlobStore, key: &str, found: &Found) -> Result<usize, DeleteError> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let (canonical, content) = match &found.alias {
        Some(alias) => (alias.of.clone(), Some(alias.content.clone())),
        None => {
            let own = jobs::ref_key(key, key);
            (key.to_string(), jobs::record::<Alias>(store, Bucket::Permanent, &own).await?.map(|r| r.content))
        }
    };
    let deletion = Deletion { deleted_ms: now, owner: found.owner.clone(), canonical: Some(canonical), content };
    jobs::put_record(store, Bucket::Permanent, &jobs::deleted_key(key), &deletion).await?;
    let removed = finish_delete(store, key).await?;
    crate::telemetry::deleted();
    Ok(removed + usize::from(found.alias.is_some()))
}

/// Removes the images of `key` unless they are still wanted (not deleted, or referred to by an
/// alias). `content` is the duplicate-upload record that names them, if any: removed first, so
/// no new upload becomes an alias of images about to go, and put back if a reference turns up.
pub async fn purge_if_unreferenced(
    store: &dyn BlobStore,
    key: &str,
    content: Option<&str>,
) -> Result<usize, DeleteError> {
    if jobs::wanted(store, key).await? {
        return Ok(0);
    }
    if let Some(content) = content {
        let record = jobs::record::<ContentRecord>(store, Bucket::Permanent, content).await?;
        if record.as_ref().is_some_and(|r| r.key == key) {
            store.delete(Bucket::Permanent, content).await?;
            // An upload that took a reference meanwhile keeps the images, and the record.
            if jobs::wanted(store, key).await? {
                jobs::put_record_if_absent(store, Bucket::Permanent, content, &ContentRecord { key: key.into() })
                    .await?;
                return Ok(0);
            }
        }
    }
    purge(store, key).await
}

/// Removes everything stored of `key`: its renditions and their format variants, a kept
/// original, stored presets and transforms, the result, a failure record and the original.
/// Then looks again, and says what is left, if anything.
pub async fn purge(store: &dyn BlobStore, key: &str) -> Result<usize, DeleteError> {
    let mut removed = 0;
    for object in derived(store, key).await? {
        store.delete(Bucket::Permanent, &object).await?;
        removed += 1;
    }
    for (bucket, object) in [
        (Bucket::Permanent, key.to_string()),
        (Bucket::Permanent, jobs::failure_key(key)),
        (Bucket::Temp, key.to_string()),
    ] {
        if jobs::found(store.head(bucket, &object).await)?.is_some() {
            store.delete(bucket, &object).await?;
            removed += 1;
        }
    }
    let mut left = derived(store, key).await?;
    for (bucket, object) in [(Bucket::Permanent, key), (Bucket::Temp, key)] {
        if jobs::found(store.head(bucket, object).await)?.is_some() {
            left.push(object.to_string());
        }
    }
    if !left.is_empty() {
        return Err(DeleteError::Incomplete { key: key.into(), left });
    }
    Ok(removed)
}

/// The objects stored below `key` that belong to it: `{key}/{rendition}` (and format variants
/// `{rendition}.{ext}`), `{key}/original`, `{key}/p/...` and `{key}/t/...`. (Uploads may not use
/// a prefix named like an image, so no other image's key starts with `{key}/`.)
async fn derived(store: &dyn BlobStore, key: &str) -> Result<Vec<String>, StoreError> {
    let below = format!("{key}/");
    Ok(store
        .list(Bucket::Permanent, &below)
        .await?
        .into_iter()
        .filter(|object| {
            let rest = &object[below.len()..];
            !rest.contains('/') || rest.starts_with("p/") || rest.starts_with("t/")
        })
        .collect())
}

/// The record of which key's images hold a content (route `dedupe = true`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentRecord {
    pub key: String,
}

/// What a dedupe route's upload of some content became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The first of its content: stored and processed as any upload, under `content`.
    New { content: String },
    /// A duplicate: an alias of the key whose images hold the content. No job.
    Alias(Alias),
}

/// The content an upload claims: the SHA-256 of its bytes, and of its focal point when it has one
/// (the same photo with another focus crops differently, so it is other content).
pub fn content_hash(bytes: &[u8], focus: Option<&str>) -> String {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    hasher.update(bytes);
    if let Some(focus) = focus {
        hasher.update(b"\nfocus=");
        hasher.update(focus.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Claims the content `sha256` of an upload to the route of `prefix` for the new key `key`: the
/// first upload of it owns it, later ones become aliases of that key.
pub async fn claim(
    store: &dyn BlobStore,
    prefix: &str,
    sha256: &str,
    key: &str,
    owner: Option<String>,
    webhook: Option<String>,
) -> Result<Claim, StoreError> {
    let content = jobs::content_key(prefix, sha256);
    let record =
        |of: &str| Alias { of: of.into(), content: content.clone(), owner: owner.clone(), webhook: webhook.clone() };
    // Twice at most: a last delete of the content's images may run between our reads.
    for _ in 0..3 {
        if jobs::put_record_if_absent(store, Bucket::Permanent, &content, &ContentRecord { key: key.into() }).await? {
            jobs::put_record(store, Bucket::Permanent, &jobs::ref_key(key, key), &record(key)).await?;
            return Ok(Claim::New { content });
        }
        let Some(existing) = jobs::record::<ContentRecord>(store, Bucket::Permanent, &content).await? else { continue };
        let of = existing.key;
        if of == key {
            // Claimed by this very key before (a repeated completion).
            return Ok(Claim::New { content });
        }
        if !jobs::wanted(store, &of).await? {
            // Left by a delete that did not finish: the images are going, the content is free.
            store.delete(Bucket::Permanent, &content).await?;
            continue;
        }
        if !exists(store, &of).await? {
            // Claimed by an upload that failed before storing its original (or a direct upload
            // never completed): nothing would ever come of an alias of it.
            jobs::put_record(store, Bucket::Permanent, &content, &ContentRecord { key: key.into() }).await?;
            jobs::put_record(store, Bucket::Permanent, &jobs::ref_key(key, key), &record(key)).await?;
            return Ok(Claim::New { content });
        }
        let reference = jobs::ref_key(&of, key);
        jobs::put_record(store, Bucket::Permanent, &reference, &record(&of)).await?;
        // The record still names them after our reference is written: a delete that removes them
        // lists the references after removing the record, so it sees ours and keeps them.
        let still = jobs::record::<ContentRecord>(store, Bucket::Permanent, &content).await?;
        if still.is_none_or(|r| r.key != of) {
            store.delete(Bucket::Permanent, &reference).await?;
            continue;
        }
        let alias = record(&of);
        jobs::put_record(store, Bucket::Permanent, &jobs::alias_key(key), &alias).await?;
        return Ok(Claim::Alias(alias));
    }
    Err(StoreError::Unavailable(format!("the content record {content} kept changing")))
}

/// Whether anything of `key`'s images is stored: its result, its original waiting, or its
/// failure record.
async fn exists(store: &dyn BlobStore, key: &str) -> Result<bool, StoreError> {
    Ok(jobs::found(store.head(Bucket::Permanent, key).await)?.is_some()
        || jobs::found(store.head(Bucket::Temp, key).await)?.is_some()
        || jobs::failure(store, key).await?.is_some())
}

/// Undoes a claim of an upload that failed after it: nothing of it may stay.
pub async fn release(store: &dyn BlobStore, key: &str, claim: &Claim) -> Result<(), StoreError> {
    match claim {
        Claim::New { content } => {
            store.delete(Bucket::Permanent, &jobs::ref_key(key, key)).await?;
            if jobs::record::<ContentRecord>(store, Bucket::Permanent, content).await?.is_some_and(|r| r.key == key) {
                store.delete(Bucket::Permanent, content).await?;
            }
        }
        Claim::Alias(alias) => {
            store.delete(Bucket::Permanent, &jobs::alias_key(key)).await?;
            store.delete(Bucket::Permanent, &jobs::ref_key(&alias.of, key)).await?;
        }
    }
    Ok(())
}

/// The key whose images a read of `key` finds: itself, or for an alias the key it refers to;
/// `None` for a key that was deleted though its images stay for its aliases. Only routes with
/// `dedupe = true` have aliases; others are never looked up.
pub async fn stored_key(store: &dyn BlobStore, key: &str, dedupe: bool) -> Result<Option<String>, StoreError> {
    if !dedupe {
        return Ok(Some(key.to_string()));
    }
    if let Some(alias) = jobs::alias(store, key).await? {
        return Ok(Some(alias.of));
    }
    if was_deleted(store, key).await? {
        return Ok(None);
    }
    Ok(Some(key.to_string()))
}

/// The aliases of `key` (route `dedupe = true`), with what their uploads asked for.
pub async fn aliases(store: &dyn BlobStore, key: &str) -> Result<Vec<(String, Alias)>, StoreError> {
    let prefix = jobs::refs_prefix(key);
    let mut out = Vec::new();
    for reference in store.list(Bucket::Permanent, &prefix).await? {
        let alias_key = &reference[prefix.len()..];
        if alias_key == key {
            continue;
        }
        if let Some(alias) = jobs::record::<Alias>(store, Bucket::Permanent, &reference).await? {
            out.push((alias_key.to_string(), alias));
        }
    }
    Ok(out)
}

/// Queues the webhook of `key`, settled in `state` (`done` or `failed`), for `url`.
pub async fn announce(
    store: &dyn BlobStore,
    url: &str,
    key: &str,
    state: &str,
    failure: Option<jobs::Failure>,
    names: &crate::sandbox::RenditionNames,
) -> Result<(), StoreError> {
    let renditions = if state == "done" {
        names
            .names
            .iter()
            .map(|name| {
                let object = if *name == names.default { key.to_string() } else { jobs::rendition_key(key, name) };
                (name.clone(), jobs::key_path("download", &object))
            })
            .collect()
    } else {
        Default::default()
    };
    webhooks::enqueue(store, url, &webhooks::Event::new(url, key, state, renditions, failure)).await
}

/// The keys of the images whose keys start with `prefix`: results, originals waiting, failed jobs
/// and aliases (not what is stored below an image's key).
pub async fn keys_under(store: &dyn BlobStore, prefix: &str) -> Result<Vec<String>, StoreError> {
    let image = |key: &str| {
        let segments: Vec<&str> = key.split('/').collect();
        jobs::is_image_key(key) && !segments[..segments.len() - 1].iter().any(|s| jobs::is_image_key(s))
    };
    let mut keys = std::collections::BTreeSet::new();
    for bucket in [Bucket::Permanent, Bucket::Temp] {
        keys.extend(store.list(bucket, prefix).await?.into_iter().filter(|k| !k.starts_with(jobs::RESERVED_PREFIX)));
    }
    for (records, bucket) in [(jobs::failure_key(""), Bucket::Permanent), (jobs::alias_key(""), Bucket::Permanent)] {
        let found = store.list(bucket, &format!("{records}{prefix}")).await?;
        keys.extend(found.into_iter().map(|k| k[records.len()..].to_string()));
    }
    Ok(keys.into_iter().filter(|k| image(k)).collect())
}

/// Where a direct upload's object lands before it is checked (temp bucket): the presigned POST
/// of S3, or `PUT /uploads/{id}` on the embedded backend, writes it there.
pub fn incoming_key(id: &str) -> String {
    format!("{}incoming/{id}", jobs::RESERVED_PREFIX)
}

/// Where a direct upload's record is kept (temp bucket).
pub fn direct_key(id: &str) -> String {
    format!("{DIRECT_PREFIX}{id}")
}

/// The folder of direct upload records.
pub const DIRECT_PREFIX: &str = ".pixbox/direct/";
/// How long past its expiry a direct upload that was never completed is kept at most before the
/// sweep removes it (a client that sent its object at the last moment still completes); never
/// longer than the upload's own time to live.
pub const DIRECT_GRACE: std::time::Duration = std::time::Duration::from_secs(60);
/// How long past its expiry a direct upload whose object arrived, but was never completed, is
/// kept at most: its bucket event shares the job queue and may wait behind a backlog; never longer
/// than the upload's own time to live.
pub const DIRECT_RECEIVED_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);
/// How long a completed direct upload's record is kept, so a repeated completion answers again.
const DIRECT_KEEP_MS: u64 = 24 * 3600 * 1000;

/// A direct upload: what it was created with, and how far its completion got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Direct {
    pub id: String,
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub focus: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub expires_ms: u64,
    /// When the sweep removes it if it was never completed.
    pub sweep_after_ms: u64,
    /// When the sweep removes it if its object arrived but it was never completed.
    #[serde(default)]
    pub received_sweep_after_ms: u64,
    /// The SHA-256 (hex) of the one-time token of an embedded `PUT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
    /// The embedded `PUT` was received (the token is spent).
    #[serde(default)]
    pub received: bool,
    /// Once checked: the image's key and header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<(Format, u32, u32, usize)>,
    /// The job is queued (or the image is an alias): completing again answers the same.
    #[serde(default)]
    pub queued: bool,
    #[serde(default)]
    pub deduplicated: bool,
}

/// The record of direct upload `id`.
pub async fn direct(store: &dyn BlobStore, id: &str) -> Result<Option<Direct>, StoreError> {
    jobs::record(store, Bucket::Temp, &direct_key(id)).await
}

pub async fn save_direct(store: &dyn BlobStore, direct: &Direct) -> Result<(), StoreError> {
    jobs::put_record(store, Bucket::Temp, &direct_key(&direct.id), direct).await
}

/// Why an image is refused by the checks every upload passes (from its bytes, nothing decoded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0}")]
    UnsupportedFormat(String),
    #[error("{0}")]
    Unreadable(String),
    #[error("{0}")]
    TooManyPixels(String),
    #[error("{0}")]
    TooManyFrames(String),
    #[error("{0}")]
    Truncated(String),
    #[error("{0}")]
    TooLarge(String),
}

/// The header-only checks every image passes before it is stored: format from magic bytes, the
/// pixel limits from the header, completeness from the trailer.
pub fn inspect(bytes: &[u8], pixels: &PixelLimits, formats: &FormatSettings, label: &str) -> Result<Header, Refused> {
    let header = imaging::probe(bytes).map_err(|e| match e {
        imaging::HeaderError::UnknownFormat => Refused::UnsupportedFormat(format!("{label}: {e}")),
        e => {
            tracing::info!("{label}: {e}");
            Refused::Unreadable(format!("{label}: {}", e.public_reason()))
        }
    })?;
    if let Some(refusal) = formats.refusal(header.format) {
        return Err(Refused::UnsupportedFormat(format!("{label}: {refusal}")));
    }
    pixels.check(&header).map_err(|e| match e.is_animation() {
        true => Refused::TooManyFrames(format!("{label}: {e}")),
        false => Refused::TooManyPixels(format!("{label}: {e}")),
    })?;
    if !imaging::is_complete(bytes, header.format) {
        let kind = match header.format {
            Format::Jpeg => "JPEG",
            Format::Png => "PNG",
            Format::Webp => "WebP",
            Format::Gif => "GIF",
            Format::Avif => "AVIF",
            Format::Jxl => "JPEG XL",
            Format::Heic => "HEIC",
        };
        return Err(Refused::Truncated(format!("{label}: the {kind} file is cut off (its end is missing)")));
    }
    Ok(header)
}

/// Why a direct upload cannot be completed.
#[derive(Debug, thiserror::Error)]
pub enum CompleteError {
    #[error("no direct upload {0:?} (or it expired and was swept)")]
    NotFound(String),
    #[error("the object of direct upload {0:?} has not arrived: send it first, then complete")]
    NotReceived(String),
    #[error(transparent)]
    Refused(Refused),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
}

/// What a completed direct upload became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    pub key: String,
    pub format: Format,
    pub width: u32,
    pub height: u32,
    pub bytes: usize,
    pub deduplicated: bool,
}

/// Completes direct upload `id`: its object is checked as any upload's, stored under its key in
/// the temp bucket and its job queued. Idempotent: each step is recorded, a repeat (the client
/// again, or the bucket's event) goes on from where the last one stopped, and a completed upload
/// answers the same again.
pub async fn complete(
    store: &dyn BlobStore,
    queue: &dyn crate::queue::JobQueue,
    routes: &[RouteConfig],
    pixels: &PixelLimits,
    formats: &FormatSettings,
    max_bytes: u64,
    id: &str,
) -> Result<Completed, CompleteError> {
    let mut record = direct(store, id).await?.ok_or_else(|| CompleteError::NotFound(id.into()))?;
    let completed = |record: &Direct| match (&record.key, record.image) {
        (Some(key), Some((format, width, height, bytes))) => {
            Ok(Completed { key: key.clone(), format, width, height, bytes, deduplicated: record.deduplicated })
        }
        // Queued without its key and header: a record pixbox did not write.
        _ => Err(CompleteError::NotFound(record.id.clone())),
    };
    if record.queued {
        return completed(&record);
    }
    let staged = jobs::found(store.get(Bucket::Temp, &incoming_key(id)).await)?
        .ok_or_else(|| CompleteError::NotReceived(id.into()))?;
    let label = format!("direct upload {id}");
    let limit = usize::try_from(max_bytes).unwrap_or(usize::MAX);
    let checked = match staged.bytes(limit).await {
        Ok(bytes) => inspect(&bytes, pixels, formats, &label).map(|header| (bytes, header)),
        Err(StoreError::TooLarge { limit }) => {
            Err(Refused::TooLarge(format!("{label} is larger than the limit of {limit} bytes")))
        }
        Err(e) => return Err(e.into()),
    };
    let (bytes, header) = match checked {
        Ok(checked) => checked,
        Err(refused) => {
            // Refused for good: nothing of it stays.
            store.delete(Bucket::Temp, &incoming_key(id)).await?;
            store.delete(Bucket::Temp, &direct_key(id)).await?;
            return Err(CompleteError::Refused(refused));
        }
    };
    let stem = format!("{}{id}", record.prefix);
    let key = record.key.clone().unwrap_or_else(|| {
        format!("{stem}.{}", crate::sandbox::result_format(routes, &stem, header.format).extension())
    });
    record.key = Some(key.clone());
    record.image = Some((header.format, header.width, header.height, bytes.len()));
    save_direct(store, &record).await?;
    let claim = match crate::sandbox::configured_route(routes, &key).filter(|route| route.dedupe) {
        Some(route) => {
            let sha256 = content_hash(&bytes, record.focus.as_deref());
            Some(claim(store, &route.prefix, &sha256, &key, record.owner.clone(), record.webhook.clone()).await?)
        }
        None => None,
    };
    record.deduplicated = matches!(claim, Some(Claim::Alias(_)));
    if !record.deduplicated {
        let meta = jobs::ImageMeta {
            width: Some(header.width),
            height: Some(header.height),
            focus: record.focus.clone(),
            owner: record.owner.clone(),
            ..Default::default()
        }
        .object(header.format.media_type());
        store.put(Bucket::Temp, &key, bytes, &meta).await?;
        let job = jobs::Job { webhook: record.webhook.clone(), ..jobs::Job::new(key.clone()) };
        queue.send_batch(&[job.to_body()]).await?;
    }
    if let Some(Claim::Alias(alias)) = &claim {
        let route_hook = crate::sandbox::configured_route(routes, &key).and_then(|r| r.webhook.as_ref());
        for url in [record.webhook.as_ref(), route_hook].into_iter().flatten() {
            announce_if_settled(store, routes, &key, &alias.of, url).await?;
        }
    }
    record.queued = true;
    save_direct(store, &record).await?;
    store.delete(Bucket::Temp, &incoming_key(id)).await?;
    tracing::info!(key, id, deduplicated = record.deduplicated, "direct upload completed");
    completed(&record)
}

/// Removes direct uploads never completed (their object too) once past their expiry, and the
/// records of completed ones after a day. Returns how many uploads were removed.
pub async fn sweep_direct(store: &dyn BlobStore) -> Result<usize, StoreError> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let mut removed = 0;
    for key in store.list(Bucket::Temp, DIRECT_PREFIX).await? {
        if key.ends_with(".spent") {
            continue;
        }
        let Some(record) = jobs::record::<Direct>(store, Bucket::Temp, &key).await? else { continue };
        let due = if record.queued {
            record.expires_ms + DIRECT_KEEP_MS
        } else if jobs::found(store.head(Bucket::Temp, &incoming_key(&record.id)).await)?.is_some() {
            // Sent, not completed: its bucket event may still wait behind a backlog of jobs.
            record.sweep_after_ms.max(record.received_sweep_after_ms)
        } else {
            record.sweep_after_ms
        };
        if now > due {
            store.delete(Bucket::Temp, &incoming_key(&record.id)).await?;
            store.delete(Bucket::Temp, &format!("{key}.spent")).await?;
            store.delete(Bucket::Temp, &key).await?;
            if !record.queued {
                tracing::info!(id = record.id, "swept a direct upload that was never completed");
            }
            removed += 1;
        }
    }
    Ok(removed)
}

/// Queues the webhook of a duplicate upload `key` for `url` if the images it shares (`of`'s)
/// are settled already (else their job announces it when it settles).
pub async fn announce_if_settled(
    store: &dyn BlobStore,
    routes: &[RouteConfig],
    key: &str,
    of: &str,
    url: &str,
) -> Result<(), StoreError> {
    let (settled, failure) = match jobs::state(store, of).await? {
        jobs::State::Done(_) => ("done", None),
        jobs::State::Failed(failure) => ("failed", Some(failure)),
        jobs::State::Pending | jobs::State::Unknown => return Ok(()),
    };
    announce(store, url, key, settled, failure, &crate::sandbox::rendition_names(routes, key)).await
}

/// The direct uploads an S3 event notification names (`Records[].s3.object.key` under
/// `.pixbox/incoming/`, as S3 encodes keys in events: `+` for a space, `%XX` escapes); none for
/// any other message.
pub fn incoming_ids(body: &str) -> Vec<String> {
    #[derive(Deserialize)]
    struct Event {
        #[serde(rename = "Records", default)]
        records: Vec<Record>,
    }
    #[derive(Deserialize)]
    struct Record {
        s3: S3,
    }
    #[derive(Deserialize)]
    struct S3 {
        object: Object,
    }
    #[derive(Deserialize)]
    struct Object {
        key: String,
    }
    let Ok(event) = serde_json::from_str::<Event>(body) else { return Vec::new() };
    let incoming = incoming_key("");
    event
        .records
        .into_iter()
        .filter_map(|r| crate::storage::percent_decode(&r.s3.object.key.replace('+', " ")))
        .filter_map(|key| key.strip_prefix(&incoming).map(str::to_string))
        .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_events_name_their_direct_uploads() {
        let id = "0123456789abcdef0123456789abcdef";
        // As S3 sends it: the key URL-encoded, `/` as %2F.
        let event = format!(
            r#"{{"Records":[{{"eventName":"ObjectCreated:Post","s3":{{"object":{{"key":".pixbox%2Fincoming%2F{id}","size":9}}}}}},
                {{"s3":{{"object":{{"key":"photos/cat.jpg"}}}}}}]}}"#
        );
        assert_eq!(incoming_ids(&event), vec![id.to_string()]);
        assert!(incoming_ids(r#"{"Service":"Amazon S3","Event":"s3:TestEvent"}"#).is_empty());
        assert!(incoming_ids(r#"{"key":"a.png"}"#).is_empty(), "a job is no event");
        let sneaky = r#"{"Records":[{"s3":{"object":{"key":".pixbox/incoming/../../x"}}}]}"#;
        assert!(incoming_ids(sneaky).is_empty());
    }
}
