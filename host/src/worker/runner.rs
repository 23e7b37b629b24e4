//! The loop around [`Worker::process`]: a cron schedule starts ticks (never overlapping); a tick
//! keeps `concurrency` plugin calls busy, with one more job in flight per slot so that reading an
//! original and storing a result overlap another job's plugin call. Calls and jobs take their
//! slots fairly by route ([`super::fair`]): a route whose plugin sleeps or spins through its whole
//! budget cannot hold up the others. The tick holds up to [`HELD_PER_SLOT`] messages per slot
//! (each under its heartbeat; a held message costs no memory beyond its body), so jobs of other
//! routes queued behind a slow route's backlog are received and run beside it. It keeps receiving
//! until the queue is empty and nothing is in flight, the tick's budget is spent, or shutdown is
//! asked for. On shutdown, jobs in flight get the grace period to finish; the rest are cancelled
//! and their messages released at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::fair::Gates;
use super::{Outcome, Worker};
use crate::jobs::codes::GAVE_UP;
use crate::jobs::{self, Failure};
use crate::storage::Bucket;

/// How long a receive waits for messages before the tick decides the queue is empty.
const RECEIVE_WAIT: Duration = Duration::from_secs(1);

/// Messages a tick holds per plugin slot: the jobs being processed (two per slot) and a look-ahead
/// past a slow route's backlog.
pub const HELD_PER_SLOT: usize = 8;

/// How long releasing the messages of cancelled jobs may take, on top of the grace period (within
/// the process's whole [`crate::server::STOP_MARGIN`]).
const RELEASE_WAIT: Duration = Duration::from_millis(500);

/// Counts of one tick's outcomes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TickReport {
    pub done: usize,
    pub failed: usize,
    pub retried: usize,
    /// Jobs cancelled by shutdown; their messages were released for another worker.
    pub cancelled: usize,
}

impl TickReport {
    fn count(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Done { .. } | Outcome::AlreadyDone { .. } | Outcome::Received { .. } => self.done += 1,
            Outcome::Failed { .. } | Outcome::Discarded { .. } => self.failed += 1,
            Outcome::Retry { key, code, reason, .. } => {
                self.retried += 1;
                tracing::warn!(key, code, "will retry: {reason}");
            }
            Outcome::Requeued { .. } => self.retried += 1,
            Outcome::Interrupted { .. } => self.cancelled += 1,
            Outcome::Deferred { .. } => {}
        }
    }
}

impl Worker {
    /// One tick: keep `concurrency` plugin calls busy until the queue is empty, the budget is
    /// spent or `stop` (then in-flight jobs get `shutdown_grace_secs`, and the rest are cancelled).
    pub async fn tick(&self, concurrency: usize, stop: &CancellationToken) -> TickReport {
        let concurrency = concurrency.max(1);
        let gates = Gates::new(concurrency, self.sandbox.settings().max_instances as usize, stop.clone());
        let room = concurrency * HELD_PER_SLOT;
        let deadline = Instant::now() + Duration::from_secs(self.settings.tick_budget_secs);
        let mut report = TickReport::default();
        let mut in_flight: JoinSet<Outcome> = JoinSet::new();
        // Receipts of the jobs in flight, to release them if they are cancelled.
        let mut receipts: HashMap<tokio::task::Id, String> = HashMap::new();
        // How long the next receive may wait for messages; `None` after an empty receive with
        // nothing in flight, until a job ends (then one look without waiting).
        let mut wait = Some(RECEIVE_WAIT);
        // A receive still waiting when shutdown is asked for: it is not dropped (on SQS the
        // server may already have handed out messages, hidden until their visibility timeout)
        // but finished during the grace period, and what it brings is released at once.
        let mut interrupted = None;
        loop {
            if stop.is_cancelled() {
                break;
            }
            // Jobs that ended while the loop was receiving.
            while let Some(joined) = in_flight.try_join_next_with_id() {
                let release = self.finished(joined, &mut receipts, &mut report);
                self.release(release.into_iter().collect()).await;
            }
            let free = room.saturating_sub(in_flight.len());
            if free > 0
                && let Some(waiting) = wait
                && Instant::now() < deadline
            {
                let max = free.min(self.settings.batch_size as usize);
                let mut receiving = self.queue.receive(max, waiting, self.visibility());
                let received = tokio::select! {
                    received = &mut receiving => received,
                    () = stop.cancelled() => {
                        interrupted = Some(receiving);
                        break;
                    }
                };
                match received {
                    // While jobs run, keep looking: a job of another route may come in behind
                    // them (the receive's own wait paces the loop).
                    Ok(batch) if batch.is_empty() => wait = (!in_flight.is_empty()).then_some(RECEIVE_WAIT),
                    Ok(batch) => {
                        wait = Some(RECEIVE_WAIT);
                        for delivery in batch {
                            let (worker, gates) = (self.clone(), gates.clone());
                            let receipt = delivery.receipt.clone();
                            // Every log line of the job names its message.
                            let span = tracing::info_span!("job", message_id = %delivery.message_id);
                            let handle = in_flight.spawn(
                                async move { worker.process_in(&delivery, Some(&gates)).await }.instrument(span),
                            );
                            receipts.insert(handle.id(), receipt);
                        }
                    }
                    Err(e) => {
                        tracing::warn!("cannot receive jobs: {e}");
                        wait = None;
                    }
                }
                continue;
            }
            if in_flight.is_empty() {
                break;
            }
            tokio::select! {
                Some(joined) = in_flight.join_next_with_id() => {
                    wait.get_or_insert(Duration::ZERO);
                    let release = self.finished(joined, &mut receipts, &mut report);
                    self.release(release.into_iter().collect()).await;
                }
                _ = stop.cancelled() => break,
            }
        }

        if !in_flight.is_empty() || interrupted.is_some() {
            let grace = Duration::from_secs(self.settings.shutdown_grace_secs);
            let stopping = Instant::now();
            // Both within one grace period: a stop during a long poll costs no extra time.
            let mut to_release = Vec::new();
            let mut received = Vec::new();
            let receive = async {
                if let Some(receiving) = interrupted {
                    received.extend(receiving.await.unwrap_or_default().into_iter().map(|d| d.receipt));
                }
            };
            let drain = async {
                while let Some(joined) = in_flight.join_next_with_id().await {
                    to_release.extend(self.finished(joined, &mut receipts, &mut report));
                }
            };
            // Cut by the grace period, a receive's messages stay hidden until their visibility
            // timeout: late, not lost.
            let _ = tokio::time::timeout(grace, async { tokio::join!(receive, drain) }).await;
            to_release.append(&mut received);
            in_flight.abort_all();
            while let Some(joined) = in_flight.join_next_with_id().await {
                to_release.extend(self.finished(joined, &mut receipts, &mut report));
            }
            let released = to_release.len();
            self.release(to_release).await;
            tracing::info!(
                cancelled = report.cancelled,
                released,
                took_ms = stopping.elapsed().as_millis() as u64,
                "worker stopped"
            );
            // The dead-letter sweep is left to the next tick of any worker: shutdown stays
            // within its grace period plus one bounded round of releases.
            return report;
        }
        self.sweep_dead_letters().await;
        match crate::lifecycle::sweep_direct(&*self.store).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "removed direct uploads past their expiry"),
            Err(e) => tracing::warn!("direct upload sweep: {e}"),
        }
        report
    }

    /// Makes the messages of cancelled or crashed jobs visible again now rather than after their
    /// visibility timeout: all at once, and for at most [`RELEASE_WAIT`] (a slow queue must not
    /// hold up a shutdown; a message not released is redelivered after its timeout anyway).
    async fn release(&self, receipts: Vec<String>) {
        if receipts.is_empty() {
            return;
        }
        let all = futures::future::join_all(receipts.iter().map(|receipt| async move {
            if let Err(e) = self.queue.extend_visibility(receipt, Duration::ZERO).await {
                tracing::warn!("cannot release a message: {e}");
            }
        }));
        if tokio::time::timeout(RELEASE_WAIT, all).await.is_err() {
            tracing::warn!(
                count = receipts.len(),
                "releasing messages took over {RELEASE_WAIT:?}; they return after their visibility timeout"
            );
        }
    }

    /// Counts a joined job; returns the receipt of its message when that message should be
    /// released (the job was cancelled or its task failed).
    fn finished(
        &self,
        joined: Result<(tokio::task::Id, Outcome), tokio::task::JoinError>,
        receipts: &mut HashMap<tokio::task::Id, String>,
        report: &mut TickReport,
    ) -> Option<String> {
        match joined {
            // Stopped before its turn came: its message goes back at once.
            Ok((id, Outcome::Interrupted { .. })) => {
                report.cancelled += 1;
                receipts.remove(&id)
            }
            Ok((id, outcome)) => {
                receipts.remove(&id);
                report.count(&outcome);
                None
            }
            Err(e) => {
                if e.is_cancelled() {
                    report.cancelled += 1;
                } else {
                    report.retried += 1;
                    tracing::error!("a job task failed: {e}");
                }
                receipts.remove(&e.id())
            }
        }
    }

    /// Jobs that reached the dead-letter queue without a result or failure record (their worker
    /// died, or was cancelled, on the last allowed attempt) get a `gave-up` record, so `/status`
    /// says failed instead of pending forever. The messages stay for an operator to redrive.
    pub async fn sweep_dead_letters(&self) {
        let dead = match self.queue.receive_dead_letters(crate::queue::MAX_BATCH, Duration::ZERO).await {
            Ok(dead) => dead,
            Err(e) => {
                tracing::warn!("cannot read the dead-letter queue: {e}");
                return;
            }
        };
        for delivery in dead {
            let Ok(job) = serde_json::from_str::<jobs::Job>(&delivery.body) else { continue };
            let settled = async {
                Ok::<_, crate::storage::StoreError>(
                    jobs::found(self.store.head(Bucket::Permanent, &job.key).await)?.is_some()
                        || jobs::failure(&*self.store, &job.key).await?.is_some(),
                )
            };
            match settled.await {
                Ok(true) => {}
                Ok(false) => {
                    let failure = Failure {
                        code: GAVE_UP.into(),
                        message: format!(
                            "gave up after {} attempts (the last one did not finish)",
                            delivery.receive_count
                        ),
                        plugin: None,
                        attempts: delivery.receive_count,
                    };
                    match jobs::record_failure(&*self.store, &job.key, &failure).await {
                        Ok(()) => tracing::warn!(key = job.key, "dead-lettered job recorded as failed"),
                        Err(e) => tracing::warn!(key = job.key, "cannot record a dead-lettered job: {e}"),
                    }
                }
                Err(e) => tracing::warn!(key = job.key, "cannot check a dead-lettered job: {e}"),
            }
        }
    }
}

impl Worker {
    /// Removes what dropped uploads left in the temp bucket: originals older than `age` that no
    /// queued or dead-lettered message and no failure record refers to (a failed job's original
    /// is kept for `pixbox jobs retry`), and upload records older than `age` none of whose keys
    /// is still queued. Needs a queue that can be searched; with one that cannot (SQS), nothing
    /// is removed. Returns how many objects were removed.
    pub async fn sweep_orphans(&self, age: Duration) -> Result<usize, crate::storage::StoreError> {
        let mut removed = 0;
        for key in self.store.list(Bucket::Temp, "").await? {
            let Some(info) = jobs::found(self.store.head(Bucket::Temp, &key).await)? else { continue };
            let old_enough = info.modified.and_then(|m| m.elapsed().ok()).is_some_and(|elapsed| elapsed >= age);
            if !old_enough || self.referred_to(&key).await? {
                continue;
            }
            // Looked at again right before the delete: a retry or a late upload may have come to
            // refer to it (or rewritten it) since.
            let now = jobs::found(self.store.head(Bucket::Temp, &key).await)?;
            if now.is_none_or(|now| now.etag != info.etag) || self.referred_to(&key).await? {
                continue;
            }
            self.store.delete(Bucket::Temp, &key).await?;
            tracing::info!(key, "removed an orphan from the temp bucket");
            removed += 1;
        }
        Ok(removed)
    }

    /// Whether a temp object is still needed: an original a job (queued, in flight or
    /// dead-lettered) or a failure record refers to, or an upload record with a key still queued.
    async fn referred_to(&self, key: &str) -> Result<bool, crate::storage::StoreError> {
        Ok(match jobs::upload_of_commit_key(key) {
            Some(upload) => {
                let keys = jobs::committed_keys(&*self.store, upload).await?.unwrap_or_default();
                let mut queued = false;
                for key in &keys {
                    queued |= self.queue_holds(key).await;
                }
                queued
            }
            None if key.starts_with(jobs::RESERVED_PREFIX) => true,
            None => jobs::failure(&*self.store, key).await?.is_some() || self.queue_holds(key).await,
        })
    }

    /// Whether the queue holds a message for `key`; true when it cannot tell or does not answer
    /// (then nothing is removed).
    async fn queue_holds(&self, key: &str) -> bool {
        match self.queue.holds_key(key).await {
            Ok(Some(held)) => held,
            Ok(None) => true,
            Err(e) => {
                tracing::warn!("orphan sweep: cannot search the queue: {e}");
                true
            }
        }
    }
}

/// The scheduled worker; [`Runner::stop`] returns when the running tick is over (its jobs
/// finished, or cancelled after the grace period).
pub struct Runner {
    scheduler: JobScheduler,
    stop: CancellationToken,
    tick_lock: Arc<tokio::sync::Mutex<()>>,
}

/// The orphan sweep runs at most this often (and more often only when the age is shorter).
const ORPHAN_SWEEP_EVERY: Duration = Duration::from_secs(600);

impl Runner {
    /// Starts ticking on `schedule`. With `orphan_age`, ticks also remove temp objects that no
    /// job refers to once they are that old (only for a queue that can be searched).
    pub async fn start(
        worker: Worker,
        schedule: &str,
        concurrency: usize,
        orphan_age: Option<Duration>,
    ) -> anyhow::Result<Runner> {
        let stop = CancellationToken::new();
        let tick_lock = Arc::new(tokio::sync::Mutex::new(()));
        let scheduler = JobScheduler::new().await?;
        let (job_stop, job_lock) = (stop.clone(), tick_lock.clone());
        let worker = Arc::new(worker);
        let last_sweep: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
        let job = Job::new_async(schedule, move |_, _| {
            let (worker, stop, lock) = (worker.clone(), job_stop.clone(), job_lock.clone());
            let last_sweep = last_sweep.clone();
            Box::pin(async move {
                // Ticks never overlap: a tick that finds the previous one still running skips.
                let Ok(_guard) = lock.try_lock() else { return };
                if stop.is_cancelled() {
                    return;
                }
                let started = Instant::now();
                let report = worker.tick(concurrency, &stop).await;
                crate::telemetry::tick(started.elapsed());
                if let Some(age) = orphan_age {
                    let due = {
                        let mut last = last_sweep.lock().unwrap_or_else(|p| p.into_inner());
                        let due = last.is_none_or(|at| at.elapsed() >= age.min(ORPHAN_SWEEP_EVERY));
                        if due {
                            *last = Some(Instant::now());
                        }
                        due
                    };
                    if due && !stop.is_cancelled() {
                        match worker.sweep_orphans(age).await {
                            Ok(0) => {}
                            Ok(removed) => tracing::info!(removed, "removed orphaned originals and upload records"),
                            Err(e) => tracing::warn!("orphan sweep: {e}"),
                        }
                    }
                }
                if report != TickReport::default() {
                    tracing::info!(
                        done = report.done,
                        failed = report.failed,
                        retried = report.retried,
                        cancelled = report.cancelled,
                        "worker tick"
                    );
                }
            })
        })
        .map_err(|e| anyhow::anyhow!("worker schedule {schedule:?} is not a valid 6-field cron expression: {e}"))?;
        scheduler.add(job).await?;
        scheduler.start().await?;
        Ok(Runner { scheduler, stop, tick_lock })
    }

    /// Stops scheduling and receiving, gives in-flight jobs the grace period, and returns when
    /// the running tick is over.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Err(e) = self.scheduler.shutdown().await {
            tracing::warn!("stopping the worker schedule: {e}");
        }
        let _ = self.tick_lock.lock().await;
    }
}
