//! The conformance suite every `JobQueue` adapter must pass: plain async functions taking
//! `&dyn JobQueue`, run by `tests/queue.rs` against each adapter. Each function expects a fresh,
//! empty queue whose dead-letter limit is [`MAX_RECEIVES`].

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::{Delivery, JobQueue, QueueError};

/// The `max_receives` the queues handed to this suite must have.
pub const MAX_RECEIVES: u32 = 2;

const VISIBILITY: Duration = Duration::from_secs(1);

/// Receives until `n` deliveries arrived or `within` passed (SQS may answer with fewer than asked).
pub async fn receive_n(queue: &dyn JobQueue, n: usize, visibility: Duration, within: Duration) -> Vec<Delivery> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        got.extend(queue.receive((n - got.len()).min(10), Duration::from_secs(1), visibility).await.unwrap());
    }
    got
}

fn bodies(deliveries: &[Delivery]) -> BTreeSet<String> {
    deliveries.iter().map(|d| d.body.clone()).collect()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A batch goes in and comes out whole, each delivery counted once.
pub async fn batch_send_receive(queue: &dyn JobQueue) {
    let sent = strings(&["job-1", "job-2", "job-3", "job with spaces and ünïcode"]);
    queue.send_batch(&sent).await.unwrap();
    let got = receive_n(queue, 4, Duration::from_secs(30), Duration::from_secs(10)).await;
    assert_eq!(bodies(&got), sent.iter().cloned().collect());
    assert!(got.iter().all(|d| d.receive_count == 1), "{got:?}");
    // All four are in flight now: nothing else to receive.
    assert!(queue.receive(10, Duration::ZERO, VISIBILITY).await.unwrap().is_empty());
}

/// Batches outside 1..=10 are refused and send nothing.
pub async fn batch_limits(queue: &dyn JobQueue) {
    let eleven: Vec<String> = (0..11).map(|i| format!("m{i}")).collect();
    assert!(matches!(queue.send_batch(&eleven).await, Err(QueueError::BadBatch(11))));
    assert!(matches!(queue.send_batch(&[]).await, Err(QueueError::BadBatch(0))));
    assert!(queue.receive(10, Duration::from_secs(1), VISIBILITY).await.unwrap().is_empty());
}

/// A message not deleted comes back after its visibility timeout, with its receive count raised.
pub async fn visibility_timeout_redelivers(queue: &dyn JobQueue) {
    queue.send_batch(&strings(&["again"])).await.unwrap();
    let first = receive_n(queue, 1, VISIBILITY, Duration::from_secs(5)).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].receive_count, 1);
    let second = receive_n(queue, 1, VISIBILITY, Duration::from_secs(10)).await;
    assert_eq!(second.len(), 1, "redelivered after the visibility timeout");
    assert_eq!(second[0].body, "again");
    assert_eq!(second[0].message_id, first[0].message_id);
    assert_eq!(second[0].receive_count, 2);
    assert_ne!(second[0].receipt, first[0].receipt, "each delivery has its own receipt");
}

/// Extending the visibility keeps a message hidden past its original timeout.
pub async fn extend_visibility_keeps_hidden(queue: &dyn JobQueue) {
    queue.send_batch(&strings(&["long job"])).await.unwrap();
    let got = receive_n(queue, 1, VISIBILITY, Duration::from_secs(5)).await;
    queue.extend_visibility(&got[0].receipt, Duration::from_secs(6)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert!(queue.receive(10, Duration::ZERO, VISIBILITY).await.unwrap().is_empty(), "still hidden");
    queue.delete(&got[0].receipt).await.unwrap();
}

/// A deleted message never comes back, and deleting twice succeeds.
pub async fn delete_removes(queue: &dyn JobQueue) {
    queue.send_batch(&strings(&["done"])).await.unwrap();
    let got = receive_n(queue, 1, VISIBILITY, Duration::from_secs(5)).await;
    queue.delete(&got[0].receipt).await.unwrap();
    queue.delete(&got[0].receipt).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(queue.receive(10, Duration::from_secs(1), VISIBILITY).await.unwrap().is_empty());
}

/// After `MAX_RECEIVES` receives without a delete, the message moves to the dead-letter queue.
pub async fn dead_letter_after_max_receives(queue: &dyn JobQueue) {
    queue.send_batch(&strings(&["poison"])).await.unwrap();
    for n in 1..=MAX_RECEIVES {
        let got = receive_n(queue, 1, VISIBILITY, Duration::from_secs(10)).await;
        assert_eq!(got.len(), 1, "delivery {n}");
        assert_eq!(got[0].receive_count, n);
    }
    // Past the limit it is not delivered again but dead-lettered.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(queue.receive(10, Duration::from_secs(1), VISIBILITY).await.unwrap().is_empty());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut dead = Vec::new();
    while dead.is_empty() && Instant::now() < deadline {
        dead = queue.receive_dead_letters(10, Duration::from_secs(30)).await.unwrap();
        if dead.is_empty() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    assert_eq!(bodies(&dead), BTreeSet::from(["poison".to_string()]));
    // Hidden for the visibility asked for; zero leaves it visible to the next look.
    assert!(queue.receive_dead_letters(10, Duration::ZERO).await.unwrap().is_empty());
}

/// A dead letter received with zero visibility stays visible (the worker's sweep only looks).
pub async fn dead_letters_can_be_looked_at(queue: &dyn JobQueue) {
    queue.send_batch(&strings(&["peek"])).await.unwrap();
    for _ in 1..=MAX_RECEIVES {
        receive_n(queue, 1, VISIBILITY, Duration::from_secs(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(queue.receive(10, Duration::from_secs(1), VISIBILITY).await.unwrap().is_empty());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = 0;
    while seen < 2 && Instant::now() < deadline {
        let dead = queue.receive_dead_letters(10, Duration::ZERO).await.unwrap();
        if bodies(&dead).contains("peek") {
            seen += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    assert_eq!(seen, 2, "the dead letter was visible to two looks in a row");
}

/// The depth counts waiting, in-flight and dead-lettered messages (SQS's counts are approximate
/// and settle within seconds, so each is awaited).
pub async fn depth_counts_each_state(queue: &dyn JobQueue) {
    let settles = async |what: &str, want: fn(&super::QueueDepth) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let depth = queue.depth().await.unwrap();
            if want(&depth) {
                return depth;
            }
            assert!(Instant::now() < deadline, "{what}: {depth:?}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    settles("empty", |d| d.waiting == 0 && d.in_flight == 0 && d.dead == 0).await;
    queue.send_batch(&strings(&["a", "b", "c"])).await.unwrap();
    let depth = settles("three waiting", |d| d.waiting == 3 && d.in_flight == 0).await;
    if let Some(age) = depth.oldest_age {
        assert!(age < Duration::from_secs(60), "{age:?}");
    }
    let got = receive_n(queue, 1, Duration::from_secs(30), Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    settles("two waiting, one in flight", |d| d.waiting == 2 && d.in_flight == 1).await;
    queue.delete(&got[0].receipt).await.unwrap();
    settles("two waiting", |d| d.waiting == 2 && d.in_flight == 0).await;
}

/// A dead letter can be deleted once handled (a redrive sends it again, then deletes it).
pub async fn dead_letters_can_be_deleted(queue: &dyn JobQueue) {
    queue.send_batch(&strings(&["redrive me"])).await.unwrap();
    for _ in 1..=MAX_RECEIVES {
        receive_n(queue, 1, VISIBILITY, Duration::from_secs(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(queue.receive(10, Duration::from_secs(1), VISIBILITY).await.unwrap().is_empty());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut dead = Vec::new();
    while dead.is_empty() && Instant::now() < deadline {
        dead = queue.receive_dead_letters(10, VISIBILITY).await.unwrap();
    }
    assert_eq!(bodies(&dead), BTreeSet::from(["redrive me".to_string()]));
    queue.delete_dead_letter(&dead[0].receipt).await.unwrap();
    queue.delete_dead_letter(&dead[0].receipt).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(queue.receive_dead_letters(10, Duration::ZERO).await.unwrap().is_empty(), "deleted for good");
}

/// Readiness answers.
pub async fn check_answers(queue: &dyn JobQueue) {
    queue.check().await.unwrap();
}
