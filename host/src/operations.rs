//! Operators' tools over the two ports (what `pixbox jobs` runs): list failed and waiting jobs,
//! retry failed and dead-lettered ones, and count what the queue and the temp bucket hold.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::jobs::{self, Failure, Job, RESERVED_PREFIX};
use crate::queue::{JobQueue, MAX_BATCH, QueueDepth, QueueError};
use crate::storage::{BlobStore, Bucket, StoreError};

/// How long dead letters read by a retry stay hidden from other readers while it works.
const DEAD_LETTER_HOLD: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    #[error("{key}: the original is gone (it was processed, or removed); upload the image again")]
    OriginalGone { key: String },
}

/// A job that failed for good, from its failure record.
#[derive(Debug, Clone, Serialize)]
pub struct FailedJob {
    pub key: String,
    #[serde(flatten)]
    pub failure: Failure,
    /// Whether the original is still in the temp bucket (then the job can be retried).
    pub original_kept: bool,
}

/// An original waiting in the temp bucket with no result and no failure record.
#[derive(Debug, Clone, Serialize)]
pub struct WaitingJob {
    pub key: String,
    /// Seconds since the original was stored, when the store says.
    pub age_secs: Option<f64>,
}

/// Counts for `pixbox jobs stats`.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub queue: QueueDepth,
    /// Jobs with a failure record.
    pub failed: usize,
    /// Originals waiting to be processed.
    pub waiting_originals: usize,
    /// Seconds since the oldest waiting original was stored.
    pub oldest_original_age_secs: Option<f64>,
}

/// What a retry did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "retried", rename_all = "kebab-case")]
pub enum Retry {
    /// The job was queued again; `dead_letters` of its messages were taken off the dead-letter queue.
    Queued { key: String, dead_letters: usize },
    /// The result exists: nothing to retry.
    AlreadyDone { key: String },
    /// Neither failed nor dead-lettered (it is waiting, or unknown): nothing to retry.
    NotFailed { key: String },
}

/// Every job with a failure record, sorted by key.
pub async fn failed(store: &dyn BlobStore) -> Result<Vec<FailedJob>, OperationError> {
    let prefix = jobs::failure_key("");
    let mut out = Vec::new();
    for record in store.list(Bucket::Permanent, &prefix).await? {
        let key = &record[prefix.len()..];
        let Some(failure) = jobs::failure(store, key).await? else { continue };
        if failure.code == jobs::RETRYING {
            continue;
        }
        let original_kept = jobs::found(store.head(Bucket::Temp, key).await)?.is_some();
        out.push(FailedJob { key: key.to_string(), failure, original_kept });
    }
    Ok(out)
}

/// Originals in the temp bucket that have neither a result nor a failure record, sorted by key.
pub async fn waiting(store: &dyn BlobStore) -> Result<Vec<WaitingJob>, OperationError> {
    let mut out = Vec::new();
    for key in store.list(Bucket::Temp, "").await? {
        if key.starts_with(RESERVED_PREFIX) || jobs::failure(store, &key).await?.is_some() {
            continue;
        }
        let Some(info) = jobs::found(store.head(Bucket::Temp, &key).await)? else { continue };
        let age_secs = info.modified.and_then(|m| m.elapsed().ok()).map(|a| a.as_secs_f64());
        out.push(WaitingJob { key, age_secs });
    }
    Ok(out)
}

/// Queue depths and the temp bucket's counts.
pub async fn stats(store: &dyn BlobStore, queue: &dyn JobQueue) -> Result<Stats, OperationError> {
    let queue = queue.depth().await?;
    let failed = store.list(Bucket::Permanent, &jobs::failure_key("")).await?.len();
    let waiting = waiting(store).await?;
    let oldest_original_age_secs = waiting.iter().filter_map(|w| w.age_secs).reduce(f64::max);
    Ok(Stats { queue, failed, waiting_originals: waiting.len(), oldest_original_age_secs })
}

/// Retries one job: its failure record is removed, its dead-lettered messages are taken off the
/// dead-letter queue, and one new message is queued. Do this after fixing what made it fail (a
/// plugin, a route, a limit): the worker runs it again as a new job.
pub async fn retry(store: &dyn BlobStore, queue: &dyn JobQueue, key: &str) -> Result<Retry, OperationError> {
    let mut dead = dead_letters(queue).await?;
    retry_with(store, queue, key, dead.remove(key).unwrap_or_default()).await
}

/// Retries every failed and every dead-lettered job. Stops at the first error; what was retried
/// before it stays retried.
pub async fn retry_all(store: &dyn BlobStore, queue: &dyn JobQueue) -> Result<Vec<Retry>, OperationError> {
    let mut dead = dead_letters(queue).await?;
    let mut keys: Vec<String> = failed(store).await?.into_iter().map(|f| f.key).collect();
    keys.extend(dead.keys().cloned());
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    for key in keys {
        let receipts = dead.remove(&key).unwrap_or_default();
        match retry_with(store, queue, &key, receipts).await {
            // A failed job whose original is gone cannot run again; the others still can.
            Err(OperationError::OriginalGone { key }) => tracing::warn!(key, "not retried: the original is gone"),
            other => out.push(other?),
        }
    }
    Ok(out)
}

async fn retry_with(
    store: &dyn BlobStore,
    queue: &dyn JobQueue,
    key: &str,
    dead_receipts: Vec<String>,
) -> Result<Retry, OperationError> {
    if jobs::found(store.head(Bucket::Permanent, key).await)?.is_some() {
        for receipt in &dead_receipts {
            queue.delete_dead_letter(receipt).await?;
        }
        return Ok(Retry::AlreadyDone { key: key.into() });
    }
    let failure = jobs::failure(store, key).await?;
    if failure.is_none() && dead_receipts.is_empty() {
        return Ok(Retry::NotFailed { key: key.into() });
    }
    if jobs::found(store.head(Bucket::Temp, key).await)?.is_none() {
        return Err(OperationError::OriginalGone { key: key.into() });
    }
    // The failure record is marked `retrying` (the job reads as pending) and stays until a worker
    // takes the retry and removes it: the original is never unreferenced (the orphan sweep keeps
    // what a record or a message refers to), and a record the retry's own attempt writes is never
    // removed from this side. The message carries no upload reference: the upload's commit record
    // may be gone, and a job of an uncommitted upload is dropped.
    if let Some(failure) = &failure {
        let marked = Failure {
            code: jobs::RETRYING.into(),
            message: format!("queued again after: {}", failure.message),
            plugin: failure.plugin.clone(),
            attempts: failure.attempts,
        };
        jobs::record_failure(store, key, &marked).await?;
    }
    let body = Job { retry: true, ..Job::new(key) }.to_body();
    if let Err(e) = queue.send_batch(&[body]).await {
        if let Some(failure) = &failure {
            // Put the record back as it was: nothing is queued.
            let _ = jobs::record_failure(store, key, failure).await;
        }
        return Err(e.into());
    }
    for receipt in &dead_receipts {
        queue.delete_dead_letter(receipt).await?;
    }
    Ok(Retry::Queued { key: key.into(), dead_letters: dead_receipts.len() })
}

/// Every dead letter's receipt, by the key of its job (messages that are not jobs are left
/// alone). They stay hidden from other readers for [`DEAD_LETTER_HOLD`].
async fn dead_letters(queue: &dyn JobQueue) -> Result<BTreeMap<String, Vec<String>>, QueueError> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let (mut seen, mut empty_looks) = (0u64, 0);
    loop {
        let batch = queue.receive_dead_letters(MAX_BATCH, DEAD_LETTER_HOLD).await?;
        if batch.is_empty() {
            // A worker's dead-letter sweep hides what it looks at for a moment (a second on SQS):
            // when the queue says there are more than were seen, look again shortly.
            empty_looks += 1;
            if empty_looks < 3 && queue.depth().await?.dead > seen {
                tokio::time::sleep(Duration::from_millis(1_100)).await;
                continue;
            }
            return Ok(out);
        }
        seen += batch.len() as u64;
        for delivery in batch {
            match serde_json::from_str::<Job>(&delivery.body) {
                Ok(job) => out.entry(job.key).or_default().push(delivery.receipt),
                Err(e) => tracing::warn!(message_id = delivery.message_id, "a dead letter that is not a job: {e}"),
            }
        }
    }
}
