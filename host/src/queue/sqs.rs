//! SQS adapter (`aws-sdk-sqs`): long polling, batch send with per-entry failure handling,
//! ChangeMessageVisibility, ApproximateReceiveCount, and a dead-letter queue via redrive policy.

use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry};

use super::{Delivery, JobQueue, QueueDepth, QueueError, check_batch};
use crate::aws::describe;

/// Source queue retention: SQS's default, 4 days.
const RETENTION_SECS: u32 = 4 * 24 * 3600;
/// The dead-letter queue keeps the original enqueue time, so it must retain longer: the maximum.
const DLQ_RETENTION_SECS: u32 = 14 * 24 * 3600;

#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: Client,
    url: String,
    dead_letter_url: String,
}

/// How to find (or make) the queues.
#[derive(Debug, Clone)]
pub struct SqsSettings<'a> {
    pub name: &'a str,
    /// Overrides `name` when set.
    pub url: Option<&'a str>,
    pub dead_letter_name: &'a str,
    pub create: bool,
    pub max_receives: u32,
    pub visibility_timeout_secs: u32,
}

impl SqsQueue {
    pub async fn connect(sdk: &aws_config::SdkConfig, settings: &SqsSettings<'_>) -> Result<Self, QueueError> {
        let client = Client::new(sdk);
        let dead_letter_url = queue_url(
            &client,
            settings.dead_letter_name,
            settings.create,
            &[(QueueAttributeName::MessageRetentionPeriod, DLQ_RETENTION_SECS.to_string())],
        )
        .await?;
        let url = match settings.url {
            Some(url) => url.to_string(),
            None => {
                let arn = client
                    .get_queue_attributes()
                    .queue_url(&dead_letter_url)
                    .attribute_names(QueueAttributeName::QueueArn)
                    .send()
                    .await
                    .map_err(unavailable)?
                    .attributes
                    .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
                    .ok_or_else(|| QueueError::Unavailable("the dead-letter queue has no ARN".into()))?;
                let redrive = serde_json::json!({
                    "deadLetterTargetArn": arn,
                    "maxReceiveCount": settings.max_receives.to_string(),
                });
                queue_url(
                    &client,
                    settings.name,
                    settings.create,
                    &[
                        (QueueAttributeName::RedrivePolicy, redrive.to_string()),
                        (QueueAttributeName::VisibilityTimeout, settings.visibility_timeout_secs.to_string()),
                        (QueueAttributeName::MessageRetentionPeriod, RETENTION_SECS.to_string()),
                    ],
                )
                .await?
            }
        };
        Ok(SqsQueue { client, url, dead_letter_url })
    }

    async fn receive_from(
        &self,
        url: &str,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(max as i32)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .visibility_timeout(visibility.as_secs().max(1) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                let receive_count = m
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1);
                Some(Delivery { message_id: m.message_id?, body: m.body?, receipt: m.receipt_handle?, receive_count })
            })
            .collect())
    }
}

impl SqsQueue {
    /// (visible, not visible) approximate message counts of the queue at `url`.
    async fn counts(&self, url: &str) -> Result<(u64, u64), QueueError> {
        let attributes = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(unavailable)?
            .attributes
            .unwrap_or_default();
        let get = |name: QueueAttributeName| attributes.get(&name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Ok((
            get(QueueAttributeName::ApproximateNumberOfMessages),
            get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                + get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        ))
    }
}

/// The URL of queue `name`; with `create`, the queue is created (with `attributes`) when missing.
async fn queue_url(
    client: &Client,
    name: &str,
    create: bool,
    attributes: &[(QueueAttributeName, String)],
) -> Result<String, QueueError> {
    match client.get_queue_url().queue_name(name).send().await {
        Ok(out) => return out.queue_url.ok_or_else(|| QueueError::Unavailable(format!("no URL for queue {name}"))),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_queue_does_not_exist()) => {}
        Err(e) if e.code() == Some("AWS.SimpleQueueService.NonExistentQueue") => {}
        Err(e) => return Err(unavailable(e)),
    }
    if !create {
        return Err(QueueError::MissingQueue { name: name.into() });
    }
    let out = client
        .create_queue()
        .queue_name(name)
        .set_attributes(Some(attributes.iter().cloned().collect()))
        .send()
        .await
        .map_err(unavailable)?;
    tracing::info!(queue = name, "created queue");
    out.queue_url.ok_or_else(|| QueueError::Unavailable(format!("no URL for created queue {name}")))
}

fn unavailable<E: std::error::Error + 'static>(e: E) -> QueueError {
    QueueError::Unavailable(format!("sqs: {}", describe(&e)))
}

/// Error codes SQS uses for a receipt that no longer names an in-flight delivery.
fn is_stale_receipt(code: Option<&str>) -> bool {
    matches!(code, Some("ReceiptHandleIsInvalid" | "MessageNotInflight" | "InvalidParameterValue"))
}

#[async_trait::async_trait]
impl JobQueue for SqsQueue {
    async fn send_batch(&self, bodies: &[String]) -> Result<(), QueueError> {
        check_batch(bodies.len())?;
        let mut pending: Vec<(String, &String)> = bodies.iter().enumerate().map(|(i, b)| (i.to_string(), b)).collect();
        // Entries SQS refuses for a passing reason (throttling) get one more try.
        for attempt in 0..2 {
            let entries = pending
                .iter()
                .map(|(id, body)| SendMessageBatchRequestEntry::builder().id(id).message_body(*body).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| QueueError::Unavailable(e.to_string()))?;
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(unavailable)?;
            if out.failed.is_empty() {
                return Ok(());
            }
            let reason = out
                .failed
                .iter()
                .map(|f| format!("{}: {}", f.code, f.message.as_deref().unwrap_or("")))
                .collect::<Vec<_>>()
                .join("; ");
            let retry = attempt == 0 && out.failed.iter().all(|f| !f.sender_fault);
            if !retry {
                return Err(QueueError::SendFailed { failed: out.failed.len(), reason });
            }
            pending.retain(|(id, _)| out.failed.iter().any(|f| &f.id == id));
        }
        Err(QueueError::SendFailed { failed: pending.len(), reason: "refused twice".into() })
    }

    async fn receive(&self, max: usize, wait: Duration, visibility: Duration) -> Result<Vec<Delivery>, QueueError> {
        check_batch(max)?;
        self.receive_from(&self.url, max, wait, visibility).await
    }

    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        match self.client.delete_message().queue_url(&self.url).receipt_handle(receipt).send().await {
            Ok(_) => Ok(()),
            // Deleting an already deleted message's receipt is not an error for the caller.
            Err(e) if is_stale_receipt(e.code()) => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn extend_visibility(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        match self
            .client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(visibility.as_secs() as i32)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_stale_receipt(e.code()) => Err(QueueError::ReceiptExpired),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn receive_dead_letters(&self, max: usize, visibility: Duration) -> Result<Vec<Delivery>, QueueError> {
        check_batch(max)?;
        self.receive_from(&self.dead_letter_url, max, Duration::ZERO, visibility).await
    }

    async fn delete_dead_letter(&self, receipt: &str) -> Result<(), QueueError> {
        match self.client.delete_message().queue_url(&self.dead_letter_url).receipt_handle(receipt).send().await {
            Ok(_) => Ok(()),
            Err(e) if is_stale_receipt(e.code()) => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        let ((waiting, in_flight), (dead_visible, dead_hidden)) =
            tokio::try_join!(self.counts(&self.url), self.counts(&self.dead_letter_url))?;
        Ok(QueueDepth { waiting, in_flight, dead: dead_visible + dead_hidden, oldest_age: None })
    }

    async fn check(&self) -> Result<(), QueueError> {
        self.client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
