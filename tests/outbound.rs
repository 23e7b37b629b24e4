//! The limits of the write path's new edges, each obeyed and violated: a webhook receiver that
//! never answers is cut at `webhooks.timeout_ms`, one that answers without end is read no further
//! than 4 KiB, and a direct upload's `PUT` past `limits.max_image_bytes` is refused as it arrives.
//! The violated side says how fast, and with how much of this process's memory, it was stopped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use futures::StreamExt;
use pixbox::storage::{BlobStore, Bucket};
use pixbox::webhooks::{Deliverer, Event, WebhookSettings};
use reqwest::StatusCode;
use serde_json::Value;

use crate::common;

/// A receiver on loopback: `/slow` answers after 30 s, `/endless` answers 500 with a body that
/// never ends, `/fast` answers 200 at once, `/short` answers 500 "not today".
async fn receiver() -> String {
    let endless = || async {
        let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures::stream::repeat(chunk).map(Ok::<_, std::io::Error>);
        (StatusCode::INTERNAL_SERVER_ERROR, Body::from_stream(stream))
    };
    use futures::StreamExt as _;
    let app = axum::Router::new()
        .route(
            "/slow",
            axum::routing::post(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        )
        .route("/endless", axum::routing::post(endless))
        .route("/fast", axum::routing::post(|| async { "ok" }))
        .route("/short", axum::routing::post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "not today") }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

/// One delivery to `url` and one round of the deliverer: what the round came to, the delivery's
/// last error, how long it took and how much resident memory it added at most.
async fn deliver_once(url: &str) -> (pixbox::webhooks::Round, Option<String>, Duration, usize) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn BlobStore> = Arc::new(pixbox::storage::FsStore::open(dir.path(), "temp", "perm", true).unwrap());
    let settings = WebhookSettings {
        signing_secret: "0123456789abcdef0123456789abcdef".into(),
        allow: "127.0.0.1".into(),
        timeout_ms: 500,
        ..WebhookSettings::default()
    };
    pixbox::webhooks::enqueue(&*store, url, &Event::new(url, "a.png", "done", Default::default(), None)).await.unwrap();
    let deliverer = Deliverer::new(store.clone(), &settings).unwrap();
    let before = common::rss_bytes();
    let watch = common::RssWatch::start(Duration::from_millis(2));
    let started = Instant::now();
    let round = deliverer.round().await.unwrap();
    let took = started.elapsed();
    let grew = watch.peak().saturating_sub(before);
    let waiting = pixbox::webhooks::list(&*store, false).await.unwrap();
    (round, waiting.first().and_then(|w| w.last_error.clone()), took, grew)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_receiver_is_given_timeout_ms_and_no_more() {
    let _serial = common::RSS_SERIAL.lock().await;
    let base = receiver().await;
    let (fast, _, _, _) = deliver_once(&format!("{base}/fast")).await;
    assert_eq!(fast.delivered, 1, "a receiver within the timeout is delivered to: {fast:?}");

    let (slow, error, took, grew) = deliver_once(&format!("{base}/slow")).await;
    assert_eq!((slow.delivered, slow.retried), (0, 1), "{slow:?}");
    let error = error.unwrap();
    assert!(error.contains("timed out") || error.contains("timeout"), "{error}");
    assert!(took < Duration::from_millis(1500), "cut after {took:?} (timeout_ms = 500)");
    assert!(grew < 8 << 20, "grew {grew} bytes");
    eprintln!("a receiver that never answers: cut after {took:?}, +{} KiB", grew >> 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_answer_is_read_no_further_than_4_kib() {
    let _serial = common::RSS_SERIAL.lock().await;
    let base = receiver().await;
    let (short, error, _, _) = deliver_once(&format!("{base}/short")).await;
    assert_eq!(short.retried, 1);
    assert!(error.unwrap().contains("not today"), "a short answer is read whole");

    let (endless, error, took, grew) = deliver_once(&format!("{base}/endless")).await;
    assert_eq!((endless.delivered, endless.retried), (0, 1), "{endless:?}");
    let error = error.unwrap();
    assert!(error.contains("500") && error.len() < 400, "{error}");
    assert!(took < Duration::from_millis(1500), "stopped reading after {took:?}");
    assert!(grew < 8 << 20, "grew {grew} bytes");
    eprintln!("an answer without end: stopped after {took:?}, +{} KiB", grew >> 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_put_past_max_image_bytes_is_refused_as_it_arrives() {
    let _serial = common::RSS_SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path());
    config.limits.max_image_bytes = 1 << 20;
    config.limits.rate_per_second = 0;
    let (store, _) = pixbox::backends::connect(&config).await.unwrap();
    let running = pixbox::server::start(&config).await.unwrap();
    let base = format!("http://{}", running.addr.unwrap());
    let client = reqwest::Client::new();
    let create = || async {
        let direct: Value = client.post(format!("{base}/uploads")).send().await.unwrap().json().await.unwrap();
        (direct["id"].as_str().unwrap().to_string(), direct["url"].as_str().unwrap().to_string())
    };
    let (_, url) = create().await;
    let within = client.put(format!("{base}{url}")).body(vec![1u8; 1 << 20]).send().await.unwrap();
    assert_eq!(within.status(), StatusCode::OK, "exactly max_image_bytes is accepted");

    // 256 MiB offered, made as it is sent: only what the server reads is ever in memory. The server
    // answers and closes without draining the rest, so a sender that keeps writing may hit a broken
    // pipe before it reads the answer; this one, like a client listening for an early answer, waits
    // after 4 MiB (for 10 s: longer than the refusal may take), then goes on.
    let (id, url) = create().await;
    let chunk = bytes::Bytes::from(vec![2u8; 256 * 1024]);
    let body = futures::stream::iter(0..1024).then(move |i| {
        let chunk = chunk.clone();
        async move {
            if i == 16 {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            Ok::<_, std::io::Error>(chunk)
        }
    });
    let before = common::rss_bytes();
    let watch = common::RssWatch::start(Duration::from_millis(2));
    let started = Instant::now();
    let answer = client.put(format!("{base}{url}")).body(reqwest::Body::wrap_stream(body)).send().await;
    let took = started.elapsed();
    let grew = watch.peak().saturating_sub(before);
    let answer = answer.expect("the refusal is answered, not a broken connection");
    assert_eq!(answer.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.json::<Value>().await.unwrap()["code"], "image-too-large");
    assert!(took < Duration::from_secs(2), "refused after {took:?}");
    assert!(grew < 16 << 20, "grew {grew} bytes for a 1 MiB limit");
    let staged = store.head(Bucket::Temp, &pixbox::lifecycle::incoming_key(&id)).await;
    assert!(staged.is_err(), "nothing is stored");
    eprintln!("a 256 MiB PUT over a 1 MiB limit: refused after {took:?}, +{} KiB", grew >> 10);
    running.stop().await;
}
