//! The job queue port: at-least-once delivery with visibility timeouts, receive counts and a
//! dead-letter queue. An embedded durable adapter (SQLite) and an SQS adapter implement it.

#[cfg(feature = "conformance-suites")]
pub mod conformance;
mod embedded;
#[cfg(feature = "aws")]
mod sqs;

use std::time::Duration;

pub use embedded::EmbeddedQueue;
#[cfg(feature = "aws")]
pub use sqs::{SqsQueue, SqsSettings};

/// Most messages one send or receive call handles (SQS's batch limit).
pub const MAX_BATCH: usize = 10;

/// One delivery of a message. The same message may be delivered again (after its visibility
/// timeout, or as a duplicate); `receipt` identifies this delivery for delete and extend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub message_id: String,
    pub body: String,
    pub receipt: String,
    /// How many times the message has been received, this delivery included (1 on the first).
    pub receive_count: u32,
}

/// How many messages a queue holds, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueDepth {
    /// Waiting to be received.
    pub waiting: u64,
    /// Received and hidden (a worker has them, or a retry waits out its delay).
    pub in_flight: u64,
    /// In the dead-letter queue.
    pub dead: u64,
    /// Age of the oldest message waiting or in flight, when the backend can tell (SQS cannot
    /// without CloudWatch: `ApproximateAgeOfOldestMessage`).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "seconds")]
    pub oldest_age: Option<Duration>,
}

fn seconds<S: serde::Serializer>(age: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(age.unwrap_or_default().as_secs_f64())
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    #[error("a batch holds 1 to 10 messages, got {0}")]
    BadBatch(usize),
    #[error("the receipt is no longer valid (the message was received again or deleted)")]
    ReceiptExpired,
    #[error("{failed} of the batch's messages were not accepted: {reason}")]
    SendFailed { failed: usize, reason: String },
    #[error("queue {name:?} does not exist (create it, or set create_resources = true)")]
    MissingQueue { name: String },
    #[error("queue unavailable: {0}")]
    Unavailable(String),
}

/// The job queue port.
#[async_trait::async_trait]
pub trait JobQueue: Send + Sync + std::fmt::Debug {
    /// Sends 1..=10 messages; returns only when all are stored (or fails, naming how many were not).
    async fn send_batch(&self, bodies: &[String]) -> Result<(), QueueError>;
    /// Receives up to `max` (1..=10) messages, waiting up to `wait` for the first; each stays hidden
    /// from other receivers for `visibility`. A message received too often goes to the dead-letter
    /// queue instead.
    async fn receive(&self, max: usize, wait: Duration, visibility: Duration) -> Result<Vec<Delivery>, QueueError>;
    /// Deletes the message of this delivery. Deleting twice succeeds.
    async fn delete(&self, receipt: &str) -> Result<(), QueueError>;
    /// Keeps the message hidden for `visibility` from now (a heartbeat for long jobs).
    async fn extend_visibility(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError>;
    /// Receives up to `max` messages from the dead-letter queue (for operators, the worker's
    /// dead-letter sweep and tests); each stays hidden for `visibility` (zero: not at all).
    async fn receive_dead_letters(&self, max: usize, visibility: Duration) -> Result<Vec<Delivery>, QueueError>;
    /// Deletes the dead-lettered message of this delivery (from `receive_dead_letters`), e.g.
    /// once it is sent again. Deleting twice succeeds.
    async fn delete_dead_letter(&self, receipt: &str) -> Result<(), QueueError>;
    /// How many messages wait, are in flight and are dead-lettered (approximate on SQS).
    async fn depth(&self) -> Result<QueueDepth, QueueError>;
    /// Whether a message for `key` is queued, in flight or dead-lettered; `None` when the backend
    /// cannot tell (SQS cannot search its messages). The orphan sweep keeps what is still queued.
    async fn holds_key(&self, _key: &str) -> Result<Option<bool>, QueueError> {
        Ok(None)
    }
    /// Checks the queue answers (for readiness).
    async fn check(&self) -> Result<(), QueueError>;
}

fn check_batch(n: usize) -> Result<(), QueueError> {
    if (1..=MAX_BATCH).contains(&n) { Ok(()) } else { Err(QueueError::BadBatch(n)) }
}
