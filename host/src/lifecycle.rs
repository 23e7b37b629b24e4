//! An image's life after its upload, besides its job: deleting it with everything derived from it
//! (`DELETE /images/{key}`, `pixbox images delete`), and the references by which duplicate
//! uploads to a `dedupe = true` route share one set of images.
//!
//! A delete writes a record that the key is deleted first, then removes the objects, then looks
//! again: a job still queued for the key, or a render in flight, finds the record and removes
//! what it wrote (whichever of the two comes second sees the other's work). A key's images are
//! removed when no key refers to them any more: its own reference and those of its aliases.

use serde::{Deserialize, Serialize};

use crate::jobs::{self, Alias};
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
    jobs::put_record(
        store,
        Bucket::Permanent,
        &jobs::deleted_key(key),
        &Deletion { deleted_ms: now, owner: found.owner.clone() },
    )
    .await?;
    let (canonical, content) = match &found.alias {
        Some(alias) => {
            store.delete(Bucket::Permanent, &jobs::ref_key(&alias.of, key)).await?;
            store.delete(Bucket::Permanent, &jobs::alias_key(key)).await?;
            (alias.of.clone(), Some(alias.content.clone()))
        }
        None => {
            let own = jobs::ref_key(key, key);
            let content = jobs::record::<Alias>(store, Bucket::Permanent, &own).await?.map(|r| r.content);
            store.delete(Bucket::Permanent, &own).await?;
            (key.to_string(), content)
        }
    };
    let removed = purge_if_unreferenced(store, &canonical, content.as_deref()).await?;
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
        if !jobs::wanted(store, &of).await? {
            // Left by a delete that did not finish: the images are going, the content is free.
            store.delete(Bucket::Permanent, &content).await?;
            continue;
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
