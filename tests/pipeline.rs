//! End to end: the real app on port 0 (in-process, and as real `pixbox` processes), driven over
//! HTTP, on each backend: embedded (filesystem + SQLite queue) and S3 + SQS on the emulator.

use crate::common::{self, Backend, int, route, text};

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::GenericImageView;
use pixbox::config::{Config, Role};
use pixbox::jobs::Job;
use pixbox::queue::JobQueue;
use pixbox::sandbox::{OptionValue, RouteConfig};
use pixbox::server::Running;
use pixbox::storage::{BlobStore, Bucket};
use reqwest::multipart::{Form, Part};
use serde_json::Value;

/// A test's configuration, store and queue (the same the app uses), and its running parts.
struct Harness {
    config: Config,
    store: Arc<dyn BlobStore>,
    queue: Arc<dyn JobQueue>,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn new(backend: Backend, test: &str) -> Option<Harness> {
        let dir = tempfile::tempdir().unwrap();
        let mut config = common::config(dir.path());
        config.routes = vec![
            route("", "resize", &[("width", int(200)), ("height", int(200))]),
            route("avatars/", "thumbnail", &[("size", int(64))]),
            route("strict/", "resize", &[("max-pixels", int(100))]),
        ];
        config.worker.visibility_timeout_secs = 3;
        config.worker.max_receives = 3;
        config.limits.max_images = 4;
        config.limits.max_request_bytes = 1 << 20;
        backend.configure(&mut config, test)?;
        let (store, queue) = pixbox::backends::connect(&config).await.unwrap();
        Some(Harness { config, store, queue, client: reqwest::Client::new(), _dir: dir })
    }

    async fn start(&self, role: Role) -> Running {
        let mut config = self.config.clone();
        config.role = role;
        pixbox::server::start(&config).await.unwrap()
    }

    /// Environment that configures a `pixbox` process like this harness.
    fn env(&self, role: &str) -> Vec<(String, String)> {
        common::process_env(&self.config, role)
    }

    /// A real `pixbox serve` process (default routes: resize to fit 1024x1024).
    fn spawn(&self, role: &str) -> Child {
        Command::new(common::pixbox_bin())
            .arg("serve")
            .current_dir(self.config.data_dir.as_path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.env(role))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    async fn upload(&self, base: &str, query: &str, files: Vec<(&str, Vec<u8>)>) -> (u16, Value) {
        let mut form = Form::new();
        for (name, bytes) in files {
            form = form.part("images", Part::bytes(bytes).file_name(name.to_string()));
        }
        let response = self.client.post(format!("{base}/upload{query}")).multipart(form).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Polls `/status` until the key is no longer pending.
    async fn wait_settled(&self, base: &str, key: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let status: Value =
                self.client.get(format!("{base}/status/{key}")).send().await.unwrap().json().await.unwrap();
            if status["state"] != "pending" || Instant::now() > deadline {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn temp_keys(&self) -> Vec<String> {
        self.store.list(Bucket::Temp, "").await.unwrap()
    }

    /// What is left in the temp bucket once the worker has had a moment to tidy: a result is
    /// served as soon as it is stored, the original and the upload's commit record go right after.
    async fn temp_keys_after_tidy(&self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let keys = self.temp_keys().await;
            if keys.is_empty() || Instant::now() > deadline {
                return keys;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn queue_is_empty(&self) -> bool {
        self.queue.receive(10, Duration::from_secs(1), Duration::from_secs(1)).await.unwrap().is_empty()
    }
}

fn base(running: &Running) -> String {
    format!("http://{}", running.addr.unwrap())
}

fn keys(body: &Value) -> Vec<String> {
    body["images"].as_array().unwrap().iter().map(|i| i["key"].as_str().unwrap().to_string()).collect()
}

/// Several images in one upload all end up downloadable, resized, with the right headers.
async fn multi_image_upload(backend: Backend) {
    let Some(h) = Harness::new(backend, "multi_image_upload").await else { return };
    let app = h.start(Role::All).await;
    let base = base(&app);
    let files = vec![
        ("wide.jpg", common::jpeg(&common::photo(800, 600))),
        ("tall.png", common::png(&common::photo(300, 900))),
        ("small.gif", common::encode(&common::photo(60, 40), image::ImageFormat::Gif)),
    ];
    let (status, body) = h.upload(&base, "", files).await;
    assert_eq!(status, 202, "{body}");
    let keys = keys(&body);
    assert_eq!(keys.len(), 3);
    // Each key's extension names what is served: the default route writes a GIF as PNG.
    assert!(keys[0].ends_with(".jpg") && keys[1].ends_with(".png") && keys[2].ends_with(".png"), "{keys:?}");
    let expected = [((200, 150), "image/jpeg"), ((67, 200), "image/png"), ((60, 40), "image/png")];
    for (key, (dims, media_type)) in keys.iter().zip(expected) {
        let status = h.wait_settled(&base, key, Duration::from_secs(30)).await;
        assert_eq!(status["state"], "done", "{status}");
        let response = h.client.get(format!("{base}/download/{key}")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], media_type);
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert!(headers["cache-control"].to_str().unwrap().contains("max-age"));
        let etag = headers["etag"].to_str().unwrap().to_string();
        let bytes = response.bytes().await.unwrap();
        assert_eq!(common::decode(&bytes).dimensions(), dims, "{key}");
        // The query form serves the same; a matching ETag gives 304.
        let again = h.client.get(format!("{base}/download")).query(&[("key", key)]).send().await.unwrap();
        assert_eq!(again.bytes().await.unwrap(), bytes);
        let cached =
            h.client.get(format!("{base}/download/{key}")).header("if-none-match", &etag).send().await.unwrap();
        assert_eq!(cached.status(), 304);
    }
    assert_eq!(h.temp_keys_after_tidy().await, Vec::<String>::new(), "originals are removed once processed");
    app.stop().await;
}

/// A prefix routed to the thumbnail plugin gives its output (square, grayscale).
async fn prefix_routes_to_thumbnail(backend: Backend) {
    let Some(h) = Harness::new(backend, "prefix_routes_to_thumbnail").await else { return };
    let app = h.start(Role::All).await;
    let base = base(&app);
    let (status, body) =
        h.upload(&base, "?prefix=avatars", vec![("me.jpg", common::jpeg(&common::photo(400, 300)))]).await;
    assert_eq!(status, 202, "{body}");
    let key = &keys(&body)[0];
    assert!(key.starts_with("avatars/"), "{key}");
    // The form field works too.
    let form = Form::new()
        .text("prefix", "avatars/")
        .part("images", Part::bytes(common::png(&common::photo(120, 90))).file_name("x.png"));
    let response = h.client.post(format!("{base}/upload")).multipart(form).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let second = keys(&response.json().await.unwrap())[0].clone();
    for key in [key, &second] {
        assert_eq!(h.wait_settled(&base, key, Duration::from_secs(30)).await["state"], "done");
        let bytes = h.client.get(format!("{base}/download/{key}")).send().await.unwrap().bytes().await.unwrap();
        let img = common::decode(&bytes);
        assert_eq!(img.dimensions(), (64, 64), "{key}");
        assert!(matches!(img.color(), image::ColorType::L8 | image::ColorType::La8));
    }
    app.stop().await;
}

/// Pending while no worker runs (download 202), done once one does; a duplicated message gives one
/// result and no error.
async fn pending_then_done_and_duplicates_converge(backend: Backend) {
    let Some(h) = Harness::new(backend, "pending_then_done_and_duplicates_converge").await else { return };
    let api = h.start(Role::Api).await;
    let base = base(&api);
    let (_, body) = h.upload(&base, "", vec![("a.jpg", common::jpeg(&common::photo(640, 480)))]).await;
    let key = keys(&body)[0].clone();
    let status: Value = h.client.get(format!("{base}/status/{key}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["state"], "pending");
    let response = h.client.get(format!("{base}/download/{key}")).send().await.unwrap();
    assert_eq!(response.status(), 202);
    // The queue delivers at least once: send the same job again.
    h.queue.send_batch(&[Job::new(key.clone()).to_body()]).await.unwrap();

    let worker = h.start(Role::Worker).await;
    assert_eq!(h.wait_settled(&base, &key, Duration::from_secs(30)).await["state"], "done");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(h.queue_is_empty().await, "both deliveries were settled");
    let results = h.store.list(Bucket::Permanent, "").await.unwrap();
    assert_eq!(results, std::slice::from_ref(&key), "one result, no failure record");
    assert!(h.temp_keys().await.is_empty());
    worker.stop().await;
    api.stop().await;
}

/// Bad uploads get their 4xx with a stable code and create nothing.
async fn bad_uploads_create_nothing(backend: Backend) {
    let Some(h) = Harness::new(backend, "bad_uploads_create_nothing").await else { return };
    let api = h.start(Role::Api).await;
    let base = base(&api);
    let good = || ("good.jpg", common::jpeg(&common::photo(64, 64)));
    let truncated = common::jpeg(&common::photo(400, 300));
    let truncated = truncated[..truncated.len() / 2].to_vec();
    type Files = Vec<(&'static str, Vec<u8>)>;
    let cases: Vec<(&str, Files, u16, &str)> = vec![
        ("text file", vec![good(), ("notes.txt", b"hello, not an image".to_vec())], 415, "unsupported-format"),
        ("truncated JPEG", vec![good(), ("cut.jpg", truncated)], 422, "truncated-image"),
        ("bomb", vec![good(), ("bomb.png", common::png_claiming(100_000, 100_000))], 422, "too-many-pixels"),
        ("too many files", vec![good(), good(), good(), good(), good()], 413, "too-many-images"),
        ("oversized body", vec![good(), ("noise.bin", vec![0x55; 1_200_000])], 413, "body-too-large"),
    ];
    for (what, files, status, code) in cases {
        let (got, body) = h.upload(&base, "", files).await;
        assert_eq!(got, status, "{what}: {body}");
        assert_eq!(body["code"], code, "{what}: {body}");
        assert!(!body["message"].as_str().unwrap().is_empty());
        if what == "text file" {
            assert!(body["message"].as_str().unwrap().contains("image 2 (notes.txt)"), "{body}");
        }
    }
    let only_prefix = Form::new().text("prefix", "avatars/");
    let response = h.client.post(format!("{base}/upload")).multipart(only_prefix).send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["code"], "no-images");
    // Refused before the (large) body is read; the client still gets the answer, not a broken pipe.
    let big = common::png(&image::RgbImage::from_fn(500, 500, |x, y| image::Rgb([(x * y) as u8, x as u8, y as u8])));
    let (got, body) = h.upload(&base, "?prefix=../etc", vec![good(), ("big.png", big.clone()), ("b2.png", big)]).await;
    assert_eq!((got, body["code"].as_str()), (400, Some("invalid-prefix")));
    let not_multipart = h.client.post(format!("{base}/upload")).body("{}").send().await.unwrap();
    assert_eq!(not_multipart.status(), 415);
    assert!(h.temp_keys().await.is_empty(), "nothing stored");
    assert!(h.queue_is_empty().await, "nothing queued");
    // Unknown keys and routes are JSON 404s; traversal keys are refused.
    let unknown = h.client.get(format!("{base}/download/nope.jpg")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.json::<Value>().await.unwrap()["code"], "not-found");
    let traversal = h.client.get(format!("{base}/download")).query(&[("key", "../x")]).send().await.unwrap();
    assert_eq!(traversal.status(), 400);
    let health = h.client.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = h.client.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let doc: Value = h.client.get(format!("{base}/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert!(doc["paths"]["/upload"]["post"].is_object(), "the OpenAPI document is served");
    api.stop().await;
}

/// An image the plugin refuses ends failed with the plugin's reason; the original is kept.
async fn plugin_rejection_is_reported(backend: Backend) {
    let Some(h) = Harness::new(backend, "plugin_rejection_is_reported").await else { return };
    let app = h.start(Role::All).await;
    let base = base(&app);
    let (_, body) = h.upload(&base, "?prefix=strict", vec![("big.png", common::png(&common::photo(50, 50)))]).await;
    let key = keys(&body)[0].clone();
    let status = h.wait_settled(&base, &key, Duration::from_secs(30)).await;
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(status["error"]["code"], "bad-input");
    assert!(status["error"]["message"].as_str().unwrap().contains("over the limit of 100 pixels"), "{status}");
    let response = h.client.get(format!("{base}/download/{key}")).send().await.unwrap();
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "processing-failed");
    assert!(body["message"].as_str().unwrap().contains("100 pixels"), "{body}");
    assert_eq!(h.temp_keys().await, [key], "the original is kept for inspection");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(h.queue_is_empty().await, "a permanent failure is not retried");
    app.stop().await;
}

/// A worker process killed mid-batch and started again finishes every job, losing nothing.
async fn killed_worker_restarts_and_finishes(backend: Backend) {
    let Some(h) = Harness::new(backend, "killed_worker_restarts_and_finishes").await else { return };
    let api = h.start(Role::Api).await;
    let base = base(&api);
    let files: Vec<(&str, Vec<u8>)> = (0..4).map(|_| ("p.jpg", common::jpeg(&common::photo(2000, 1500)))).collect();
    let (first, body) = h.upload(&base, "", files.clone()).await;
    assert_eq!(first, 202, "{body}");
    let mut all = keys(&body);
    let (_, body) = h.upload(&base, "", files).await;
    all.extend(keys(&body));

    let mut worker = h.spawn("worker");
    // Kill it as soon as the first result lands: the rest of the batch is in flight or waiting.
    let deadline = Instant::now() + Duration::from_secs(60);
    while h.store.list(Bucket::Permanent, "").await.unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.kill().unwrap();
    worker.wait().unwrap();
    let done_before = h.store.list(Bucket::Permanent, "").await.unwrap().len();
    assert!(done_before < all.len(), "killed mid-batch ({done_before} of {} done)", all.len());

    let mut worker = h.spawn("worker");
    for key in &all {
        let status = h.wait_settled(&base, key, Duration::from_secs(60)).await;
        assert_eq!(status["state"], "done", "{status}");
    }
    let left = h.temp_keys_after_tidy().await;
    worker.kill().unwrap();
    worker.wait().unwrap();
    let mut results = h.store.list(Bucket::Permanent, "").await.unwrap();
    results.sort();
    all.sort();
    assert_eq!(results, all, "every image has exactly one result and no failure record");
    assert_eq!(left, Vec::<String>::new(), "originals and commit records are tidied");
    api.stop().await;
}

/// One `api` process and one `worker` process sharing the backend complete a batch.
async fn separate_api_and_worker_processes(backend: Backend) {
    let Some(mut h) = Harness::new(backend, "separate_api_and_worker_processes").await else { return };
    // A fixed free port for the api process, so the test knows where to send requests.
    let port = common::free_port();
    h.config.listen = format!("127.0.0.1:{port}");
    let mut api = h.spawn("api");
    let mut worker = h.spawn("worker");
    let base = format!("http://127.0.0.1:{port}");
    common::wait_ready(&base, Duration::from_secs(30), None).await;
    let files = (0..3).map(|_| ("p.png", common::png(&common::photo(1600, 1200)))).collect();
    let (status, body) = h.upload(&base, "", files).await;
    assert_eq!(status, 202, "{body}");
    for key in keys(&body) {
        let status = h.wait_settled(&base, &key, Duration::from_secs(60)).await;
        assert_eq!(status["state"], "done", "{status}");
        let bytes = h.client.get(format!("{base}/download/{key}")).send().await.unwrap().bytes().await.unwrap();
        assert_eq!(common::decode(&bytes).dimensions(), (1024, 768), "default route: fit 1024x1024");
    }
    for child in [&mut api, &mut worker] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// A plugin that runs past its time budget gets a second attempt at once; the second timeout is
/// a permanent `timeout` failure, and the message is deleted.
async fn timeouts_fail_for_good_on_the_second_attempt(backend: Backend) {
    let Some(mut h) = Harness::new(backend, "timeouts_fail_for_good_on_the_second_attempt").await else { return };
    h.config.sandbox.time_budget_ms = 300;
    h.config.routes.push(route("slow/", &common::misbehave(), &[("mode", text("spin"))]));
    let app = h.start(Role::All).await;
    let base = base(&app);
    let (_, body) = h.upload(&base, "?prefix=slow", vec![("s.png", common::png(&common::photo(8, 8)))]).await;
    let key = keys(&body)[0].clone();
    let status = h.wait_settled(&base, &key, Duration::from_secs(60)).await;
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(status["error"]["code"], "timeout");
    assert_eq!(status["error"]["attempts"], pixbox::worker::RESOURCE_ATTEMPTS);
    assert_eq!(status["error"]["message"], "the plugin ran past its time budget of 300ms", "{status}");
    assert!(h.queue_is_empty().await, "settled: the message is gone");
    app.stop().await;
}

/// A plugin that keeps crashing is retried through the visibility timeout; after the last allowed
/// receive the job is reported failed (`gave-up`, without the plugin's output) and its message
/// dead-lettered.
async fn crashes_retry_then_give_up(backend: Backend) {
    let Some(mut h) = Harness::new(backend, "crashes_retry_then_give_up").await else { return };
    h.config.worker.visibility_timeout_secs = 1;
    h.config.routes.push(route("crash/", &common::misbehave(), &[("mode", text("panic"))]));
    let app = h.start(Role::All).await;
    let base = base(&app);
    let (_, body) = h.upload(&base, "?prefix=crash", vec![("s.png", common::png(&common::photo(8, 8)))]).await;
    let key = keys(&body)[0].clone();
    let status = h.wait_settled(&base, &key, Duration::from_secs(60)).await;
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(status["error"]["code"], "gave-up");
    assert_eq!(status["error"]["attempts"], h.config.worker.max_receives);
    let message = status["error"]["message"].as_str().unwrap();
    assert!(message.contains("last error: trap") && !message.contains("asked to panic"), "{status}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut dead = Vec::new();
    while dead.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        dead = h.queue.receive_dead_letters(10, Duration::from_secs(30)).await.unwrap();
    }
    assert_eq!(dead.len(), 1, "the job went to the dead-letter queue");
    assert_eq!(dead[0].body, Job::new(key.clone()).to_body());
    app.stop().await;
}

/// A job that runs longer than the visibility timeout keeps its message hidden (heartbeat), so no
/// other worker starts it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_jobs_extend_their_visibility() {
    let h = Harness::new(Backend::Embedded, "long_jobs_extend_their_visibility").await.unwrap();
    let sandbox = common::sandbox(Default::default());
    let slow = route("", &common::misbehave(), &[("mode", text("spin")), ("ms", text("3500"))]);
    let mut worker = common::worker(h.store.clone(), h.queue.clone(), sandbox, &[slow], &h.config).await;
    worker.settings.visibility_timeout_secs = 2;
    let key = "long.png";
    let meta = pixbox::storage::ObjectMeta { content_type: "image/png".into(), metadata: Default::default() };
    h.store.put(Bucket::Temp, key, common::png(&common::photo(8, 8)).into(), &meta).await.unwrap();
    h.queue.send_batch(&[Job::new(key).to_body()]).await.unwrap();
    let delivery = h.queue.receive(1, Duration::ZERO, worker.visibility()).await.unwrap().remove(0);
    let job = tokio::spawn({
        let worker = worker.clone();
        async move { worker.process(&delivery).await }
    });
    // Past the 2 s visibility timeout the job is still running, and still hidden.
    for at in [2_500, 3_200] {
        tokio::time::sleep(Duration::from_millis(if at == 2_500 { 2_500 } else { 700 })).await;
        let stolen = h.queue.receive(10, Duration::ZERO, Duration::from_secs(30)).await.unwrap();
        assert!(stolen.is_empty(), "redelivered at {at} ms while still running: {stolen:?}");
    }
    let outcome = job.await.unwrap();
    assert_eq!(outcome, pixbox::worker::Outcome::Done { key: key.into(), plugin: "misbehave".into() });
    assert!(h.queue_is_empty().await);
}

/// `pixbox serve` (a real process, the default 10 s schedule) with a route to a plugin that sleeps
/// in a host call and the default route: the sleeping jobs fail with `timeout` at their budget
/// (twice, the second attempt right after the first), the others are all done, and SIGTERM with a
/// job in flight exits within the shutdown grace, releasing that job's message at once.
async fn a_sleeping_plugin_never_stalls_the_worker(backend: Backend) {
    let Some(mut h) = Harness::new(backend, "a_sleeping_plugin_never_stalls_the_worker").await else { return };
    let port = common::free_port();
    h.config.listen = format!("127.0.0.1:{port}");
    let budget = Duration::from_millis(3_000);
    let config = h.config.data_dir.join("pixbox.toml");
    std::fs::write(
        &config,
        format!(
            "[sandbox]\ntime_budget_ms = {}\n[worker]\nconcurrency = 2\nshutdown_grace_secs = 1\n\
             [[routes]]\nprefix = \"sleepy/\"\nplugin = {:?}\noptions = {{ mode = \"sleep\" }}\n",
            budget.as_millis(),
            common::built_plugin("misbehave").display().to_string()
        ),
    )
    .unwrap();
    let log = h.config.data_dir.join("serve.log");
    let spawn = || {
        Command::new(common::pixbox_bin())
            .args(["--config", config.to_str().unwrap(), "serve"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            // The harness's 1 s schedule is left out: this runs on the default 10 s ticks.
            .envs(h.env("all").into_iter().filter(|(k, _)| k != "PIXBOX_WORKER_SCHEDULE"))
            .stdout(Stdio::null())
            // Kept for the failure message: its log says where a slow shutdown spent its time.
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap()
    };
    let app = spawn();
    let base = format!("http://127.0.0.1:{port}");
    common::wait_ready(&base, Duration::from_secs(30), Some(&log)).await;

    let tick = Duration::from_secs(10);
    let started = Instant::now();
    let photo = || common::jpeg(&common::photo(1200, 900));
    let (status, body) = h.upload(&base, "?prefix=sleepy", vec![("a.jpg", photo()), ("b.jpg", photo())]).await;
    assert_eq!(status, 202, "{body}");
    let sleepy = keys(&body);
    let (status, body) = h.upload(&base, "", (0..4).map(|_| ("p.jpg", photo())).collect()).await;
    assert_eq!(status, 202, "{body}");
    let others = keys(&body);
    for key in &others {
        let status = h.wait_settled(&base, key, Duration::from_secs(60)).await;
        assert_eq!(status["state"], "done", "{status}");
    }
    for key in &sleepy {
        let status = h.wait_settled(&base, key, Duration::from_secs(60)).await;
        assert_eq!(status["state"], "failed", "{status}");
        assert_eq!(status["error"]["code"], "timeout", "{status}");
    }
    // Before: a sleeping job held its slot for a minute per attempt. Now: the next tick, then
    // two attempts of one budget each, the two sleepy jobs side by side on two slots.
    let took = started.elapsed();
    assert!(took <= tick + budget * 2 + Duration::from_secs(3), "all settled after {took:?}");

    // SIGTERM while a sleeping job is in flight (and a receive long-polls for the free slot),
    // with two threads burning both cores: the job is cancelled and its message released within
    // the 1 s grace, and the process says it stopped within grace + STOP_MARGIN. Those are what
    // is asserted tightly (they come from the process's own clock and log); the wall time seen
    // from here, which a loaded machine stretches, only loosely.
    let (_, body) = h.upload(&base, "?prefix=sleepy", vec![("c.jpg", photo())]).await;
    let key = keys(&body)[0].clone();
    // In flight once a worker has received it (waiting on the event, not on the tick's clock: on a
    // loaded machine the tick's receive from the queue may take longer than planned), then a moment
    // for its plugin call to start; the call then sleeps for its whole budget.
    let deadline = Instant::now() + tick * 3;
    while h.queue.depth().await.unwrap().in_flight == 0 {
        assert!(Instant::now() < deadline, "the job was never received");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A client long-polling the job's status: a request that outlasts the grace, so the api
    // cannot drain and abandons it at the deadline (and says so) instead of waiting for it.
    let long_poll = tokio::spawn(h.client.get(format!("{base}/status/{key}?wait=30")).send());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let hogs = common::CpuHogs::start(2);
    let stopping = Instant::now();
    let killed = Command::new("kill").args(["-TERM", &app.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let mut app = app;
    let exit = tokio::task::spawn_blocking(move || app.wait().unwrap()).await.unwrap();
    let stopped = stopping.elapsed();
    drop(hogs);
    assert!(exit.success(), "{exit:?}");
    let shutdown_log = {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        let from = log.find("shutting down").unwrap_or(0);
        log[from..].to_string()
    };
    eprintln!("SIGTERM to exit: {stopped:?} (1 s grace, two CPU hogs)\n{shutdown_log}");
    let line = |needle: &str| shutdown_log.lines().find(|l| l.contains(needle)).map(str::to_string);
    let worker_stopped = line("worker stopped").unwrap_or_else(|| panic!("no `worker stopped`:\n{shutdown_log}"));
    assert!(
        worker_stopped.contains("cancelled=1") && worker_stopped.contains("released=1"),
        "the in-flight job was not cancelled and released: {worker_stopped}"
    );
    let abandoned = line("abandoned").unwrap_or_else(|| panic!("the long poll was not abandoned:\n{shutdown_log}"));
    assert!(abandoned.contains("listener=\"api\"") && !abandoned.contains("open=0"), "{abandoned}");
    assert!(long_poll.await.unwrap().is_err(), "the long poll got an answer from a stopped pixbox");
    let took = line("shutdown complete took_ms=")
        .and_then(|l| l.rsplit("took_ms=").next().and_then(|n| n.trim().parse::<u64>().ok()))
        .unwrap_or_else(|| panic!("no `shutdown complete took_ms=`:\n{shutdown_log}"));
    let bound = Duration::from_secs(1) + pixbox::server::STOP_MARGIN;
    assert!(Duration::from_millis(took) <= bound, "stopped after {took} ms, over {bound:?}:\n{shutdown_log}");
    // Loose: what a hung shutdown would break, not a scheduler's hiccup on a loaded machine.
    assert!(stopped <= bound * 3, "SIGTERM to exit took {stopped:?}:\n{shutdown_log}");
    let state = pixbox::jobs::state(&*h.store, &key).await.unwrap();
    assert!(matches!(state, pixbox::jobs::State::Pending), "the cancelled job is not failed: {state:?}");
    let released = h.queue.receive(1, Duration::from_secs(2), Duration::from_secs(30)).await.unwrap();
    assert_eq!(released.len(), 1, "its message was released for another worker at once");
}

/// Fair slots: a route whose plugin sleeps through its whole budget holds 4 x concurrency queued
/// jobs; an image uploaded to the default route afterwards is received past them and done within
/// one tick + its own processing time + 2 s, while the sleepers still end as `timeout`.
async fn a_slow_route_does_not_hold_up_the_others(backend: Backend) {
    let Some(mut h) = Harness::new(backend, "a_slow_route_does_not_hold_up_the_others").await else { return };
    let concurrency = 2;
    h.config.worker.concurrency = concurrency;
    h.config.sandbox.time_budget_ms = 5_000;
    h.config.routes.push(route("sleepy/", &common::misbehave(), &[("mode", text("sleep"))]));
    let app = h.start(Role::All).await;
    let base = base(&app);
    let tick = Duration::from_secs(1);
    let photo = || common::png(&common::photo(64, 48));

    // Its own processing time, alone: upload to done (one tick at most included).
    let started = Instant::now();
    let (_, body) = h.upload(&base, "", vec![("alone.png", photo())]).await;
    let status = h.wait_settled(&base, &keys(&body)[0], Duration::from_secs(30)).await;
    assert_eq!(status["state"], "done", "{status}");
    let alone = started.elapsed();

    let mut sleepy = Vec::new();
    for _ in 0..concurrency {
        let (status, body) = h.upload(&base, "?prefix=sleepy", (0..4).map(|_| ("s.png", photo())).collect()).await;
        assert_eq!(status, 202, "{body}");
        sleepy.extend(keys(&body));
    }
    // The sleepers are received and hold both slots.
    tokio::time::sleep(tick * 2).await;
    let started = Instant::now();
    let (_, body) = h.upload(&base, "", vec![("after.png", photo())]).await;
    let key = keys(&body)[0].clone();
    let status = h.wait_settled(&base, &key, Duration::from_secs(60)).await;
    let took = started.elapsed();
    assert_eq!(status["state"], "done", "{status}");
    let bound = tick + alone + Duration::from_secs(2);
    eprintln!("default-route image behind {} sleepers: done in {took:?} (alone: {alone:?})", sleepy.len());
    assert!(took <= bound, "done after {took:?}, bound {bound:?} (alone it took {alone:?})");
    for key in &sleepy {
        let status = h.wait_settled(&base, key, Duration::from_secs(120)).await;
        assert_eq!(status["state"], "failed", "{status}");
        assert_eq!(status["error"]["code"], "timeout", "{status}");
    }
    app.stop().await;
}

/// One upload to a route with three renditions (one per mode of serving: the default under the
/// key, the others by path and by query) gives three images of the right sizes and formats,
/// from one call of a 0.2.0 plugin; the `format = "auto"` one is served as AVIF, WebP or the
/// fallback by `Accept`; a 0.1.0 plugin's route is called once per rendition.
async fn renditions_from_one_call(backend: Backend) {
    let Some(mut h) = Harness::new(backend, "renditions_from_one_call").await else { return };
    let options = |pairs: &[(&str, OptionValue)]| pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let int = OptionValue::Integer;
    h.config.routes.push(RouteConfig {
        prefix: "products/".into(),
        plugin: "resize".into(),
        options: options(&[("quality", int(80))]),
        renditions: [
            (
                "thumb",
                options(&[("width", int(128)), ("height", int(128)), ("format", OptionValue::Text("auto".into()))]),
            ),
            (
                "medium",
                options(&[("width", int(400)), ("height", int(400)), ("format", OptionValue::Text("png".into()))]),
            ),
            ("large", options(&[("width", int(800)), ("height", int(800))])),
        ]
        .into_iter()
        .map(|(name, o)| (name.to_string(), o))
        .collect(),
        default_rendition: Some("large".into()),
        formats: vec!["avif".into(), "webp".into()],
        ..RouteConfig::new("", "resize", Default::default())
    });
    h.config.routes.push(RouteConfig {
        prefix: "legacy/".into(),
        plugin: concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/misbehave-0.1.0.wasm").into(),
        options: Default::default(),
        renditions: [("a", Default::default()), ("b", Default::default())]
            .into_iter()
            .map(|(n, o)| (n.to_string(), o))
            .collect(),
        default_rendition: Some("a".into()),
        formats: Vec::new(),
        ..RouteConfig::new("", "resize", Default::default())
    });
    let api = h.start(Role::Api).await;
    let base = base(&api);
    let (status, body) =
        h.upload(&base, "?prefix=products/", vec![("p.jpg", common::jpeg(&common::photo(1200, 900)))]).await;
    assert_eq!(status, 202, "{body}");
    let key = keys(&body).remove(0);
    let urls = &body["images"][0]["renditions"];
    assert_eq!(urls["large"], format!("/download/{key}"), "{body}");
    assert_eq!(urls["thumb"], format!("/download/{key}/thumb"), "{body}");
    assert_eq!(urls.as_object().unwrap().len(), 3, "{body}");
    // Pending: every rendition URL says so.
    let pending = h.client.get(format!("{base}/download/{key}/thumb")).send().await.unwrap();
    assert_eq!(pending.status(), 202);
    let (status, body) = h.upload(&base, "?prefix=legacy/", vec![("e.png", common::png(&common::photo(20, 10)))]).await;
    assert_eq!(status, 202, "{body}");
    let legacy = keys(&body).remove(0);

    let worker = h.start(Role::Worker).await;
    let done = h.wait_settled(&base, &key, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "done", "{done}");
    let made: Vec<(String, u64, u64, String, bool)> = done["renditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let n = |f: &str| r[f].as_u64().unwrap();
            (
                r["name"].as_str().unwrap().into(),
                n("width"),
                n("height"),
                r["media_type"].as_str().unwrap().into(),
                r["default"] == true,
            )
        })
        .collect();
    assert_eq!(
        made,
        [
            ("large".to_string(), 800, 600, "image/jpeg".to_string(), true),
            ("medium".to_string(), 400, 300, "image/png".to_string(), false),
            ("thumb".to_string(), 128, 96, "image/jpeg".to_string(), false),
        ],
        "{done}"
    );
    let fetch = async |path: &str| {
        let response = h.client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let media_type = response.headers()["content-type"].to_str().unwrap().to_string();
        (media_type, common::decode(&response.bytes().await.unwrap()).dimensions())
    };
    assert_eq!(fetch(&format!("/download/{key}")).await, ("image/jpeg".into(), (800, 600)));
    assert_eq!(fetch(&format!("/download/{key}/thumb")).await, ("image/jpeg".into(), (128, 96)));
    assert_eq!(fetch(&format!("/download/{key}?rendition=medium")).await, ("image/png".into(), (400, 300)));
    assert_eq!(fetch(&format!("/download?key={key}&rendition=thumb")).await, ("image/jpeg".into(), (128, 96)));
    let unknown = h.client.get(format!("{base}/download/{key}?rendition=huge")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.json::<Value>().await.unwrap()["code"], "no-such-rendition");
    // A placeholder from the same call.
    let colour = done["placeholder"]["dominant_color"].as_str().unwrap();
    assert!(colour.len() == 7 && colour.starts_with('#'), "{done}");
    assert!(!done["placeholder"]["thumbhash"].as_str().unwrap().is_empty(), "{done}");
    // One plugin call made all three (stored with the result); where S3 users find them.
    let stored = h.store.head(Bucket::Permanent, &key).await.unwrap();
    assert_eq!(stored.meta.metadata["plugin-calls"], "1");
    assert_eq!(stored.meta.metadata["renditions"], "large,medium,thumb");
    assert!(h.store.head(Bucket::Permanent, &format!("{key}/thumb")).await.is_ok());
    assert!(h.store.head(Bucket::Permanent, &format!("{key}/large")).await.is_err(), "the default is stored once");
    assert!(h.store.head(Bucket::Permanent, &format!("{key}/thumb.avif")).await.is_ok());

    // `format = "auto"`: by Accept, in the route's order (AVIF first), named types only.
    let negotiated = async |accept: Option<&str>| {
        let mut request = h.client.get(format!("{base}/download/{key}/thumb"));
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{accept:?}");
        assert_eq!(response.headers()["vary"], "Accept", "{accept:?}");
        let media_type = response.headers()["content-type"].to_str().unwrap().to_string();
        let header = pixbox::imaging::probe_output(&response.bytes().await.unwrap()).unwrap();
        assert_eq!(header.format.media_type(), media_type, "{accept:?}");
        (media_type, (header.width, header.height))
    };
    let browser = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8";
    assert_eq!(negotiated(Some(browser)).await, ("image/avif".into(), (128, 96)));
    assert_eq!(negotiated(Some("image/webp,*/*")).await, ("image/webp".into(), (128, 96)));
    assert_eq!(negotiated(Some("image/avif;q=0, image/webp")).await, ("image/webp".into(), (128, 96)));
    assert_eq!(negotiated(Some("image/*,*/*;q=0.8")).await, ("image/jpeg".into(), (128, 96)));
    assert_eq!(negotiated(None).await, ("image/jpeg".into(), (128, 96)));
    // A rendition without `auto` is one format whatever the client takes, and says so.
    let plain = h.client.get(format!("{base}/download/{key}")).header("accept", browser).send().await.unwrap();
    assert_eq!(plain.headers()["content-type"], "image/jpeg");
    assert!(plain.headers().get("vary").is_none());

    // The 0.1.0 plugin: one call per rendition, both outputs stored.
    let done = h.wait_settled(&base, &legacy, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "done", "{done}");
    let stored = h.store.head(Bucket::Permanent, &legacy).await.unwrap();
    assert_eq!(stored.meta.metadata["plugin-calls"], "2");
    assert_eq!(fetch(&format!("/download/{legacy}/b")).await.1, (20, 10));
    worker.stop().await;
    api.stop().await;
}

/// A focal point given at upload (`?focus=x,y`, or a `focus` form field before each image) is
/// where a cropping rendition keeps the image.
async fn focal_point_from_the_upload(backend: Backend) {
    let Some(mut h) = Harness::new(backend, "focal_point_from_the_upload").await else { return };
    h.config.routes.push(route(
        "banners/",
        "resize",
        &[("width", int(100)), ("height", int(100)), ("mode", text("cover"))],
    ));
    let app = h.start(Role::All).await;
    let base = base(&app);
    // Left half red, right half blue.
    let halves = || vec![("h.png", common::png(&common::red_left_blue_right(400, 200)))];
    let (status, body) = h.upload(&base, "?prefix=banners/&focus=1.5,0", halves()).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid-focus")), "{body}");
    let (_, body) = h.upload(&base, "?prefix=banners/&focus=0.9,0.5", halves()).await;
    let focused = keys(&body).remove(0);
    let (_, body) = h.upload(&base, "?prefix=banners/", halves()).await;
    let centred = keys(&body).remove(0);
    let pixels = async |key: &str| {
        assert_eq!(h.wait_settled(&base, key, Duration::from_secs(60)).await["state"], "done");
        let bytes = h.client.get(format!("{base}/download/{key}")).send().await.unwrap().bytes().await.unwrap();
        common::decode(&bytes).to_rgb8()
    };
    let blue = |p: &image::Rgb<u8>| p[2] > 200 && p[0] < 60;
    let focused = pixels(&focused).await;
    assert_eq!(focused.dimensions(), (100, 100));
    assert!(focused.enumerate_pixels().filter(|(x, ..)| *x >= 10).all(|(.., p)| blue(p)), "kept the blue side");
    let centred = pixels(&centred).await;
    assert!(!blue(centred.get_pixel(5, 50)) && blue(centred.get_pixel(95, 50)), "without a focus: the centre");

    // Form fields: each applies to the images after it.
    let form = |first: &str| {
        let image = || Part::bytes(common::png(&common::red_left_blue_right(400, 200))).file_name("h.png");
        Form::new()
            .text("prefix", "banners/")
            .text("focus", first.to_string())
            .part("images", image())
            .text("focus", "0.9,0.5")
            .part("images", image())
    };
    let post = async |form: Form| {
        let response = h.client.post(format!("{base}/upload")).multipart(form).send().await.unwrap();
        (response.status().as_u16(), response.json::<Value>().await.unwrap())
    };
    let (status, body) = post(form("0.5;0.5")).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid-focus")), "{body}");
    let (status, body) = post(form("0.1,0.5")).await;
    assert_eq!(status, 202, "{body}");
    let (left, right) = (keys(&body).remove(0), keys(&body).remove(1));
    let left = pixels(&left).await;
    assert!(left.enumerate_pixels().filter(|(x, ..)| *x < 90).all(|(.., p)| !blue(p)), "kept the red side");
    let right = pixels(&right).await;
    assert!(right.enumerate_pixels().filter(|(x, ..)| *x >= 10).all(|(.., p)| blue(p)), "kept the blue side");
    app.stop().await;
}

/// Live status. `/status/{key}?wait=` answers as soon as the job is settled (seconds before the
/// wait would end), and at the end of the wait while it is pending; a wait out of range is
/// refused. `/events` sends one event per key as each job settles, a failure with its code, and
/// ends once every key has had its event. 202 answers carry `Retry-After`.
async fn live_status(backend: Backend) {
    let Some(h) = Harness::new(backend, "live_status").await else { return };
    let api = h.start(Role::Api).await;
    let base = base(&api);
    let photo = || common::jpeg(&common::photo(300, 200));
    let (_, body) = h.upload(&base, "", vec![("a.jpg", photo()), ("b.jpg", photo())]).await;
    let good = keys(&body);
    let (_, body) = h.upload(&base, "?prefix=strict", vec![("big.png", common::png(&common::photo(50, 50)))]).await;
    let bad = keys(&body).remove(0);
    let pending = h.client.get(format!("{base}/download/{}", good[0])).send().await.unwrap();
    assert_eq!((pending.status().as_u16(), pending.headers()["retry-after"].to_str().unwrap()), (202, "1"));

    // No worker yet: a 1 s wait ends pending, after the second.
    let asked = Instant::now();
    let status: Value =
        h.client.get(format!("{base}/status/{}?wait=1", good[0])).send().await.unwrap().json().await.unwrap();
    let took = asked.elapsed();
    assert_eq!(status["state"], "pending", "{status}");
    assert!(took >= Duration::from_millis(750) && took < Duration::from_millis(2_000), "answered after {took:?}");
    for wait in ["31", "-1", "soon"] {
        let refused = h.client.get(format!("{base}/status/{}?wait={wait}", good[0])).send().await.unwrap();
        assert_eq!(refused.status(), 400, "wait={wait}");
        assert_eq!(refused.json::<Value>().await.unwrap()["code"], "invalid-wait");
    }

    // A 30 s wait and an event stream, opened before any worker runs.
    let client = h.client.clone();
    let waiting = tokio::spawn({
        let url = format!("{base}/status/{}?wait=30", good[1]);
        async move {
            let asked = Instant::now();
            let status: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            (status, asked.elapsed())
        }
    });
    let all = [good.clone(), vec![bad.clone()]].concat().join(",");
    let stream = h.client.get(format!("{base}/events?keys={all}")).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    assert!(stream.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let worker = h.start(Role::Worker).await;
    let (status, took) = waiting.await.unwrap();
    assert_eq!(status["state"], "done", "{status}");
    assert!(took < Duration::from_secs(15), "the wait answered only after {took:?}");
    assert!(h.store.head(Bucket::Permanent, &good[1]).await.is_ok(), "answered done once the result was stored");
    // The stream ends by itself once each key has had its event.
    let text = tokio::time::timeout(Duration::from_secs(60), stream.text()).await.expect("the stream ended").unwrap();
    let mut events: Vec<(String, String, Value)> = Vec::new();
    for block in text.split("\n\n").filter(|b| b.contains("data:")) {
        let field = |name: &str| {
            block.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string()).unwrap_or_default()
        };
        events.push((field("event:"), field("id:"), serde_json::from_str(&field("data:")).unwrap()));
    }
    events.sort_by(|a, b| a.1.cmp(&b.1));
    let mut expected: Vec<(String, String)> = good.iter().map(|k| ("done".to_string(), k.clone())).collect();
    expected.push(("failed".into(), bad.clone()));
    expected.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(events.iter().map(|(e, k, _)| (e.clone(), k.clone())).collect::<Vec<_>>(), expected, "{text}");
    let failure = &events.iter().find(|(e, ..)| e == "failed").unwrap().2;
    assert_eq!(failure["error"]["code"], "bad-input", "{failure}");
    // A key that does not exist gets its own event; too many keys are refused.
    let text = h.client.get(format!("{base}/events?keys=nothing.jpg")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("event: not-found") && text.contains("id: nothing.jpg"), "{text}");
    let many = (0..101).map(|i| format!("k{i}.jpg")).collect::<Vec<_>>().join(",");
    let refused = h.client.get(format!("{base}/events?keys={many}")).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    worker.stop().await;
    api.stop().await;
}

common::on_each_backend!(
    multi_image_upload,
    prefix_routes_to_thumbnail,
    pending_then_done_and_duplicates_converge,
    bad_uploads_create_nothing,
    plugin_rejection_is_reported,
    killed_worker_restarts_and_finishes,
    separate_api_and_worker_processes,
    timeouts_fail_for_good_on_the_second_attempt,
    crashes_retry_then_give_up,
    a_sleeping_plugin_never_stalls_the_worker,
    a_slow_route_does_not_hold_up_the_others,
    renditions_from_one_call,
    focal_point_from_the_upload,
    live_status,
);
