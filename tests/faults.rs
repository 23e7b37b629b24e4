//! Failure paths through fault-injecting adapters: the real api (over HTTP, port 0) and the real
//! worker step on an in-memory store and queue that fail the Nth call or deliver twice. In every
//! case nothing acknowledged is lost and no served result is overwritten.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::memory::{Faulty, MemoryQueue, MemoryStore, Op};
use pixbox::api::ApiState;
use pixbox::config::{Config, UploadLimits};
use pixbox::jobs;
use pixbox::queue::JobQueue;
use pixbox::sandbox::SandboxSettings;
use pixbox::storage::{BlobStore, Bucket};
use pixbox::worker::{Outcome, Worker};
use reqwest::multipart::{Form, Part};

type Store = Faulty<MemoryStore>;
type Queue = Faulty<MemoryQueue>;

struct Rig {
    store: Arc<Store>,
    queue: Arc<Queue>,
    worker: Worker,
}

async fn rig() -> Rig {
    let store = Arc::new(Faulty::new(MemoryStore::default()));
    let queue = Arc::new(Faulty::new(MemoryQueue::new(5)));
    let sandbox = common::sandbox(SandboxSettings::default());
    let worker = common::worker(store.clone(), queue.clone(), sandbox, &[], &Config::default()).await;
    Rig { store, queue, worker }
}

impl Rig {
    /// Serves the real api on port 0 over this rig's adapters.
    async fn api(&self, limits: UploadLimits) -> String {
        let state = ApiState {
            store: self.store.clone(),
            queue: self.queue.clone(),
            guards: pixbox::api::Guards::new(&limits),
            limits,
            formats: Default::default(),
            auth: pixbox::auth::Auth::open(),
            cors: None,
            routes: Vec::new().into(),
            probes: Default::default(),
            renderer: None,
            webhooks_enabled: false,
            webhook_allow: Default::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, pixbox::api::router(state)).await });
        format!("http://{addr}")
    }

    /// Puts an original in the temp bucket and queues its job.
    async fn queued(&self, key: &str) {
        let meta = pixbox::storage::ObjectMeta { content_type: "image/png".into(), metadata: Default::default() };
        let image = common::png(&common::photo(64, 48));
        self.store.put(Bucket::Temp, key, image.into(), &meta).await.unwrap();
        self.queue.send_batch(&[jobs::Job::new(key).to_body()]).await.unwrap();
    }

    /// Receives one delivery and processes it.
    async fn step(&self) -> Outcome {
        let delivery = self.queue.receive(1, Duration::from_secs(1), self.worker.visibility()).await.unwrap();
        self.worker.process(&delivery[0]).await
    }

    async fn etag(&self, key: &str) -> Option<String> {
        jobs::found(self.store.head(Bucket::Permanent, key).await).unwrap().map(|i| i.etag)
    }
}

/// The memory adapters are real adapters: they pass the same suites as the shipped ones.
#[tokio::test]
async fn memory_adapters_pass_the_conformance_suites() {
    use pixbox::queue::conformance as q;
    use pixbox::storage::conformance as s;
    // Each suite function expects a fresh store or queue, as with the shipped adapters.
    let store = MemoryStore::default;
    s::round_trip(&store()).await;
    s::large_body(&store()).await;
    s::not_found(&store()).await;
    s::overwrite_and_create_once(&store()).await;
    s::delete_idempotent(&store()).await;
    s::list_by_prefix(&store()).await;
    s::unusual_keys(&store()).await;
    s::invalid_keys_refused(&store()).await;
    let fresh = || MemoryQueue::new(q::MAX_RECEIVES);
    q::batch_send_receive(&fresh()).await;
    q::batch_limits(&fresh()).await;
    q::visibility_timeout_redelivers(&fresh()).await;
    q::extend_visibility_keeps_hidden(&fresh()).await;
    q::delete_removes(&fresh()).await;
    q::dead_letter_after_max_receives(&fresh()).await;
    q::dead_letters_can_be_looked_at(&fresh()).await;
}

/// Twelve images go out in two sends; the second fails. The client gets the error, and the jobs
/// of the first send, which did reach the queue, produce neither a result nor a failure.
/// `/ready` is cheap whatever the number of callers: 1000 at once cause one check of each
/// backend per second of the storm (so at most 2 for a storm under a second), and a failing
/// backend is reported (503 `not-ready`) from that one check to every caller of the next second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_ready_probes_cost_one_backend_check_a_second() {
    let rig = rig().await;
    let base = rig.api(UploadLimits::default()).await;
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    let answers = futures::future::join_all((0..1000).map(|_| client.get(format!("{base}/ready")).send())).await;
    let span = started.elapsed();
    for answer in answers {
        assert_eq!(answer.unwrap().status(), 200);
    }
    let (store, queue) = (rig.store.calls(Op::Check), rig.queue.calls(Op::Check));
    eprintln!("1000 /ready calls in {span:?}: {store} store and {queue} queue checks");
    let allowed = 2.max(1 + span.as_secs() as u32);
    assert!(store <= allowed && queue <= allowed, "{store} store and {queue} queue checks in {span:?}");

    // A store that stops answering: the next check after the result is a second old says so,
    // and every caller within that second gets the same answer without asking again.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    rig.store.fail(Op::Check, 1);
    let asked = std::time::Instant::now();
    let refused = client.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert!(asked.elapsed() < Duration::from_secs(1), "answered after {:?}", asked.elapsed());
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "not-ready", "{body}");
    let checks = rig.store.calls(Op::Check);
    assert_eq!(client.get(format!("{base}/ready")).send().await.unwrap().status(), 503, "the cached answer");
    assert_eq!(rig.store.calls(Op::Check), checks, "a second caller within the second asked again");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(client.get(format!("{base}/ready")).send().await.unwrap().status(), 200, "the store is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_send_failing_mid_upload_leaves_nothing_behind() {
    let rig = rig().await;
    let base = rig.api(UploadLimits { max_images: 12, ..UploadLimits::default() }).await;
    rig.queue.fail(Op::Send, 2);
    let mut form = Form::new();
    for i in 0..12 {
        let part = Part::bytes(common::png(&common::photo(40 + i, 30))).file_name(format!("{i}.png"));
        form = form.part("images", part.mime_str("image/png").unwrap());
    }
    let response = reqwest::Client::new().post(format!("{base}/upload")).multipart(form).send().await.unwrap();
    assert_eq!(response.status(), 503, "{}", response.text().await.unwrap());
    assert_eq!(rig.queue.inner.len(), 10, "the first send went out");

    // The worker drains the queue: every job is dropped, nothing is written.
    let report = rig.worker.tick(2, &Default::default()).await;
    assert_eq!(report.done, 0, "{report:?}");
    assert_eq!(rig.queue.inner.len(), 0, "the orphaned jobs are gone");
    assert!(rig.store.list(Bucket::Permanent, "").await.unwrap().is_empty(), "no result, no failure record");
    assert!(rig.store.list(Bucket::Temp, "").await.unwrap().is_empty(), "no original, no commit record");
}

/// The same upload without the fault: every job waits for the commit record, then runs; the
/// record is removed once all are settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_upload_of_several_images_is_processed_and_tidied() {
    let rig = rig().await;
    let base = rig.api(UploadLimits { max_images: 12, ..UploadLimits::default() }).await;
    let mut form = Form::new();
    for i in 0..12 {
        let part = Part::bytes(common::png(&common::photo(40 + i, 30))).file_name(format!("{i}.png"));
        form = form.part("images", part.mime_str("image/png").unwrap());
    }
    let response = reqwest::Client::new().post(format!("{base}/upload")).multipart(form).send().await.unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(rig.store.list(Bucket::Temp, ".pixbox/uploads/").await.unwrap().len(), 1, "committed");
    let report = rig.worker.tick(2, &Default::default()).await;
    assert_eq!(report.done, 12, "{report:?}");
    assert_eq!(rig.store.list(Bucket::Permanent, "").await.unwrap().len(), 12);
    assert!(rig.store.list(Bucket::Temp, "").await.unwrap().is_empty(), "originals and commit record removed");
}

#[tokio::test]
async fn a_failing_result_put_is_retried_and_converges() {
    let rig = rig().await;
    rig.queued("a.png").await;
    rig.store.fail(Op::PutIfAbsent, 1);
    assert!(matches!(rig.step().await, Outcome::Retry { code: "store-unavailable", .. }));
    assert!(rig.etag("a.png").await.is_none());
    // The message comes back after its visibility timeout; make that now.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let delivery = redeliver(&rig).await;
    assert!(matches!(rig.worker.process(&delivery).await, Outcome::Done { .. }));
    assert!(rig.etag("a.png").await.is_some());
    assert!(rig.store.list(Bucket::Temp, "").await.unwrap().is_empty());
    assert_eq!(rig.queue.inner.len(), 0);
}

/// Two writers of one key, the other failing: our conditional put was refused while the other's
/// was in progress (S3's 409), then the other's failed. The original stays until a result
/// exists, and the next attempt writes it.
#[tokio::test]
async fn a_refused_result_put_with_no_result_keeps_the_original() {
    let rig = rig().await;
    rig.queued("e.png").await;
    rig.store.fail(Op::PutIfAbsentRefused, 1);
    let outcome = rig.step().await;
    assert!(matches!(outcome, Outcome::Retry { code: "result-not-confirmed", .. }), "{outcome:?}");
    assert!(rig.etag("e.png").await.is_none(), "no result");
    assert!(jobs::found(rig.store.head(Bucket::Temp, "e.png").await).unwrap().is_some(), "the original is kept");
    let delivery = redeliver(&rig).await;
    assert!(matches!(rig.worker.process(&delivery).await, Outcome::Done { .. }));
    assert!(rig.etag("e.png").await.is_some());
    assert!(rig.store.list(Bucket::Temp, "").await.unwrap().is_empty());
    assert_eq!(rig.queue.inner.len(), 0);
}

#[tokio::test]
async fn a_failing_delete_of_the_original_does_not_rewrite_the_result() {
    let rig = rig().await;
    rig.queued("b.png").await;
    rig.store.fail(Op::Delete, 1);
    assert!(matches!(rig.step().await, Outcome::Retry { .. }));
    let first = rig.etag("b.png").await.expect("the result was written before the failed delete");
    let delivery = redeliver(&rig).await;
    assert_eq!(rig.worker.process(&delivery).await, Outcome::AlreadyDone { key: "b.png".into() });
    assert_eq!(rig.etag("b.png").await.unwrap(), first, "not overwritten");
    assert!(rig.store.list(Bucket::Temp, "").await.unwrap().is_empty(), "the replay tidied the original");
    assert_eq!(rig.queue.inner.len(), 0);
}

#[tokio::test]
async fn a_failing_message_delete_replays_as_already_done() {
    let rig = rig().await;
    rig.queued("c.png").await;
    rig.queue.fail(Op::QueueDelete, 1);
    assert!(matches!(rig.step().await, Outcome::Done { .. }));
    let first = rig.etag("c.png").await.unwrap();
    assert_eq!(rig.queue.inner.len(), 1, "the message is still there");
    let delivery = redeliver(&rig).await;
    assert_eq!(rig.worker.process(&delivery).await, Outcome::AlreadyDone { key: "c.png".into() });
    assert_eq!(rig.etag("c.png").await.unwrap(), first);
    assert_eq!(rig.queue.inner.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_delivery_racing_the_first_writes_once() {
    let rig = rig().await;
    rig.queued("d.png").await;
    rig.queue.duplicate_next_receive();
    let deliveries = rig.queue.receive(10, Duration::from_secs(1), rig.worker.visibility()).await.unwrap();
    assert_eq!(deliveries.len(), 2, "delivered twice");
    let (a, b) = (deliveries[0].clone(), deliveries[1].clone());
    let (wa, wb) = (rig.worker.clone(), rig.worker.clone());
    let (one, two) = tokio::join!(
        tokio::spawn(async move { wa.process(&a).await }),
        tokio::spawn(async move { wb.process(&b).await })
    );
    let outcomes = [one.unwrap(), two.unwrap()];
    let done = outcomes.iter().filter(|o| matches!(o, Outcome::Done { .. })).count();
    let already = outcomes.iter().filter(|o| matches!(o, Outcome::AlreadyDone { .. })).count();
    assert_eq!((done, already), (1, 1), "{outcomes:?}");
    // One write in all: the second finisher's result was refused, not written over the first.
    assert_eq!(rig.etag("d.png").await.unwrap(), "\"w2\"", "write 1 was the original, write 2 the result");
    assert_eq!(rig.queue.inner.len(), 0);
}

/// A job left visible again at once (as after its visibility timeout).
async fn redeliver(rig: &Rig) -> pixbox::queue::Delivery {
    for _ in 0..50 {
        let got = rig.queue.inner.receive(1, Duration::ZERO, rig.worker.visibility()).await.unwrap();
        if let Some(delivery) = got.into_iter().next() {
            return delivery;
        }
        // Nothing visible: hand the hidden message back, as its visibility timeout would.
        rig.queue.inner.release_all();
    }
    panic!("the message never came back");
}
