//! Presets rendered on request (`GET /img/{preset}/{key}`), on each backend, against the real app:
//! a miss renders once and stores, a hit is served from the store with no plugin call, a crowd
//! asking for one missing variant causes one render, a flood of misses past the render limit is
//! refused at once while hits are served, a failed render is remembered, and a route that keeps
//! no originals renders from its largest rendition.

use std::time::{Duration, Instant};

use image::GenericImageView;
use pixbox::config::Config;
use pixbox::server::Running;
use pixbox::storage::{BlobStore, Bucket};
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::Value;

use crate::common::{self, Backend, int, route, text};

/// A running pixbox with presets, and its store.
struct Presets {
    running: Running,
    base: String,
    store: std::sync::Arc<dyn BlobStore>,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Presets {
    /// pixbox on `backend`, with `presets` (TOML text of `[presets.*]` tables) and `adjust`.
    async fn start(backend: Backend, test: &str, presets: &str, adjust: impl FnOnce(&mut Config)) -> Option<Presets> {
        let dir = tempfile::tempdir().unwrap();
        let mut config = common::config(dir.path());
        backend.configure(&mut config, test)?;
        config.presets = toml::from_str(presets).unwrap();
        // Crowds of requests from one address are the point here, not the rate limit.
        config.limits.rate_per_second = 0;
        adjust(&mut config);
        let (store, _) = pixbox::backends::connect(&config).await.unwrap();
        let running = pixbox::server::start(&config).await.unwrap();
        let base = format!("http://{}", running.addr.unwrap());
        Some(Presets { running, base, store, client: reqwest::Client::new(), _dir: dir })
    }

    /// Uploads one image under `prefix` and waits until its job is done; returns its key.
    async fn done(&self, prefix: &str, image: Vec<u8>) -> String {
        common::upload_done(&self.client, &self.base, prefix, image).await
    }

    async fn get(&self, preset: &str, key: &str) -> reqwest::Response {
        self.client.get(format!("{}/img/{preset}/{key}", self.base)).send().await.unwrap()
    }
}

/// How many requests for `preset` ended with `result` in this process (`pixbox_renders_total`).
fn renders(preset: &str, result: &str) -> u64 {
    let text = pixbox::telemetry::render();
    let wanted = [format!("preset=\"{preset}\""), format!("result=\"{result}\"")];
    text.lines()
        .filter(|line| line.starts_with("pixbox_renders_total{") && wanted.iter().all(|w| line.contains(w.as_str())))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A name for a preset unique to this test and backend (metrics are the process's).
fn unique(test: &str, backend: Backend) -> String {
    format!("{test}-{}", if backend == Backend::Aws { "aws" } else { "fs" })
}

/// The first request renders and stores the preset; the second is served from the store with
/// no render; a matching If-None-Match gets 304; the variant is where the docs say.
async fn a_miss_renders_once_and_a_hit_is_served_from_the_store(backend: Backend) {
    let name = unique("card", backend);
    let presets = format!("[{name}]\nwidth = 300\nheight = 200\nmode = \"cover\"\nformat = \"webp\"\n");
    let Some(p) = Presets::start(backend, "a_miss_renders_once", &presets, |_| {}).await else { return };
    let key = p.done("", common::png(&common::photo(800, 600))).await;

    let first = p.get(&name, &key).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["content-type"], "image/webp");
    let etag = first.headers()["etag"].to_str().unwrap().to_string();
    assert!(first.headers()["cache-control"].to_str().unwrap().contains("immutable"));
    let bytes = first.bytes().await.unwrap();
    assert_eq!(common::decode(&bytes).dimensions(), (300, 200));
    assert_eq!((renders(&name, "ok"), renders(&name, "hit")), (1, 0));
    let stored = format!("{key}/p/{name}.webp");
    assert!(p.store.head(Bucket::Permanent, &stored).await.is_ok(), "stored at {stored}");

    let second = p.get(&name, &key).await;
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(second.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(second.bytes().await.unwrap(), bytes);
    assert_eq!((renders(&name, "ok"), renders(&name, "hit")), (1, 1), "the second came from the store");

    let again =
        p.client.get(format!("{}/img/{name}/{key}", p.base)).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    // Ranges of the stored variant.
    let range = |spec: &'static str| p.client.get(format!("{}/img/{name}/{key}", p.base)).header("range", spec).send();
    let head = range("bytes=0-9").await.unwrap();
    assert_eq!(head.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(head.headers()["content-range"], format!("bytes 0-9/{}", bytes.len()).as_str());
    assert_eq!(head.bytes().await.unwrap(), bytes[..10]);
    let tail = range("bytes=-7").await.unwrap();
    assert_eq!(tail.bytes().await.unwrap(), bytes[bytes.len() - 7..]);
    let past = range("bytes=99999999-").await.unwrap();
    assert_eq!(past.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    // The stored variant is no image of its own.
    for route in ["download", "status"] {
        let answer = p.client.get(format!("{}/{route}/{stored}", p.base)).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::NOT_FOUND, "{route}/{stored}");
        assert_eq!(answer.json::<Value>().await.unwrap()["code"], "not-found");
    }
    // Nor can an upload take their place.
    let image = Part::bytes(common::png(&common::photo(8, 8))).file_name("a.png");
    let form = Form::new().text("prefix", format!("{key}/p/")).part("images", image);
    let refused = p.client.post(format!("{}/upload", p.base)).multipart(form).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(refused.json::<Value>().await.unwrap()["code"], "invalid-prefix");
    let unknown = p.get("no-such", &key).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(unknown.json::<Value>().await.unwrap()["code"], "no-such-preset");
    p.running.stop().await;
}

/// A `format = "auto"` preset answers in the first of AVIF, WebP the client's Accept names, else in
/// the image's own format, each stored once, with `Vary: Accept`.
async fn an_auto_preset_answers_in_the_format_the_client_takes(backend: Backend) {
    let name = unique("auto", backend);
    let presets = format!("[{name}]\nwidth = 120\nheight = 80\nformat = \"auto\"\n");
    let Some(p) = Presets::start(backend, "an_auto_preset", &presets, |_| {}).await else { return };
    let key = p.done("", common::png(&common::photo(320, 240))).await;
    for (accept, media_type) in
        [("image/avif,image/webp,*/*", "image/avif"), ("image/webp,*/*", "image/webp"), ("*/*", "image/png")]
    {
        let answer =
            p.client.get(format!("{}/img/{name}/{key}", p.base)).header("accept", accept).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "{accept}");
        assert_eq!(answer.headers()["content-type"], media_type, "{accept}");
        assert_eq!(answer.headers()["vary"], "Accept");
    }
    assert_eq!(renders(&name, "ok"), 3, "one render per format");
    p.running.stop().await;
}

/// 100 requests at once for one missing variant: one render, 100 identical answers.
async fn a_crowd_asking_for_one_missing_variant_causes_one_render(backend: Backend) {
    let name = unique("crowd", backend);
    let presets = format!("[{name}]\nwidth = 640\nheight = 480\nformat = \"jpeg\"\n");
    let Some(p) = Presets::start(backend, "a_crowd_asking", &presets, |_| {}).await else { return };
    let key = p.done("", common::png(&common::photo(1600, 1200))).await;
    let answers = futures::future::join_all((0..100).map(|_| async {
        let answer = p.get(&name, &key).await;
        (answer.status(), answer.bytes().await.unwrap())
    }))
    .await;
    assert!(answers.iter().all(|(status, _)| *status == StatusCode::OK), "{:?}", answers.iter().map(|a| a.0));
    assert!(answers.iter().all(|(_, bytes)| *bytes == answers[0].1), "100 identical answers");
    assert_eq!(common::decode(&answers[0].1).dimensions(), (640, 480));
    assert_eq!(renders(&name, "ok"), 1, "one render for 100 requests");
    p.running.stop().await;
}

/// With one render slot taken by a slow render, requests for other missing variants are refused
/// at once (503 too-busy, Retry-After) while a stored variant keeps being served; the slow one
/// completes.
async fn misses_past_the_render_limit_are_refused_at_once_while_hits_are_served(backend: Backend) {
    let (slow, fast) = (unique("slow", backend), unique("fast", backend));
    let presets = format!(
        "[{slow}]\nplugin = {:?}\nmode = \"sleep\"\nms = 1500\n[{fast}]\nwidth = 32\nheight = 32\n",
        common::misbehave()
    );
    let Some(p) =
        Presets::start(backend, "misses_past_the_render_limit", &presets, |c| c.renders.max_concurrent = 1).await
    else {
        return;
    };
    let keys = [
        p.done("", common::png(&common::photo(64, 48))).await,
        p.done("", common::png(&common::photo(64, 48))).await,
        p.done("", common::png(&common::photo(64, 48))).await,
    ];
    assert_eq!(p.get(&fast, &keys[0]).await.status(), StatusCode::OK, "a stored variant to hit later");

    let slow_render = tokio::spawn({
        let (client, url) = (p.client.clone(), format!("{}/img/{slow}/{}", p.base, keys[0]));
        async move { client.get(url).send().await.unwrap().status() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    for key in &keys[1..] {
        let asked = Instant::now();
        let refused = p.get(&fast, key).await;
        let took = asked.elapsed();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()["retry-after"], "1");
        assert_eq!(refused.json::<Value>().await.unwrap()["code"], "too-busy");
        assert!(took < Duration::from_millis(200), "refused after {took:?}");
        let asked = Instant::now();
        assert_eq!(p.get(&fast, &keys[0]).await.status(), StatusCode::OK, "a hit is served meanwhile");
        assert!(asked.elapsed() < Duration::from_millis(200), "a hit took {:?}", asked.elapsed());
    }
    assert_eq!(slow_render.await.unwrap(), StatusCode::OK);
    assert_eq!(renders(&fast, "busy"), 2);
    // The slot is free again.
    assert_eq!(p.get(&fast, &keys[1]).await.status(), StatusCode::OK);
    p.running.stop().await;
}

/// A caller that starts renders faster than `rate_per_caller` is refused with 429 and when to
/// come back, while its hits are served; a second later it may render again.
async fn a_caller_over_its_render_rate_is_refused_while_hits_are_served(backend: Backend) {
    let name = unique("rated", backend);
    let presets = format!("[{name}]\nwidth = 32\nheight = 32\n");
    let Some(p) =
        Presets::start(backend, "a_caller_over_its_render_rate", &presets, |c| c.renders.rate_per_caller = 1).await
    else {
        return;
    };
    let first = p.done("", common::png(&common::photo(64, 48))).await;
    let second = p.done("", common::png(&common::photo(64, 48))).await;
    assert_eq!(p.get(&name, &first).await.status(), StatusCode::OK, "the first render");
    let asked = Instant::now();
    let refused = p.get(&name, &second).await;
    assert!(asked.elapsed() < Duration::from_millis(200), "refused after {:?}", asked.elapsed());
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(refused.json::<Value>().await.unwrap()["code"], "rate-limited");
    assert_eq!(p.get(&name, &first).await.status(), StatusCode::OK, "a hit is served");
    assert!(p.store.head(Bucket::Permanent, &format!("{second}/p/{name}.png")).await.is_err(), "nothing rendered");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(p.get(&name, &second).await.status(), StatusCode::OK, "allowed again");
    assert_eq!(renders(&name, "rate-limited"), 1);
    p.running.stop().await;
}

/// A render that fails is answered with its code, and the same answer is repeated from memory
/// (no second render) until `failure_ttl_secs` has passed.
async fn a_failed_render_is_remembered(backend: Backend) {
    let name = unique("garbage", backend);
    let presets = format!("[{name}]\nplugin = {:?}\nmode = \"garbage\"\n", common::misbehave());
    let Some(p) = Presets::start(backend, "a_failed_render", &presets, |_| {}).await else { return };
    let key = p.done("", common::png(&common::photo(64, 48))).await;
    for _ in 0..3 {
        let answer = p.get(&name, &key).await;
        assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["code"], "render-failed", "{body}");
        assert!(body["message"].as_str().unwrap().contains("invalid-output"), "{body}");
    }
    assert_eq!(renders(&name, "invalid-output"), 1, "one render; the others answered from memory");
    assert!(p.store.head(Bucket::Permanent, &format!("{key}/p/{name}.png")).await.is_err(), "nothing stored");
    p.running.stop().await;
}

/// Without kept originals a preset is rendered from the largest rendition (so it is no larger
/// than that); a route that keeps originals renders from the original.
async fn presets_render_from_the_kept_original_or_the_largest_rendition(backend: Backend) {
    let name = unique("big", backend);
    let presets = format!("[{name}]\nwidth = 1000\nheight = 1000\n");
    let Some(p) = Presets::start(backend, "presets_render_from", &presets, |c| {
        let mut small = route("small/", "resize", &[("format", text("png"))]);
        small.renditions = [("thumb", 64), ("large", 400)]
            .into_iter()
            .map(|(n, size)| {
                (
                    n.to_string(),
                    [("width", int(size)), ("height", int(size))]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                )
            })
            .collect();
        small.default_rendition = Some("thumb".into());
        let mut kept = small.clone();
        kept.prefix = "kept/".into();
        kept.keep_originals = true;
        c.routes = vec![small, kept];
    })
    .await
    else {
        return;
    };
    let photo = common::png(&common::photo(1600, 1200));
    let from_rendition = p.done("small/", photo.clone()).await;
    let from_original = p.done("kept/", photo).await;
    assert!(p.store.head(Bucket::Permanent, &format!("{from_rendition}/original")).await.is_err());
    let original = format!("{from_original}/original");
    assert!(p.store.head(Bucket::Permanent, &original).await.is_ok());
    // Kept, never served.
    for route in ["download", "status"] {
        let answer = p.client.get(format!("{}/{route}/{original}", p.base)).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::NOT_FOUND, "{route}/{original}");
        assert_eq!(answer.json::<Value>().await.unwrap()["code"], "not-found");
    }
    for (key, size) in [(&from_rendition, (400, 300)), (&from_original, (1000, 750))] {
        let answer = p.get(&name, key).await;
        assert_eq!(answer.status(), StatusCode::OK, "{key}");
        assert_eq!(common::decode(&answer.bytes().await.unwrap()).dimensions(), size, "{key}");
    }
    p.running.stop().await;
}

/// A transform URL signed as imgproxy signs is rendered and stored; the same URL tampered with,
/// or with another signature, is refused (403) with nothing rendered or stored.
async fn signed_transform_urls_render_and_tampered_ones_are_refused(backend: Backend) {
    let (key, salt) = (b"a transform key, 32 bytes long!!", b"pixbox salt");
    let Some(p) = Presets::start(backend, "signed_transform_urls", "", |c| {
        c.transform_urls.key = hex::encode(key);
        c.transform_urls.salt = hex::encode(salt);
    })
    .await
    else {
        return;
    };
    let image = p.done("", common::png(&common::photo(800, 600))).await;
    let path = format!("/rs:fill:300:200/g:sm/q:80/plain/{image}@webp");
    let url = |signature: &str, path: &str| format!("{}/t/{signature}{path}", p.base);
    let signed = p.client.get(url(&common::imgproxy_signature(key, salt, &path), &path)).send().await.unwrap();
    assert_eq!(signed.status(), StatusCode::OK);
    assert_eq!(signed.headers()["content-type"], "image/webp");
    assert_eq!(common::decode(&signed.bytes().await.unwrap()).dimensions(), (300, 200));
    let stored = p.store.list(Bucket::Permanent, &format!("{image}/t/")).await.unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");

    let tampered = path.replace("300", "301");
    let forged = [
        url(&common::imgproxy_signature(key, salt, &path), &tampered),
        url("insecure", &tampered),
        url(&common::imgproxy_signature(b"another key of thirty-two bytes!", salt, &tampered), &tampered),
    ];
    for forged in forged {
        let asked = Instant::now();
        let answer = p.client.get(&forged).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::FORBIDDEN, "{forged}");
        assert_eq!(answer.json::<Value>().await.unwrap()["code"], "invalid-signature");
        assert!(asked.elapsed() < Duration::from_millis(200), "refused after {:?}", asked.elapsed());
    }
    assert_eq!(p.store.list(Bucket::Permanent, &format!("{image}/t/")).await.unwrap(), stored, "nothing more stored");
    let unknown = format!("/blur:5/plain/{image}@png");
    let answer = p.client.get(url(&common::imgproxy_signature(key, salt, &unknown), &unknown)).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    assert_eq!(answer.json::<Value>().await.unwrap()["code"], "invalid-transform");
    p.running.stop().await;
}

common::on_each_backend!(
    signed_transform_urls_render_and_tampered_ones_are_refused,
    a_miss_renders_once_and_a_hit_is_served_from_the_store,
    a_crowd_asking_for_one_missing_variant_causes_one_render,
    an_auto_preset_answers_in_the_format_the_client_takes,
    misses_past_the_render_limit_are_refused_at_once_while_hits_are_served,
    a_caller_over_its_render_rate_is_refused_while_hits_are_served,
    a_failed_render_is_remembered,
    presets_render_from_the_kept_original_or_the_largest_rendition,
);
