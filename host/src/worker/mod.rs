//! The worker: [`Worker::process`] handles one delivered job and says what happened; the
//! [`runner`] around it only schedules ticks, bounds concurrency and observes shutdown.
//!
//! Order of effects per job (a crash between any two converges on replay):
//! get original → route → sandbox → put result → delete original → delete message.

pub mod runner;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::WorkerSettings;
use crate::imaging::{self, PixelLimits};
use crate::jobs::{self, Failure, Job};
use crate::queue::{Delivery, JobQueue};
use crate::sandbox::{Route, Routes, Sandbox, TransformError};
use crate::storage::{BlobStore, Bucket, ObjectMeta, StoreError};

/// What processing one delivery came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The result is stored and the job is finished.
    Done { key: String, plugin: String },
    /// An earlier delivery already finished this job (a duplicate or a replay).
    AlreadyDone { key: String },
    /// Failed for good: recorded, message deleted (or, past the receive limit, left to dead-letter).
    Failed { key: String, failure: Failure },
    /// A passing problem: the message stays and is delivered again after its visibility timeout.
    Retry { key: String, reason: String },
    /// The message was not a job at all; deleted.
    Discarded { reason: String },
}

/// One job step with everything it needs.
#[derive(Clone)]
pub struct Worker {
    pub store: Arc<dyn BlobStore>,
    pub queue: Arc<dyn JobQueue>,
    pub sandbox: Arc<Sandbox>,
    pub routes: Arc<Routes>,
    pub settings: WorkerSettings,
    pub limits: PixelLimits,
    /// Largest original read from the temp bucket.
    pub max_input_bytes: usize,
}

impl Worker {
    pub fn visibility(&self) -> Duration {
        Duration::from_secs(u64::from(self.settings.visibility_timeout_secs))
    }

    /// Processes one delivery, deleting the message when the job is settled.
    pub async fn process(&self, delivery: &Delivery) -> Outcome {
        let job: Job = match serde_json::from_str(&delivery.body) {
            Ok(job) => job,
            Err(e) => {
                let reason = format!("not a job message ({e}): {:.200}", delivery.body);
                let _ = self.queue.delete(&delivery.receipt).await;
                return Outcome::Discarded { reason };
            }
        };
        let outcome = match self.settle(&job.key, delivery).await {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Retry { key: job.key.clone(), reason: e.to_string() },
        };
        let outcome = match outcome {
            // A passing failure on the last allowed delivery: report it failed; the queue moves
            // the message to the dead-letter queue when it times out.
            Outcome::Retry { key, reason } if delivery.receive_count >= self.settings.max_receives => {
                let failure = Failure {
                    code: "gave-up".into(),
                    message: format!("gave up after {} attempts: {reason}", delivery.receive_count),
                    plugin: None,
                    attempts: delivery.receive_count,
                };
                match jobs::record_failure(&*self.store, &key, &failure).await {
                    Ok(()) => Outcome::Failed { key, failure },
                    Err(e) => Outcome::Retry { key, reason: format!("{reason}; recording the failure: {e}") },
                }
            }
            other => other,
        };
        let settled = matches!(&outcome, Outcome::Done { .. } | Outcome::AlreadyDone { .. })
            || matches!(&outcome, Outcome::Failed { failure, .. } if failure.code != "gave-up");
        if settled && let Err(e) = self.queue.delete(&delivery.receipt).await {
            // The job is settled in the store; a redelivery will find it so and delete again.
            tracing::warn!(key = job.key, "cannot delete the job message: {e}");
        }
        outcome
    }

    /// Everything but the message: returns `Err` for store errors (retried).
    async fn settle(&self, key: &str, delivery: &Delivery) -> Result<Outcome, StoreError> {
        let done = |key: &str| Outcome::AlreadyDone { key: key.into() };
        if jobs::found(self.store.head(Bucket::Permanent, key).await)?.is_some() {
            // Finished before (maybe the original's delete was interrupted): tidy up.
            self.store.delete(Bucket::Temp, key).await?;
            return Ok(done(key));
        }
        if let Some(failure) = jobs::failure(&*self.store, key).await? {
            return Ok(Outcome::Failed { key: key.into(), failure });
        }
        let original = match jobs::found(self.store.get(Bucket::Temp, key).await)? {
            Some(object) => object.bytes(self.max_input_bytes).await,
            None => Err(StoreError::NotFound { key: key.into() }),
        };
        let original = match original {
            Ok(bytes) => bytes,
            Err(StoreError::NotFound { .. }) => {
                // Another worker may have finished between our reads.
                if jobs::found(self.store.head(Bucket::Permanent, key).await)?.is_some() {
                    return Ok(done(key));
                }
                return self.fail(key, "missing-original", "the original image is gone".into(), None, delivery).await;
            }
            Err(StoreError::TooLarge { limit }) => {
                let message = format!("the original is larger than {limit} bytes");
                return self.fail(key, "image-too-large", message, None, delivery).await;
            }
            Err(e) => return Err(e),
        };

        // The same header checks as at upload: the limits may have changed since.
        let header = match imaging::probe(&original) {
            Ok(header) => header,
            Err(e) => return self.fail(key, "unreadable-image", e.to_string(), None, delivery).await,
        };
        if let Err(e) = self.limits.check(&header) {
            return self.fail(key, "too-many-pixels", e.to_string(), None, delivery).await;
        }

        let route = self.routes.resolve(key);
        let plugin = route.plugin.info.name.clone();
        let started = Instant::now();
        let result = self.transform_with_heartbeat(route, original, header.format.media_type(), delivery).await;
        let output = match result {
            Ok(output) => output,
            Err(e) if e.is_permanent() => {
                return self.fail(key, e.code(), e.to_string(), Some(plugin), delivery).await;
            }
            Err(e) => return Ok(Outcome::Retry { key: key.into(), reason: format!("{plugin}: {e}") }),
        };
        let meta = ObjectMeta {
            content_type: output.header.format.media_type().into(),
            metadata: [
                ("width", output.header.width.to_string()),
                ("height", output.header.height.to_string()),
                ("plugin", format!("{} {}", route.plugin.info.name, route.plugin.info.version)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        };
        self.store.put(Bucket::Permanent, key, Bytes::from(output.bytes), &meta).await?;
        self.store.delete(Bucket::Temp, key).await?;
        tracing::info!(
            key,
            plugin,
            ms = started.elapsed().as_millis() as u64,
            memory_peak = output.stats.memory_peak,
            "transformed"
        );
        Ok(Outcome::Done { key: key.into(), plugin })
    }

    /// Runs the sandbox on a blocking thread, extending the message's visibility while it runs so
    /// a long job is not handed to another worker.
    async fn transform_with_heartbeat(
        &self,
        route: &Route,
        input: Bytes,
        media_type: &'static str,
        delivery: &Delivery,
    ) -> Result<crate::sandbox::Output, TransformError> {
        let (sandbox, plugin, options) = (self.sandbox.clone(), route.plugin.clone(), route.options.clone());
        let mut task = tokio::task::spawn_blocking(move || sandbox.transform(&plugin, &input, media_type, &options));
        let beat = (self.visibility() / 2).max(Duration::from_secs(1));
        loop {
            tokio::select! {
                joined = &mut task => {
                    return joined.unwrap_or_else(|e| Err(TransformError::Unavailable(format!("sandbox task: {e}"))));
                }
                _ = tokio::time::sleep(beat) => {
                    if let Err(e) = self.queue.extend_visibility(&delivery.receipt, self.visibility()).await {
                        tracing::warn!(message_id = delivery.message_id, "cannot extend the job's visibility: {e}");
                    }
                }
            }
        }
    }

    /// Records a permanent failure; the original stays in the temp bucket for inspection.
    async fn fail(
        &self,
        key: &str,
        code: &str,
        message: String,
        plugin: Option<String>,
        delivery: &Delivery,
    ) -> Result<Outcome, StoreError> {
        let failure = Failure { code: code.into(), message, plugin, attempts: delivery.receive_count };
        jobs::record_failure(&*self.store, key, &failure).await?;
        tracing::warn!(key, code, "failed: {}", failure.message);
        Ok(Outcome::Failed { key: key.into(), failure })
    }
}
