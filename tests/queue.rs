//! The job queue conformance suite, run against the embedded queue and against the SQS adapter on
//! the S3/SQS emulator that scripts/test starts; plus restart safety of the embedded queue.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use pixbox::queue::conformance::{self, MAX_RECEIVES};
use pixbox::queue::{EmbeddedQueue, JobQueue, QueueError, SqsQueue, SqsSettings};

fn embedded(dir: &tempfile::TempDir) -> Arc<dyn JobQueue> {
    Arc::new(EmbeddedQueue::open(&dir.path().join("jobs.sqlite"), MAX_RECEIVES).unwrap())
}

async fn sqs(test: &str) -> Option<Arc<dyn JobQueue>> {
    let endpoint = common::aws_endpoint(test)?;
    let sdk = pixbox::aws::sdk_config(Some(&endpoint)).await;
    let name = common::unique_name("q");
    let dlq = format!("{name}-dlq");
    let settings = SqsSettings {
        name: &name,
        url: None,
        dead_letter_name: &dlq,
        create: true,
        max_receives: MAX_RECEIVES,
        visibility_timeout_secs: 30,
    };
    Some(Arc::new(SqsQueue::connect(&sdk, &settings).await.unwrap()))
}

common::conformance_tests!(
    embedded: embedded, sqs: sqs;
    batch_send_receive,
    batch_limits,
    visibility_timeout_redelivers,
    extend_visibility_keeps_hidden,
    delete_removes,
    dead_letter_after_max_receives,
    dead_letters_can_be_looked_at,
    depth_counts_each_state,
    dead_letters_can_be_deleted,
    check_answers,
);

/// The embedded queue can say whether it holds a job for a key (the orphan sweep asks); a queue
/// file from before message ages were kept opens, and its old rows simply have no age.
#[tokio::test]
async fn embedded_queue_finds_keys_and_opens_old_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sqlite");
    {
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute_batch(
            "CREATE TABLE messages (id TEXT PRIMARY KEY, body TEXT NOT NULL, seq INTEGER NOT NULL,
                 visible_at INTEGER NOT NULL, receive_count INTEGER NOT NULL DEFAULT 0, receipt TEXT);
             INSERT INTO messages (id, body, seq, visible_at) VALUES ('old', '{\"key\":\"old.png\"}', 1, 0);",
        )
        .unwrap();
    }
    let queue = EmbeddedQueue::open(&path, 5).unwrap();
    let depth = queue.depth().await.unwrap();
    assert_eq!((depth.waiting, depth.oldest_age), (1, None), "{depth:?}");
    queue.send_batch(&[r#"{"key":"a/new.jpg"}"#.to_string()]).await.unwrap();
    let depth = queue.depth().await.unwrap();
    assert_eq!(depth.waiting, 2);
    assert!(depth.oldest_age.is_some_and(|age| age < Duration::from_secs(60)), "{depth:?}");
    assert_eq!(queue.holds_key("old.png").await.unwrap(), Some(true));
    assert_eq!(queue.holds_key("a/new.jpg").await.unwrap(), Some(true));
    assert_eq!(queue.holds_key("a/other.jpg").await.unwrap(), Some(false));
}

/// Dropping and reopening the embedded queue keeps undelivered and in-flight messages.
#[tokio::test]
async fn embedded_queue_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.sqlite");
    let in_flight_id = {
        let queue = EmbeddedQueue::open(&path, 5).unwrap();
        queue.send_batch(&["received".to_string(), "never received".to_string()]).await.unwrap();
        let got = queue.receive(1, Duration::ZERO, Duration::from_secs(1)).await.unwrap();
        assert_eq!(got[0].body, "received");
        got[0].message_id.clone()
        // The queue is dropped here with one message in flight and one never delivered.
    };
    let queue = EmbeddedQueue::open(&path, 5).unwrap();
    let first = queue.receive(10, Duration::ZERO, Duration::from_secs(30)).await.unwrap();
    assert_eq!(first.iter().map(|d| d.body.as_str()).collect::<Vec<_>>(), ["never received"]);
    let again = conformance::receive_n(&queue, 1, Duration::from_secs(30), Duration::from_secs(5)).await;
    assert_eq!(again.len(), 1, "the in-flight message reappears after its visibility timeout");
    assert_eq!(again[0].message_id, in_flight_id);
    assert_eq!(again[0].receive_count, 2, "the receive count survived the restart");
}

#[tokio::test]
async fn sqs_without_create_names_the_missing_queue() {
    let Some(endpoint) = common::aws_endpoint("sqs_without_create_names_the_missing_queue") else { return };
    let sdk = pixbox::aws::sdk_config(Some(&endpoint)).await;
    let name = common::unique_name("missing");
    let settings = SqsSettings {
        name: &name,
        url: None,
        dead_letter_name: &name,
        create: false,
        max_receives: 5,
        visibility_timeout_secs: 30,
    };
    let err = SqsQueue::connect(&sdk, &settings).await.unwrap_err();
    assert!(matches!(&err, QueueError::MissingQueue { name: n } if n == &name), "{err:?}");
}
