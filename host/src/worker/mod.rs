//! The worker: [`Worker::process`] handles one delivered job and says what happened; the
//! [`runner`] around it only schedules, keeps `concurrency` jobs in flight and observes shutdown.
//!
//! Order of effects per job (a crash between any two converges on replay):
//! get original → route → sandbox → put result (only if absent) → delete original → delete message.

pub mod fair;
pub mod runner;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::WorkerSettings;
use crate::imaging::{self, FormatSettings, Header, PixelLimits};
use crate::jobs::codes::{self, GAVE_UP};
use crate::jobs::{self, Failure, Job};
use crate::queue::{Delivery, JobQueue};
use crate::sandbox::{Route, Routes, Sandbox, TransformError};
use crate::storage::{BlobStore, Bucket, StoreError};

/// Attempts after which a timeout or out-of-memory on the same input is a permanent failure: the
/// first may be bad luck under load, a second one is the image.
pub const RESOURCE_ATTEMPTS: u32 = 2;
/// How long a job whose result write was refused, with no result to be seen, waits to try again.
const RESULT_RECHECK: Duration = Duration::from_secs(1);
/// How long a job of a not yet committed upload waits before it is looked at again.
const COMMIT_RECHECK: Duration = Duration::from_secs(2);
/// A job whose upload is still not committed this long after it was queued belongs to an upload
/// that failed (its api process died between the sends and the commit): it is dropped.
const COMMIT_GRACE: Duration = Duration::from_secs(120);

/// What processing one delivery came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The result is stored and the job is finished.
    Done { key: String, plugin: String },
    /// An earlier delivery already finished this job (a duplicate or a replay).
    AlreadyDone { key: String },
    /// Failed for good: recorded, message deleted (or, past the receive limit, left to dead-letter).
    Failed { key: String, failure: Failure },
    /// A passing problem: the message stays and is delivered again after `after`.
    Retry { key: String, code: &'static str, reason: String, after: Option<Duration> },
    /// The job's upload is not committed yet: looked at again shortly.
    Deferred { key: String },
    /// The message was not a job, or belongs to an upload that failed; deleted.
    Discarded { reason: String },
    /// The job could not get a sandbox slot: sent again as a new message (this delivery deleted),
    /// so waiting for the pool never counts as an attempt.
    Requeued { key: String },
    /// Shutdown came while the job waited for its turn: nothing was done, and the message is
    /// released for another worker.
    Interrupted { key: String },
    /// The bucket's event that direct uploads arrived: each was completed (checked and queued)
    /// as if its client had confirmed it.
    Received { ids: Vec<String> },
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
    /// The input formats read (`[formats]`): one turned off since the upload fails `unsupported`.
    pub formats: FormatSettings,
    /// Largest original read from the temp bucket.
    pub max_input_bytes: usize,
}

impl Worker {
    pub fn visibility(&self) -> Duration {
        Duration::from_secs(u64::from(self.settings.visibility_timeout_secs))
    }

    /// Processes one delivery, deleting the message when the job is settled.
    pub async fn process(&self, delivery: &Delivery) -> Outcome {
        self.process_in(delivery, None).await
    }

    /// [`Worker::process`], running the plugin only while holding one of `slots`: the loop keeps
    /// more jobs in flight than it has slots, so one job's reads and writes overlap another's
    /// plugin call instead of leaving a core idle.
    pub(crate) async fn process_in(&self, delivery: &Delivery, gates: Option<&fair::Gates>) -> Outcome {
        let outcome = self.process_unobserved(delivery, gates).await;
        let (name, code, plugin) = match &outcome {
            Outcome::Done { plugin, .. } => ("done", codes::OK, plugin.as_str()),
            Outcome::AlreadyDone { .. } => ("already-done", codes::OK, "none"),
            Outcome::Failed { failure, .. } => {
                ("failed", failure.code.as_str(), failure.plugin.as_deref().unwrap_or("none"))
            }
            Outcome::Retry { code, .. } => ("retry", *code, "none"),
            Outcome::Deferred { .. } => ("deferred", codes::NOT_COMMITTED, "none"),
            Outcome::Discarded { .. } => ("discarded", codes::DROPPED, "none"),
            Outcome::Requeued { .. } => ("requeued", codes::SANDBOX_BUSY, "none"),
            Outcome::Interrupted { .. } => ("interrupted", codes::SHUTDOWN, "none"),
            Outcome::Received { .. } => ("received", codes::OK, "none"),
        };
        crate::telemetry::job(name, code, plugin);
        outcome
    }

    async fn process_unobserved(&self, delivery: &Delivery, gates: Option<&fair::Gates>) -> Outcome {
        let job: Job = match serde_json::from_str(&delivery.body) {
            Ok(job) => job,
            Err(_) if !crate::lifecycle::incoming_ids(&delivery.body).is_empty() => {
                return self.receive_direct(delivery).await;
            }
            Err(e) => {
                let reason = format!("not a job message ({e}): {:.200}", delivery.body);
                let _ = self.queue.delete(&delivery.receipt).await;
                return Outcome::Discarded { reason };
            }
        };
        // The job's turn among its route's and the other routes' jobs, under the heartbeat: a
        // route with a long backlog may keep it waiting longer than the visibility timeout.
        let route = &self.routes.resolve(&job.key).prefix;
        let turn = match gates {
            Some(gates) => tokio::select! {
                turn = self.with_heartbeat(delivery, gates.jobs.acquire(route)) => Some(turn),
                () = gates.stop.cancelled() => return Outcome::Interrupted { key: job.key },
            },
            None => None,
        };
        let outcome = match self.settle(&job, delivery, gates, turn).await {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Retry {
                key: job.key.clone(),
                code: codes::STORE_UNAVAILABLE,
                reason: e.to_string(),
                after: None,
            },
        };
        let outcome = match outcome {
            // A passing failure on the last allowed delivery: report it failed; the queue moves
            // the message to the dead-letter queue when it times out.
            Outcome::Retry { key, code, reason, .. } if delivery.receive_count >= self.settings.max_receives => {
                tracing::warn!(key, code, "giving up after {} attempts: {reason}", delivery.receive_count);
                match jobs::record_failure(&*self.store, &key, &gave_up(delivery.receive_count, code)).await {
                    Ok(()) => Outcome::Failed { key, failure: gave_up(delivery.receive_count, code) },
                    Err(e) => Outcome::Retry {
                        key,
                        code,
                        reason: format!("{reason}; recording the failure: {e}"),
                        after: None,
                    },
                }
            }
            other => other,
        };
        let outcome = match outcome {
            Outcome::Requeued { key } => match self.queue.send_batch(std::slice::from_ref(&delivery.body)).await {
                Ok(()) => Outcome::Requeued { key },
                Err(e) => Outcome::Retry {
                    key,
                    code: codes::SANDBOX_BUSY,
                    reason: format!("the sandbox was busy, and sending the job again failed: {e}"),
                    after: None,
                },
            },
            other => other,
        };
        let settled = match &outcome {
            Outcome::Done { .. }
            | Outcome::AlreadyDone { .. }
            | Outcome::Discarded { .. }
            | Outcome::Requeued { .. }
            | Outcome::Received { .. } => true,
            Outcome::Failed { failure, .. } => failure.code != GAVE_UP,
            Outcome::Retry { .. } | Outcome::Deferred { .. } | Outcome::Interrupted { .. } => false,
        };
        // The webhooks before the message goes: a worker dying in between leaves the message,
        // whose redelivery finds the job settled and queues them again (the same deliveries).
        let settled = settled
            && match self.announce(&job, &outcome).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(key = job.key, "cannot queue the job's webhooks (the job comes back): {e}");
                    false
                }
            };
        if settled {
            // The commit record first, the message second: a worker dying in between leaves the
            // message, whose redelivery finds the job settled and tidies again. The other order
            // could lose the last job's tidy-up with its message.
            if let Some(upload) = &job.upload
                && let Err(e) = self.forget_upload_if_settled(&upload.id).await
            {
                tracing::warn!(upload = upload.id, "cannot tidy the upload's commit record: {e}");
            }
            if let Err(e) = self.queue.delete(&delivery.receipt).await {
                // The job is settled in the store; a redelivery will find it so and delete again.
                tracing::warn!(key = job.key, "cannot delete the job message: {e}");
            }
        }
        let again = match &outcome {
            Outcome::Retry { after: Some(after), .. } => Some(*after),
            Outcome::Deferred { .. } => Some(COMMIT_RECHECK),
            _ => None,
        };
        if let Some(after) = again
            && let Err(e) = self.queue.extend_visibility(&delivery.receipt, after).await
        {
            tracing::warn!(key = job.key, "cannot schedule the job's next attempt: {e}");
        }
        outcome
    }

    /// A bucket event naming direct uploads' objects (S3 event notifications to the job queue):
    /// each is completed as its client's confirmation would; the message goes once all are.
    async fn receive_direct(&self, delivery: &Delivery) -> Outcome {
        use crate::lifecycle::{self, CompleteError};
        let ids = lifecycle::incoming_ids(&delivery.body);
        let max_bytes = self.max_input_bytes as u64;
        for id in &ids {
            match lifecycle::complete(
                &*self.store,
                &*self.queue,
                self.routes.configs(),
                &self.limits,
                &self.formats,
                max_bytes,
                id,
            )
            .await
            {
                Ok(done) => tracing::info!(id, key = done.key, "direct upload received from the bucket's event"),
                // Completed and swept before, never created, or refused (its object is removed).
                Err(e @ (CompleteError::NotFound(_) | CompleteError::NotReceived(_) | CompleteError::Refused(_))) => {
                    tracing::info!(id, "bucket event of a direct upload: {e}")
                }
                Err(e) => {
                    return Outcome::Retry {
                        key: lifecycle::incoming_key(id),
                        code: codes::STORE_UNAVAILABLE,
                        reason: e.to_string(),
                        after: None,
                    };
                }
            }
        }
        if let Err(e) = self.queue.delete(&delivery.receipt).await {
            tracing::warn!("cannot delete a bucket event: {e}");
        }
        Outcome::Received { ids }
    }

    /// Everything but the message: returns `Err` for store errors (retried).
    async fn settle(
        &self,
        job: &Job,
        delivery: &Delivery,
        gates: Option<&fair::Gates>,
        turn: Option<fair::Slot>,
    ) -> Result<Outcome, StoreError> {
        let key = job.key.as_str();
        if let Some(outcome) = self.settled_before(job).await? {
            return Ok(outcome);
        }
        let (original, header, uploaded) = match self.read_original(key, delivery).await? {
            Ok(read) => read,
            Err(outcome) => return Ok(outcome),
        };

        let route = self.routes.resolve(key);
        let plugin = route.plugin.info.name.clone();
        let started = Instant::now();
        let requests = with_focus(route, uploaded.focus.as_deref());
        let result = self
            .transform_with_heartbeat(route, &requests, &original, header.format.media_type(), delivery, gates)
            .await;
        // Freed now unless the route keeps it (for renders on request).
        let kept = Original { kept: route.keep_originals.then(|| original.clone()), header, record: uploaded };
        drop(original);
        // Storing the results (fsynced writes, no plugin) goes on outside the job's turn, so the
        // next job reads its original meanwhile and is ready when a plugin slot frees. A store
        // permit comes first: results wait in memory for at most as many jobs as hold turns.
        let _storing = match gates {
            Some(gates) => {
                Some(gates.stores.clone().acquire_owned().await.expect("the stores semaphore is never closed"))
            }
            None => None,
        };
        drop(turn);
        let output = match result {
            Ok(output) => output,
            Err(TransformError::PoolBusy { waited }) => {
                tracing::warn!(key, plugin, "no sandbox slot within {waited:?}: the job is sent again");
                return Ok(Outcome::Requeued { key: key.into() });
            }
            Err(e) if e.is_permanent() || (e.is_resource_limit() && delivery.receive_count >= RESOURCE_ATTEMPTS) => {
                tracing::warn!(key, plugin, code = e.code(), "{e}");
                return self.fail(key, e.code(), e.public_reason(), Some(plugin), delivery).await;
            }
            Err(e) => {
                // A resource limit gets its second attempt right away; anything else waits for the
                // visibility timeout.
                let after = e.is_resource_limit().then_some(Duration::ZERO);
                return Ok(Outcome::Retry { key: key.into(), code: e.code(), reason: format!("{plugin}: {e}"), after });
            }
        };
        let outcome = self.store_results(key, route, output, kept, plugin, started).await?;
        // Deleted while it ran: a delete that listed the key's objects before these writes
        // missed them, so they go now (a delete after them removed them itself).
        if matches!(outcome, Outcome::Done { .. } | Outcome::AlreadyDone { .. })
            && !jobs::wanted(&*self.store, key).await?
        {
            return self.forget_deleted(key).await;
        }
        Ok(outcome)
    }

    /// The outcome of a job whose key was deleted: whatever of it is stored goes, nothing is
    /// written.
    async fn forget_deleted(&self, key: &str) -> Result<Outcome, StoreError> {
        match crate::lifecycle::purge(&*self.store, key).await {
            Ok(_) => Ok(Outcome::Discarded { reason: format!("{key} was deleted") }),
            Err(crate::lifecycle::DeleteError::Store(e)) => Err(e),
            Err(e) => Ok(Outcome::Retry {
                key: key.into(),
                code: codes::STORE_UNAVAILABLE,
                reason: e.to_string(),
                after: None,
            }),
        }
    }

    /// Queues the webhooks of a settled job: the upload's and the route's, and on a `dedupe`
    /// route those of the keys that are aliases of this one.
    async fn announce(&self, job: &Job, outcome: &Outcome) -> Result<(), StoreError> {
        let (state, failure) = match outcome {
            Outcome::Done { .. } | Outcome::AlreadyDone { .. } => ("done", None),
            Outcome::Failed { failure, .. } => ("failed", Some(failure.clone())),
            _ => return Ok(()),
        };
        let route = self.routes.resolve(&job.key);
        let mut targets: Vec<(String, String)> =
            [&job.webhook, &route.webhook].into_iter().flatten().map(|url| (job.key.clone(), url.clone())).collect();
        if route.dedupe {
            for (alias_key, alias) in crate::lifecycle::aliases(&*self.store, &job.key).await? {
                for url in [&alias.webhook, &route.webhook].into_iter().flatten() {
                    targets.push((alias_key.clone(), url.clone()));
                }
            }
        }
        let names = route.rendition_names();
        for (key, url) in targets {
            crate::lifecycle::announce(&*self.store, &url, &key, state, failure.clone(), &names).await?;
        }
        Ok(())
    }

    /// The outcome when the job needs no transform: finished before, failed for good before, or
    /// part of an upload that is not (or never will be) committed. A retry's failure record goes.
    async fn settled_before(&self, job: &Job) -> Result<Option<Outcome>, StoreError> {
        let key = job.key.as_str();
        if !jobs::wanted(&*self.store, key).await? {
            return self.forget_deleted(key).await.map(Some);
        }
        if jobs::found(self.store.head(Bucket::Permanent, key).await)?.is_some() {
            // Finished before (maybe the original's delete was interrupted): tidy up.
            self.store.delete(Bucket::Temp, key).await?;
            return Ok(Some(Outcome::AlreadyDone { key: key.into() }));
        }
        // A retry's message: the failure record it was sent for goes now (the message, in flight,
        // keeps the original from the orphan sweep), and the job runs again.
        if job.retry {
            self.store.delete(Bucket::Permanent, &jobs::failure_key(key)).await?;
        }
        // A `gave-up` record is the queue's verdict, not the image's: a delivery that still comes
        // (a redrive from the dead-letter queue) tries again.
        if let Some(failure) = jobs::failure(&*self.store, key).await?
            && failure.code != GAVE_UP
            && failure.code != codes::RETRYING
        {
            return Ok(Some(Outcome::Failed { key: key.into(), failure }));
        }
        if let Some(upload) = &job.upload
            && jobs::committed_keys(&*self.store, &upload.id).await?.is_none()
        {
            let original = jobs::found(self.store.head(Bucket::Temp, key).await)?;
            if original.is_some() && upload.age() < COMMIT_GRACE {
                return Ok(Some(Outcome::Deferred { key: key.into() }));
            }
            // The upload failed: the client was told so, and nothing of it may be processed.
            self.store.delete(Bucket::Temp, key).await?;
            return Ok(Some(Outcome::Discarded { reason: format!("{key}: its upload was not completed") }));
        }
        Ok(None)
    }

    /// The original, its header (checked against today's limits) and its record (focus, owner);
    /// or the outcome
    /// when there is nothing to transform.
    async fn read_original(
        &self,
        key: &str,
        delivery: &Delivery,
    ) -> Result<Result<(Bytes, Header, jobs::ImageMeta), Outcome>, StoreError> {
        let mut uploaded = jobs::ImageMeta::default();
        let original = match jobs::found(self.store.get(Bucket::Temp, key).await)? {
            Some(object) => {
                uploaded = jobs::ImageMeta::of(&object.info.meta);
                object.bytes(self.max_input_bytes).await
            }
            None => Err(StoreError::NotFound { key: key.into() }),
        };
        let original = match original {
            Ok(bytes) => bytes,
            Err(StoreError::NotFound { .. }) => {
                // Another worker may have finished between our reads.
                if jobs::found(self.store.head(Bucket::Permanent, key).await)?.is_some() {
                    return Ok(Err(Outcome::AlreadyDone { key: key.into() }));
                }
                return self
                    .fail(key, codes::MISSING_ORIGINAL, "the original image is gone".into(), None, delivery)
                    .await
                    .map(Err);
            }
            Err(StoreError::TooLarge { limit }) => {
                let message = format!("the original is larger than {limit} bytes");
                return self.fail(key, codes::IMAGE_TOO_LARGE, message, None, delivery).await.map(Err);
            }
            Err(e) => return Err(e),
        };

        // The same header checks as at upload: the limits may have changed since.
        let header = match imaging::probe(&original) {
            Ok(header) => header,
            Err(e) => {
                tracing::info!(key, "unreadable original: {e}");
                return self.fail(key, codes::UNREADABLE_IMAGE, e.public_reason(), None, delivery).await.map(Err);
            }
        };
        if let Some(refusal) = self.formats.refusal(header.format) {
            return self.fail(key, codes::UNSUPPORTED, refusal, None, delivery).await.map(Err);
        }
        if let Err(e) = self.limits.check(&header) {
            let code = if e.is_animation() { codes::TOO_MANY_FRAMES } else { codes::TOO_MANY_PIXELS };
            return self.fail(key, code, e.to_string(), None, delivery).await.map(Err);
        }
        Ok(Ok((original, header, uploaded)))
    }

    /// Stores the renditions of a successful call, the default one last, and removes the original
    /// (moved to `{key}/original` first when the route keeps originals).
    async fn store_results(
        &self,
        key: &str,
        route: &Route,
        output: crate::sandbox::Rendered,
        original: Original,
        plugin: String,
        started: Instant,
    ) -> Result<Outcome, StoreError> {
        let Original { kept, header, record: uploaded } = original;
        let owner = uploaded.owner.clone();
        if let Some(original) = kept {
            // With its focal point: renders on request crop around it, as the worker does.
            let record = jobs::ImageMeta { width: Some(header.width), height: Some(header.height), ..uploaded };
            let meta = record.object(header.format.media_type());
            self.store.put_if_absent(Bucket::Permanent, &jobs::original_key(key), original, &meta).await?;
        }
        // Every other rendition first, at `{key}/{name}`; the default one last, under the key
        // itself: its presence means the job is done (and all renditions are there). Each is
        // written once: a duplicate delivery that finished first keeps its (served, immutable)
        // results, and this one settles as already done.
        let plugin_version = format!("{} {}", route.plugin.info.name, route.plugin.info.version);
        let names: Vec<&str> = route.renditions.iter().map(|r| r.name.as_str()).collect();
        let mut default_image = None;
        let (peak, calls, placeholder) = (output.stats.memory_peak, output.calls, output.placeholder);
        for (i, image) in output.images.into_iter().enumerate() {
            if i == route.default_rendition {
                default_image = Some(image);
                continue;
            }
            let meta = result_meta(&image, &plugin_version, names[i]).object(image.header.format.media_type());
            let rendition_key = jobs::rendition_key(key, names[i]);
            self.store.put_if_absent(Bucket::Permanent, &rendition_key, Bytes::from(image.bytes), &meta).await?;
        }
        let image = default_image.expect("the default rendition is one of the route's");
        // The renditions (not their format variants, which `/download` finds from the route).
        let renditions = names.iter().filter(|n| !crate::sandbox::is_variant(n)).map(|n| n.to_string()).collect();
        let mut record = result_meta(&image, &plugin_version, names[route.default_rendition]);
        record.renditions = Some(renditions);
        record.plugin_calls = Some(calls);
        // Who uploaded it may delete it.
        record.owner = owner;
        if let Some(p) = placeholder {
            let (r, g, b) = p.dominant_color;
            record.dominant_color = Some(format!("#{r:02x}{g:02x}{b:02x}"));
            use base64::Engine;
            record.thumbhash = Some(base64::engine::general_purpose::STANDARD.encode(&p.thumbhash));
        }
        let meta = record.object(image.header.format.media_type());
        let created = self.store.put_if_absent(Bucket::Permanent, key, Bytes::from(image.bytes), &meta).await?;
        // Refused: another writer's result is there, or so the store said. The original goes
        // only once a result is seen to exist; otherwise this job tries again.
        if !created && jobs::found(self.store.head(Bucket::Permanent, key).await)?.is_none() {
            return Ok(Outcome::Retry {
                key: key.into(),
                code: codes::RESULT_NOT_CONFIRMED,
                reason: "the result's write was refused, yet no result is there".into(),
                after: Some(RESULT_RECHECK),
            });
        }
        self.store.delete(Bucket::Temp, key).await?;
        // A `gave-up` record from an earlier round is obsolete now.
        self.store.delete(Bucket::Permanent, &jobs::failure_key(key)).await?;
        if !created {
            return Ok(Outcome::AlreadyDone { key: key.into() });
        }
        tracing::info!(
            key,
            plugin,
            renditions = names.len(),
            calls,
            ms = started.elapsed().as_millis() as u64,
            memory_peak = peak,
            "transformed"
        );
        Ok(Outcome::Done { key: key.into(), plugin })
    }

    /// Runs the sandbox (once the route's turn for a slot has come, when there are slots) under
    /// the heartbeat. The sandbox's own deadline bounds how long the call takes.
    async fn transform_with_heartbeat(
        &self,
        route: &Route,
        requests: &[crate::sandbox::RenditionRequest],
        input: &[u8],
        media_type: &'static str,
        delivery: &Delivery,
        gates: Option<&fair::Gates>,
    ) -> Result<crate::sandbox::Rendered, TransformError> {
        self.with_heartbeat(delivery, async {
            let _slot = match gates {
                Some(gates) => Some(gates.calls.acquire(&route.prefix).await),
                None => None,
            };
            self.sandbox.render(&route.plugin, input, media_type, requests).await
        })
        .await
    }

    /// Runs `task`, extending the message's visibility while it runs so a job that waits or
    /// works long is not handed to another worker.
    async fn with_heartbeat<T>(&self, delivery: &Delivery, task: impl Future<Output = T>) -> T {
        tokio::pin!(task);
        let beat = (self.visibility() / 2).max(Duration::from_secs(1));
        loop {
            tokio::select! {
                result = &mut task => return result,
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

    /// Removes an upload's commit record once every job of the upload is settled (result or
    /// failure record). Each job checks after settling, so the last one to finish removes it.
    async fn forget_upload_if_settled(&self, upload: &str) -> Result<(), StoreError> {
        let Some(keys) = jobs::committed_keys(&*self.store, upload).await? else { return Ok(()) };
        for key in &keys {
            let settled = jobs::found(self.store.head(Bucket::Permanent, key).await)?.is_some()
                || jobs::found(self.store.head(Bucket::Permanent, &jobs::failure_key(key)).await)?.is_some();
            if !settled {
                return Ok(());
            }
        }
        self.store.delete(Bucket::Temp, &jobs::commit_key(upload)).await
    }
}

/// What is known of a job's original once its plugin ran: its header, its record (focus, owner),
/// and its bytes when the route keeps originals.
struct Original {
    kept: Option<Bytes>,
    header: Header,
    record: jobs::ImageMeta,
}

/// The route's rendition requests, with the focal point given at upload as the `gravity` of
/// every rendition that sets none, when the plugin has that option.
fn with_focus(route: &Route, focus: Option<&str>) -> Vec<crate::sandbox::RenditionRequest> {
    let mut requests = route.renditions.clone();
    let takes_gravity = route.plugin.info.params.iter().any(|p| p.name == "gravity");
    if let Some(focus) = focus.filter(|_| takes_gravity) {
        for request in &mut requests {
            if !request.options.iter().any(|p| p.name == "gravity") {
                request.options.push(crate::sandbox::Param { name: "gravity".into(), value: focus.into() });
            }
        }
    }
    requests
}

/// What is stored with a result: its size, the plugin that made it and which rendition it is.
fn result_meta(image: &crate::sandbox::Image, plugin: &str, rendition: &str) -> jobs::ImageMeta {
    jobs::ImageMeta {
        width: Some(image.header.width),
        height: Some(image.header.height),
        plugin: Some(plugin.into()),
        rendition: Some(rendition.into()),
        ..Default::default()
    }
}

/// The failure recorded when the queue gives up on a job; the reason names the last error's code
/// only (its details are in the log).
fn gave_up(attempts: u32, code: &str) -> Failure {
    Failure {
        code: GAVE_UP.into(),
        message: format!("gave up after {attempts} attempts (last error: {code})"),
        plugin: None,
        attempts,
    }
}
