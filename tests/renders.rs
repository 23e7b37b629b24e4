//! The limits of renders on request, each as a pair, on the embedded backend: obeyed, and
//! violated, the violated side asserting how fast it was refused and how much resident memory it
//! cost. `renders.max_concurrent`: a flood of 200 missing variants (signed transform URLs of one
//! image) while one slot is busy. `renders.max_source_bytes`: a kept original one byte over.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::common;

const KEY: &[u8] = b"a transform key, 32 bytes long!!";
const SALT: &[u8] = b"renders";

/// A running pixbox with signed transform URLs, one slow preset and a route keeping originals.
struct Rig {
    running: pixbox::server::Running,
    base: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn start(adjust: impl FnOnce(&mut pixbox::config::Config)) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let mut config = common::config(dir.path());
        config.limits.rate_per_second = 0;
        config.renders.rate_per_caller = 0;
        config.transform_urls.key = hex::encode(KEY);
        config.transform_urls.salt = hex::encode(SALT);
        let slow = format!("[slow]\nplugin = {:?}\nmode = \"sleep\"\nms = 2000\n", common::misbehave());
        config.presets = toml::from_str(&slow).unwrap();
        let mut kept = common::route("kept/", "resize", &[]);
        kept.keep_originals = true;
        config.routes = vec![kept];
        adjust(&mut config);
        let running = pixbox::server::start(&config).await.unwrap();
        let base = format!("http://{}", running.addr.unwrap());
        Rig { running, base, client: reqwest::Client::new(), _dir: dir }
    }

    /// Uploads `image` under `prefix` and waits until its job is done; its key.
    async fn done(&self, prefix: &str, image: Vec<u8>) -> String {
        common::upload_done(&self.client, &self.base, prefix, image).await
    }

    /// A signed transform URL of `key`, `width` wide.
    fn transform(&self, key: &str, width: u32) -> String {
        let path = format!("/rs:fit:{width}:{width}/plain/{key}@png");
        let signature = common::imgproxy_signature(KEY, SALT, &path);
        format!("{}/t/{signature}{path}", self.base)
    }
}

/// Obeyed: with the one slot free, missing variants one after another are all rendered.
/// Violated: while a slow render holds the slot, 200 requests for other missing variants are each
/// refused (503 too-busy, Retry-After) within 200 ms, costing less than 16 MiB of resident
/// memory altogether, and a stored variant is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_render_limit_refuses_a_flood_of_misses_at_once_and_cheaply() {
    let _serial = common::RSS_SERIAL.lock().await;
    let rig = Rig::start(|c| c.renders.max_concurrent = 1).await;
    let key = rig.done("", common::png(&common::photo(320, 240))).await;
    for width in [40, 41, 42] {
        let answer = rig.client.get(rig.transform(&key, width)).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "obeyed: {width}");
    }

    let slow = tokio::spawn({
        let (client, url) = (rig.client.clone(), format!("{}/img/slow/{key}", rig.base));
        async move { client.get(url).send().await.unwrap().status() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = common::rss_bytes();
    let watch = common::RssWatch::start(Duration::from_millis(5));
    let started = Instant::now();
    let answers = futures::future::join_all((0..200).map(|i| {
        let (client, url) = (rig.client.clone(), rig.transform(&key, 100 + i));
        async move {
            let asked = Instant::now();
            let answer = client.get(url).send().await.unwrap();
            let retry = answer.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
            (answer.status(), retry, asked.elapsed())
        }
    }))
    .await;
    let flood = started.elapsed();
    let grew = watch.peak().saturating_sub(before);
    let hit = rig.client.get(rig.transform(&key, 40)).send().await.unwrap().status();
    let slowest = answers.iter().map(|a| a.2).max().unwrap();
    eprintln!("200 misses past the render limit: refused in {flood:?} (slowest {slowest:?}), +{} KiB", grew >> 10);
    for (status, retry, _) in &answers {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry.as_deref(), Some("1"));
    }
    assert!(slowest < Duration::from_millis(200), "a refusal took {slowest:?}");
    assert!(grew < 16 << 20, "the flood cost {} MiB", grew >> 20);
    assert_eq!(hit, StatusCode::OK, "a stored variant is served meanwhile");
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
    rig.running.stop().await;
}

/// Obeyed: a kept original under `max_source_bytes` is rendered. Violated: a 9 MB one is refused
/// (422 render-failed, image-too-large) within 1 s, having read no more than the 1 MiB limit
/// (resident memory grows by less than 5 MiB, where reading it whole would take 9), and the
/// answer is remembered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_over_max_source_bytes_is_refused_quickly_and_cheaply() {
    let _serial = common::RSS_SERIAL.lock().await;
    let limit = 1u64 << 20;
    let rig = Rig::start(|c| {
        c.renders.max_source_bytes = limit;
        c.presets = toml::from_str("[small]\nwidth = 64\nheight = 64\n").unwrap();
    })
    .await;
    // A PNG of noise compresses to no less than its raw size: 500x500x3 is 0.75 MB, 2000x1500x3 is 9 MB.
    let noise = |w: u32, h: u32| {
        let mut state = 0x2545_f491_u32;
        let image = image::RgbImage::from_fn(w, h, |_, _| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            image::Rgb([state as u8, (state >> 8) as u8, (state >> 16) as u8])
        });
        common::png(&image)
    };
    let (under, over) = (noise(500, 500), noise(2000, 1500));
    assert!((under.len() as u64) < limit && (over.len() as u64) > limit, "{} {}", under.len(), over.len());
    let fits = rig.done("kept/", under).await;
    let answer = rig.client.get(format!("{}/img/small/{fits}", rig.base)).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK, "obeyed");

    let too_big = rig.done("kept/", over).await;
    let before = common::rss_bytes();
    let watch = common::RssWatch::start(Duration::from_millis(2));
    let asked = Instant::now();
    let answer = rig.client.get(format!("{}/img/small/{too_big}", rig.base)).send().await.unwrap();
    let took = asked.elapsed();
    let grew = watch.peak().saturating_sub(before);
    assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["code"], "render-failed", "{body}");
    assert!(body["message"].as_str().unwrap().contains("image-too-large"), "{body}");
    eprintln!("a source over max_source_bytes: refused in {took:?}, +{} KiB", grew >> 10);
    assert!(took < Duration::from_secs(1), "refused after {took:?}");
    assert!(grew < 5 << 20, "reading it cost {} MiB", grew >> 20);
    let again = rig.client.get(format!("{}/img/small/{too_big}", rig.base)).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::UNPROCESSABLE_ENTITY, "remembered");
    rig.running.stop().await;
}
