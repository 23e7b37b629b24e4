//! Wires the configured adapters behind the two ports. The embedded backends always create what
//! they need (they must run with nothing installed); the AWS backends create their buckets and
//! queues only with `create_resources = true` and otherwise fail fast, naming what is missing.

use std::sync::Arc;

use crate::config::{Config, QueueKind, StorageKind};
use crate::queue::{EmbeddedQueue, JobQueue, QueueError};
#[cfg(feature = "aws")]
use crate::queue::{SqsQueue, SqsSettings};
#[cfg(feature = "aws")]
use crate::storage::S3Store;
use crate::storage::{BlobStore, FsStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    #[error(
        "storage = \"s3\" and queue = \"sqs\" need a pixbox built with the `aws` cargo feature \
         (on by default; this one was built with --no-default-features)"
    )]
    NoAws,
}

/// The blob store and job queue the configuration names.
pub async fn connect(config: &Config) -> Result<(Arc<dyn BlobStore>, Arc<dyn JobQueue>), BackendError> {
    let needs_aws = config.storage == StorageKind::S3 || config.queue == QueueKind::Sqs;
    #[cfg(not(feature = "aws"))]
    if needs_aws {
        return Err(BackendError::NoAws);
    }
    #[cfg(feature = "aws")]
    let sdk = match needs_aws {
        true => Some(crate::aws::sdk_config(config.endpoint_url.as_deref()).await),
        false => None,
    };
    let store: Arc<dyn BlobStore> = match config.storage {
        #[cfg(feature = "aws")]
        StorageKind::S3 => Arc::new(
            S3Store::connect(
                sdk.as_ref().expect("loaded for S3"),
                &config.temp_bucket,
                &config.permanent_bucket,
                config.create_resources,
            )
            .await?,
        ),
        _ => Arc::new(FsStore::open(&config.data_dir, &config.temp_bucket, &config.permanent_bucket, true)?),
    };
    let queue: Arc<dyn JobQueue> = match config.queue {
        #[cfg(feature = "aws")]
        QueueKind::Sqs => {
            let sdk = sdk.as_ref().expect("loaded for SQS");
            let dead_letter_name = config.dead_letter_queue();
            let settings = SqsSettings {
                name: &config.queue_name,
                url: config.queue_url.as_deref(),
                dead_letter_name: &dead_letter_name,
                create: config.create_resources,
                max_receives: config.worker.max_receives,
                visibility_timeout_secs: config.worker.visibility_timeout_secs,
            };
            Arc::new(SqsQueue::connect(sdk, &settings).await?)
        }
        _ => {
            let path = config.data_dir.join("queue").join(format!("{}.sqlite", config.queue_name));
            Arc::new(EmbeddedQueue::open(&path, config.worker.max_receives)?)
        }
    };
    Ok((store, queue))
}
