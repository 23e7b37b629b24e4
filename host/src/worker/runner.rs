//! The loop around [`Worker::process`]: a cron schedule starts ticks (never overlapping); a tick
//! drains the queue batch by batch with bounded concurrency until it is empty, the tick's budget
//! is spent, or shutdown is asked for. In-flight jobs finish; unstarted ones stay on the queue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;

use super::{Outcome, Worker};

/// How long a tick's receive waits for messages before it decides the queue is empty.
const RECEIVE_WAIT: Duration = Duration::from_secs(1);

/// Counts of one tick's outcomes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TickReport {
    pub done: usize,
    pub failed: usize,
    pub retried: usize,
}

impl Worker {
    /// One tick: receive and process until the queue is empty, the budget is spent or `stop`.
    pub async fn tick(&self, concurrency: usize, stop: &CancellationToken) -> TickReport {
        let deadline = Instant::now() + Duration::from_secs(self.settings.tick_budget_secs);
        let mut report = TickReport::default();
        while !stop.is_cancelled() && Instant::now() < deadline {
            let batch = tokio::select! {
                batch = self.queue.receive(self.settings.batch_size as usize, RECEIVE_WAIT, self.visibility()) => batch,
                _ = stop.cancelled() => break,
            };
            let batch = match batch {
                Ok(batch) if batch.is_empty() => break,
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!("cannot receive jobs: {e}");
                    break;
                }
            };
            // Each job future owns what it uses (a cheap clone of Arc handles), which keeps the
            // tick future Send for the scheduler.
            let jobs = batch.into_iter().map(|delivery| {
                let worker = self.clone();
                async move { worker.process(&delivery).await }
            });
            let outcomes: Vec<Outcome> = futures::stream::iter(jobs).buffer_unordered(concurrency).collect().await;
            for outcome in outcomes {
                match &outcome {
                    Outcome::Done { .. } | Outcome::AlreadyDone { .. } => report.done += 1,
                    Outcome::Failed { .. } | Outcome::Discarded { .. } => report.failed += 1,
                    Outcome::Retry { key, reason } => {
                        report.retried += 1;
                        tracing::warn!(key, "will retry: {reason}");
                    }
                }
            }
        }
        report
    }
}

/// The scheduled worker; [`Runner::stop`] waits for the running tick's in-flight jobs.
pub struct Runner {
    scheduler: JobScheduler,
    stop: CancellationToken,
    tick_lock: Arc<tokio::sync::Mutex<()>>,
}

impl Runner {
    pub async fn start(worker: Worker, schedule: &str, concurrency: usize) -> anyhow::Result<Runner> {
        let stop = CancellationToken::new();
        let tick_lock = Arc::new(tokio::sync::Mutex::new(()));
        let scheduler = JobScheduler::new().await?;
        let (job_stop, job_lock) = (stop.clone(), tick_lock.clone());
        let worker = Arc::new(worker);
        let job = Job::new_async(schedule, move |_, _| {
            let (worker, stop, lock) = (worker.clone(), job_stop.clone(), job_lock.clone());
            Box::pin(async move {
                // Ticks never overlap: a tick that finds the previous one still running skips.
                let Ok(_guard) = lock.try_lock() else { return };
                if stop.is_cancelled() {
                    return;
                }
                let report = worker.tick(concurrency, &stop).await;
                if report != TickReport::default() {
                    tracing::info!(done = report.done, failed = report.failed, retried = report.retried, "worker tick");
                }
            })
        })
        .map_err(|e| anyhow::anyhow!("worker schedule {schedule:?} is not a valid 6-field cron expression: {e}"))?;
        scheduler.add(job).await?;
        scheduler.start().await?;
        Ok(Runner { scheduler, stop, tick_lock })
    }

    /// Stops scheduling, lets in-flight jobs finish, and returns when the running tick is over.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Err(e) = self.scheduler.shutdown().await {
            tracing::warn!("stopping the worker schedule: {e}");
        }
        let _ = self.tick_lock.lock().await;
    }
}
