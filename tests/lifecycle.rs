//! The write path after an upload, on each backend against the real app: deleting images (done,
//! pending, with on-demand variants, twice; by their uploader or an admin only), webhooks (signed,
//! retried with backoff, delivered after a `kill -9` and a restart, never to an address the
//! operator did not allow), duplicate uploads that share one set of images, and direct uploads
//! that go to the bucket without passing through the api.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use pixbox::config::{Config, Role};
use pixbox::server::Running;
use pixbox::storage::{BlobStore, Bucket};
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::Value;

use crate::common::{self, Backend, int, route};

const SECRET: &str = "webhook-secret-of-the-tests-0123456789";

/// A running pixbox and its store.
struct App {
    running: Running,
    base: String,
    store: Arc<dyn BlobStore>,
    client: reqwest::Client,
    config: Config,
    _dir: tempfile::TempDir,
}

impl App {
    async fn start(backend: Backend, test: &str, adjust: impl FnOnce(&mut Config)) -> Option<App> {
        let dir = tempfile::tempdir().unwrap();
        let mut config = common::config(dir.path());
        backend.configure(&mut config, test)?;
        config.limits.rate_per_second = 0;
        adjust(&mut config);
        let (store, _) = pixbox::backends::connect(&config).await.unwrap();
        let running = pixbox::server::start(&config).await.unwrap();
        let base = format!("http://{}", running.addr.unwrap());
        Some(App { running, base, store, client: reqwest::Client::new(), config, _dir: dir })
    }

    async fn upload(&self, prefix: &str, image: Vec<u8>, query: &str) -> reqwest::Response {
        let form = Form::new().text("prefix", prefix.to_string()).part("images", Part::bytes(image).file_name("a.png"));
        self.client.post(format!("{}/upload{query}", self.base)).multipart(form).send().await.unwrap()
    }

    async fn delete(&self, key: &str) -> reqwest::Response {
        self.client.delete(format!("{}/images/{key}", self.base)).send().await.unwrap()
    }

    /// Every object of either bucket, pixbox's own records left out unless `records`.
    async fn objects(&self, records: bool) -> Vec<String> {
        let mut all = Vec::new();
        for bucket in [Bucket::Permanent, Bucket::Temp] {
            for key in self.store.list(bucket, "").await.unwrap() {
                if records || !key.starts_with(".pixbox/") {
                    all.push(format!("{bucket:?}:{key}"));
                }
            }
        }
        all
    }

    /// A worker over this app's backends and routes, for tests that run its ticks themselves.
    async fn worker(&self) -> pixbox::worker::Worker {
        let (store, queue) = pixbox::backends::connect(&self.config).await.unwrap();
        let sandbox = common::sandbox(self.config.sandbox.clone());
        common::worker(store, queue, sandbox, &self.config.routes, &self.config).await
    }
}

fn key_of(body: &Value) -> String {
    body["images"][0]["key"].as_str().unwrap().to_string()
}

/// A done image with renditions, a kept original and a stored preset: a delete removes every
/// object of it, answers 204 again for the same key, and reads find nothing.
async fn deleting_a_done_image_removes_everything(backend: Backend) {
    let Some(app) = App::start(backend, "deleting_a_done_image", |config| {
        let mut shop = route("shop/", "resize", &[("width", int(300)), ("height", int(300))]);
        shop.renditions = [("small".to_string(), [("width".to_string(), int(64))].into())].into();
        shop.renditions.insert("large".into(), Default::default());
        shop.default_rendition = Some("large".into());
        shop.keep_originals = true;
        config.routes.push(shop);
        config.presets = toml::from_str("[card]\nwidth = 40\nheight = 40\nformat = \"webp\"\n").unwrap();
    })
    .await
    else {
        return;
    };
    let keep = common::upload_done(&app.client, &app.base, "", common::png(&common::photo(64, 48))).await;
    let key = common::upload_done(&app.client, &app.base, "shop/", common::png(&common::photo(320, 240))).await;
    let preset = app.client.get(format!("{}/img/card/{key}", app.base)).send().await.unwrap();
    assert_eq!(preset.status(), StatusCode::OK);
    let before = app.objects(false).await;
    for stored in [format!("Permanent:{key}"), format!("Permanent:{key}/small"), format!("Permanent:{key}/original")] {
        assert!(before.contains(&stored), "{stored} in {before:?}");
    }
    assert!(before.iter().any(|o| o.starts_with(&format!("Permanent:{key}/p/"))), "{before:?}");

    let started = Instant::now();
    let deleted = app.delete(&key).await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT, "{:?}", deleted.text().await);
    let took = started.elapsed();
    let after = app.objects(false).await;
    assert!(after.iter().all(|o| !o.contains(&key)), "left after the delete: {after:?}");
    assert!(after.iter().any(|o| o.contains(&keep)), "another image stays: {after:?}");
    for path in [format!("status/{key}"), format!("download/{key}"), format!("img/card/{key}")] {
        let read = app.client.get(format!("{}/{path}", app.base)).send().await.unwrap();
        assert_eq!(read.status(), StatusCode::NOT_FOUND, "{path}");
    }
    assert_eq!(app.delete(&key).await.status(), StatusCode::NO_CONTENT, "a repeat answers as the first");
    // One rendition is not an image of its own.
    let rendition = app.delete(&format!("{keep}/default")).await;
    assert_eq!(rendition.status(), StatusCode::NOT_FOUND);
    let unknown = app.delete("shop/0123456789abcdef0123456789abcdef.png").await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(unknown.json::<Value>().await.unwrap()["code"], "not-found");
    eprintln!("delete of an image with 3 renditions, a kept original and a preset: {took:?}");
    app.running.stop().await;
}

/// An image deleted while its job waits in the queue: the delete answers at once, and the job,
/// when a worker takes it, writes nothing and ends.
async fn deleting_a_pending_image_leaves_its_job_nothing_to_write(backend: Backend) {
    let Some(app) = App::start(backend, "deleting_a_pending_image", |config| config.role = Role::Api).await else {
        return;
    };
    let uploaded = app.upload("", common::png(&common::photo(200, 100)), "").await;
    assert_eq!(uploaded.status(), StatusCode::ACCEPTED);
    let key = key_of(&uploaded.json().await.unwrap());
    assert_eq!(app.delete(&key).await.status(), StatusCode::NO_CONTENT);
    assert!(app.objects(false).await.is_empty(), "{:?}", app.objects(false).await);

    let worker = app.worker().await;
    let report = worker.tick(1, &tokio_util::sync::CancellationToken::new()).await;
    assert_eq!((report.done, report.failed, report.retried), (0, 1, 0), "the job was dropped: {report:?}");
    assert!(app.objects(false).await.is_empty(), "the job wrote: {:?}", app.objects(false).await);
    let depth = worker.queue.depth().await.unwrap();
    assert_eq!((depth.waiting, depth.in_flight, depth.dead), (0, 0, 0), "{depth:?}");
    let status = app.client.get(format!("{}/status/{key}", app.base)).send().await.unwrap();
    assert_eq!(status.status(), StatusCode::NOT_FOUND);
    app.running.stop().await;
}

/// With API keys: an `upload` key deletes what it uploaded (done or pending), not what another
/// key uploaded; an `admin` key deletes anything; no key is 401.
async fn only_the_uploader_or_an_admin_deletes(backend: Backend) {
    use pixbox::auth::{Scope, new_key};
    let (alice, alice_entry) = new_key(&[Scope::Upload, Scope::Read]);
    let (bob, bob_entry) = new_key(&[Scope::Upload, Scope::Read]);
    let (admin, admin_entry) = new_key(&[Scope::Admin]);
    let Some(app) = App::start(backend, "only_the_uploader_deletes", |config| {
        config.auth.keys = format!("{alice_entry} {bob_entry} {admin_entry}");
    })
    .await
    else {
        return;
    };
    let upload = |who: &str| {
        let form = Form::new().part("images", Part::bytes(common::png(&common::photo(32, 32))).file_name("a.png"));
        app.client.post(format!("{}/upload", app.base)).bearer_auth(who).multipart(form).send()
    };
    let delete = |who: Option<&str>, key: &str| {
        let request = app.client.delete(format!("{}/images/{key}", app.base));
        match who {
            Some(who) => request.bearer_auth(who).send(),
            None => request.send(),
        }
    };
    let first = key_of(&upload(&alice).await.unwrap().json().await.unwrap());
    let second = key_of(&upload(&alice).await.unwrap().json().await.unwrap());
    // Done first: its owner is recorded with the result too, not only with the original.
    let status = app.client.get(format!("{}/status/{first}?wait=20", app.base)).bearer_auth(&alice).send();
    assert_eq!(status.await.unwrap().json::<Value>().await.unwrap()["state"], "done");
    assert_eq!(delete(None, &first).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let refused = delete(Some(&bob), &first).await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(refused.json::<Value>().await.unwrap()["code"], "forbidden");
    assert!(app.objects(false).await.iter().any(|o| o.contains(&first)), "a refused delete changes nothing");
    assert_eq!(delete(Some(&alice), &first).await.unwrap().status(), StatusCode::NO_CONTENT);
    assert_eq!(delete(Some(&alice), &first).await.unwrap().status(), StatusCode::NO_CONTENT);
    assert_eq!(delete(Some(&bob), &first).await.unwrap().status(), StatusCode::FORBIDDEN, "nor after the delete");
    assert_eq!(delete(Some(&admin), &second).await.unwrap().status(), StatusCode::NO_CONTENT);
    app.running.stop().await;
}

/// What a webhook receiver got.
#[derive(Debug, Clone)]
struct Call {
    id: String,
    signature: String,
    body: String,
}

/// A webhook receiver on loopback that fails the first `fail_first` calls (500), then answers 200.
struct Receiver {
    url: String,
    calls: Arc<Mutex<Vec<Call>>>,
    fail_first: Arc<AtomicUsize>,
}

impl Receiver {
    async fn start(fail_first: usize) -> Receiver {
        use axum::http::HeaderMap;
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let fail = Arc::new(AtomicUsize::new(fail_first));
        let (seen, failing) = (calls.clone(), fail.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let (seen, failing) = (seen.clone(), failing.clone());
                async move {
                    let header =
                        |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
                    let mut calls = seen.lock().unwrap();
                    calls.push(Call { id: header("pixbox-webhook-id"), signature: header("pixbox-signature"), body });
                    if calls.len() <= failing.load(Ordering::SeqCst) {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, calls, fail_first: fail }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits up to `within` for `count` calls.
    async fn wait_for(&self, count: usize, within: Duration) -> Vec<Call> {
        let deadline = Instant::now() + within;
        while self.calls().len() < count {
            assert!(Instant::now() < deadline, "{} call(s) within {within:?}, wanted {count}", self.calls().len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.calls()
    }
}

/// Checks a call as a receiver would, from the README's recipe (not pixbox's code): the HMAC of
/// `"{t}.{body}"` under the shared secret, and a timestamp within five minutes.
fn verified(call: &Call) -> Value {
    let (t, v1) = call.signature.split_once(',').unwrap();
    let t = t.strip_prefix("t=").unwrap();
    let v1 = v1.strip_prefix("v1=").unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.{}", call.body).as_bytes());
    mac.verify_slice(&hex::decode(v1).unwrap()).expect("the signature verifies");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(now.abs_diff(t.parse().unwrap()) < 300, "fresh timestamp");
    let body: Value = serde_json::from_str(&call.body).unwrap();
    assert_eq!(body["id"], call.id);
    body
}

/// The webhook settings of these tests: loopback allowed, quick retries.
fn webhooks(config: &mut Config) {
    config.webhooks.signing_secret = SECRET.into();
    config.webhooks.allow = "127.0.0.1".into();
    config.webhooks.first_retry_ms = 100;
    config.webhooks.poll_ms = 50;
}

/// A route's webhook gets one verifiable call per settled job; a receiver that
/// fails 3 times gets it on the 4th try, after backoff.
async fn webhooks_are_signed_and_retried(backend: Backend) {
    let receiver = Receiver::start(3).await;
    let url = receiver.url.clone();
    let Some(app) = App::start(backend, "webhooks_are_signed", |config| {
        webhooks(config);
        let mut hooked = route("hooked/", "resize", &[("width", int(50))]);
        hooked.webhook = Some(url);
        config.routes.push(hooked);
    })
    .await
    else {
        return;
    };
    let key = common::upload_done(&app.client, &app.base, "hooked/", common::png(&common::photo(120, 80))).await;
    let calls = receiver.wait_for(4, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let calls_now = receiver.calls();
    assert_eq!(calls_now.len(), 4, "no call after the first 2xx: {calls_now:?}");
    assert!(calls.iter().all(|c| c.id == calls[0].id && c.body == calls[0].body), "the same delivery each time");
    let body = verified(&calls[3]);
    assert_eq!(body["key"], key.as_str());
    assert_eq!(body["state"], "done");
    assert_eq!(body["renditions"]["default"], format!("/download/{key}"));
    let tampered = Call { body: calls[3].body.replace("done", "fail"), ..calls[3].clone() };
    assert!(std::panic::catch_unwind(|| verified(&tampered)).is_err(), "a changed body does not verify");
    assert!(pixbox::webhooks::list(&*app.store, false).await.unwrap().is_empty(), "nothing left waiting");

    app.running.stop().await;
}

/// An upload's own webhook URL must name a listed host; a route's may not name a private address
/// that is not listed (refused at start); a name that resolves only to private addresses is
/// refused at delivery, without a request.
async fn webhooks_reach_only_allowed_addresses(backend: Backend) {
    let receiver = Receiver::start(0).await;
    let Some(app) = App::start(backend, "webhooks_reach_only_allowed", webhooks).await else { return };
    for (url, why) in [
        ("http://10.0.0.7/hook", "not listed"),
        ("http://169.254.169.254/latest/meta-data", "not listed"),
        ("https://hooks.example.com/x", "not listed"),
        ("file:///etc/passwd", "not an http(s) URL"),
    ] {
        let answer = app.upload("", common::png(&common::photo(8, 8)), &format!("?webhook={url}")).await;
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "{url}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["code"], "webhook-not-allowed", "{url}");
        assert!(body["message"].as_str().unwrap().contains(why), "{url}: {body}");
    }
    assert!(app.objects(false).await.is_empty(), "refused uploads store nothing");
    let ok = app.upload("", common::png(&common::photo(8, 8)), &format!("?webhook={}", receiver.url)).await;
    assert_eq!(ok.status(), StatusCode::ACCEPTED);
    let key = key_of(&ok.json().await.unwrap());
    let calls = receiver.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(verified(&calls[0])["key"], key.as_str());

    // At start: a route's webhook on a private address that is not listed.
    let file: toml::Table = toml::from_str(&format!(
        "[webhooks]\nsigning_secret = \"{SECRET}\"\nallow = \"127.0.0.1\"\n\
         [[routes]]\nprefix = \"hooked/\"\nplugin = \"resize\"\nwebhook = \"http://192.168.1.10/hook\"\n"
    ))
    .unwrap();
    let refused = Config::load(None, Vec::new(), file).unwrap_err().to_string();
    assert!(refused.contains("192.168.1.10") && refused.contains("allow"), "{refused}");
    let loaded =
        Config::load(None, vec![("PIXBOX_WEBHOOKS_ALLOW".to_string(), "10.0.0.0/8".to_string())], toml::Table::new())
            .unwrap_err()
            .to_string();
    assert!(loaded.contains("signing_secret"), "an allow list without a secret: {loaded}");

    // At delivery, by a worker whose allow list is empty: a name that resolves to loopback. (The
    // app's own deliverer, which allows loopback, is stopped first.)
    app.running.stop().await;
    pixbox::webhooks::enqueue(
        &*app.store,
        &receiver.url.replace("127.0.0.1", "localhost"),
        &pixbox::webhooks::Event::new("x", &key, "done", Default::default(), None),
    )
    .await
    .unwrap();
    let strict = pixbox::webhooks::WebhookSettings { allow: String::new(), ..app.config.webhooks.clone() };
    let deliverer = pixbox::webhooks::Deliverer::new(app.store.clone(), &strict).unwrap();
    let round = deliverer.round().await.unwrap();
    assert_eq!((round.delivered, round.retried), (0, 1), "{round:?}");
    let waiting = pixbox::webhooks::list(&*app.store, false).await.unwrap();
    let error = waiting[0].last_error.as_deref().unwrap();
    assert!(error.contains("resolves to no address webhooks may reach"), "{error}");
    assert_eq!(receiver.calls().len(), 1, "no request reached the receiver");
}

/// A delivery outlives its process: the receiver is down while the job settles, pixbox is killed
/// (SIGKILL) and started again, and the call arrives.
async fn a_webhook_survives_a_kill(backend: Backend) {
    let receiver = Receiver::start(usize::MAX).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path());
    if backend.configure(&mut config, "a_webhook_survives_a_kill").is_none() {
        return;
    }
    pixbox::backends::connect(&config).await.unwrap(); // creates the buckets and queue
    let port = common::free_port();
    config.listen = format!("127.0.0.1:{port}");
    config.admin_listen = "127.0.0.1:0".into();
    let serve = || {
        let mut command = std::process::Command::new(common::pixbox_bin());
        command.arg("serve").current_dir(dir.path()).env_clear().envs(common::process_env(&config, "all"));
        command.env("PIXBOX_WEBHOOKS_SIGNING_SECRET", SECRET).env("PIXBOX_WEBHOOKS_ALLOW", "127.0.0.1");
        command.env("PIXBOX_WEBHOOKS_FIRST_RETRY_MS", "200").env("PIXBOX_WEBHOOKS_POLL_MS", "100");
        command
    };
    let log = dir.path().join("pixbox.log");
    let mut first = common::Served::start(&mut serve(), port, &log, Duration::from_secs(60)).await;
    let client = reqwest::Client::new();
    let form = Form::new().part("images", Part::bytes(common::png(&common::photo(64, 64))).file_name("a.png"));
    let answer =
        client.post(format!("{}/upload?webhook={}", first.base, receiver.url)).multipart(form).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::ACCEPTED);
    let key = key_of(&answer.json().await.unwrap());
    receiver.wait_for(1, Duration::from_secs(30)).await;
    first.kill();
    receiver.fail_first.store(0, Ordering::SeqCst);
    let tried = receiver.calls().len();

    let log = dir.path().join("pixbox-again.log");
    let _again = common::Served::start(&mut serve(), port, &log, Duration::from_secs(60)).await;
    let calls = receiver.wait_for(tried + 1, Duration::from_secs(30)).await;
    let body = verified(calls.last().unwrap());
    assert_eq!(body["key"], key.as_str());
    assert_eq!(body["state"], "done");
}

/// Two uploads of the same bytes to a `dedupe` route: one job, two keys serving the same images;
/// deleting one keeps the other's, deleting the last removes them.
async fn duplicate_uploads_share_one_set_of_images(backend: Backend) {
    let Some(app) = App::start(backend, "duplicate_uploads_share", |config| {
        config.role = Role::Api;
        let mut avatars = route("avatars/", "resize", &[("width", int(40)), ("height", int(40))]);
        avatars.dedupe = true;
        config.routes.push(avatars);
    })
    .await
    else {
        return;
    };
    let image = common::png(&common::photo(160, 120));
    let first: Value = app.upload("avatars/", image.clone(), "").await.json().await.unwrap();
    let second: Value = app.upload("avatars/", image.clone(), "").await.json().await.unwrap();
    let other: Value = app.upload("", image.clone(), "").await.json().await.unwrap();
    let (one, two) = (key_of(&first), key_of(&second));
    assert_ne!(one, two);
    assert_eq!(first["images"][0].get("deduplicated"), None);
    assert_eq!(second["images"][0]["deduplicated"], true);
    assert_eq!(other["images"][0].get("deduplicated"), None, "another route keeps its own copy");
    let worker = app.worker().await;
    assert_eq!(worker.queue.depth().await.unwrap().waiting, 2, "one job for the avatar, one for the other route");
    let report = worker.tick(1, &tokio_util::sync::CancellationToken::new()).await;
    assert_eq!(report.done, 2, "{report:?}");

    let download = |key: String| app.client.get(format!("{}/download/{key}", app.base)).send();
    let bytes_one = download(one.clone()).await.unwrap().bytes().await.unwrap();
    let answer_two = download(two.clone()).await.unwrap();
    assert_eq!(answer_two.status(), StatusCode::OK);
    assert_eq!(answer_two.bytes().await.unwrap(), bytes_one, "the same images");
    let status: Value =
        app.client.get(format!("{}/status/{two}", app.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!((status["state"].as_str(), status["key"].as_str()), (Some("done"), Some(two.as_str())));
    let images = app.objects(false).await;
    assert!(images.iter().all(|o| !o.contains(&two)), "nothing is stored under the alias: {images:?}");

    assert_eq!(app.delete(&one).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(download(one.clone()).await.unwrap().status(), StatusCode::NOT_FOUND);
    let kept = download(two.clone()).await.unwrap();
    assert_eq!(kept.status(), StatusCode::OK, "deleting one keeps the other");
    assert_eq!(kept.bytes().await.unwrap(), bytes_one);
    assert_eq!(app.delete(&two).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(download(two.clone()).await.unwrap().status(), StatusCode::NOT_FOUND);
    let left = app.objects(true).await;
    assert!(
        left.iter().all(|o| !o.contains(&one) || o.contains(".pixbox/deleted/")),
        "only the deletion records stay: {left:?}"
    );
    assert!(left.iter().all(|o| !o.contains(".pixbox/content/") && !o.contains(".pixbox/refs/")), "{left:?}");
    // The same bytes again are a new image, processed again.
    let again: Value = app.upload("avatars/", image, "").await.json().await.unwrap();
    assert_eq!(again["images"][0].get("deduplicated"), None);
    app.running.stop().await;
}

/// Sends the image of a direct upload as its answer says: the presigned POST form to the bucket
/// (S3), or the one-time PUT on pixbox (embedded).
async fn send_direct(app: &App, direct: &Value, image: Vec<u8>) -> reqwest::Response {
    let url = direct["url"].as_str().unwrap();
    match direct["method"].as_str().unwrap() {
        "PUT" => app.client.put(format!("{}{url}", app.base)).body(image).send().await.unwrap(),
        "POST" => {
            let mut form = Form::new();
            for (name, value) in direct["fields"].as_object().unwrap() {
                form = form.text(name.clone(), value.as_str().unwrap().to_string());
            }
            form = form.part("file", Part::bytes(image).file_name("a.png"));
            app.client.post(url).multipart(form).send().await.unwrap()
        }
        other => panic!("method {other}"),
    }
}

/// The presigned POST's policy, read and verified as S3 does (the emulator stores the object
/// without checking it): the bucket, the exact key, 1 to `max` bytes, an expiry within the TTL,
/// and the Signature Version 4 of the policy under the test credentials.
fn policy_holds(direct: &Value, bucket: &str, max: u64) {
    use base64::Engine as _;
    let fields = direct["fields"].as_object().unwrap();
    let field = |name: &str| fields[name].as_str().unwrap().to_string();
    let policy: Value =
        serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(field("policy")).unwrap()).unwrap();
    let conditions = policy["conditions"].as_array().unwrap();
    let id = direct["id"].as_str().unwrap();
    assert!(conditions.contains(&serde_json::json!({ "bucket": bucket })), "{policy}");
    assert!(conditions.contains(&serde_json::json!({ "key": format!(".pixbox/incoming/{id}") })), "{policy}");
    assert!(conditions.contains(&serde_json::json!(["content-length-range", 1, max])), "{policy}");
    let expiration = policy["expiration"].as_str().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(direct["expires_at"].as_u64().unwrap() <= now + 900, "{expiration}");
    // kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), "s3"), "aws4_request")
    let amz_date = field("x-amz-date");
    assert!(amz_date.len() == 16 && amz_date.ends_with('Z') && amz_date.as_bytes()[8] == b'T', "{amz_date}");
    let date = &amz_date[..8];
    let hmac = |key: &[u8], data: &str| {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
        mac.update(data.as_bytes());
        mac.finalize().into_bytes().to_vec()
    };
    let signing = hmac(&hmac(&hmac(&hmac(b"AWS4test", date), "us-east-1"), "s3"), "aws4_request");
    assert_eq!(field("x-amz-signature"), hex::encode(hmac(&signing, &field("policy"))));
    assert_eq!(field("x-amz-credential"), format!("test/{date}/us-east-1/s3/aws4_request"));
}

/// A direct upload: the image goes to the bucket (S3's presigned POST, or the embedded one-time
/// PUT), is checked and queued on completion (twice: the same answer), and is done like any
/// upload; completing before sending is 409; an oversize image is refused and nothing stays.
async fn a_direct_upload_skips_the_api(backend: Backend) {
    let Some(app) = App::start(backend, "a_direct_upload", |config| config.limits.max_image_bytes = 100_000).await
    else {
        return;
    };
    let create = || app.client.post(format!("{}/uploads?prefix=direct/", app.base)).send();
    let answer = create().await.unwrap();
    assert_eq!(answer.status(), StatusCode::CREATED);
    let direct: Value = answer.json().await.unwrap();
    let expected = if backend == Backend::Aws { "POST" } else { "PUT" };
    assert_eq!(direct["method"], expected, "{direct}");
    assert_eq!(direct["max_bytes"], 100_000);
    let complete = |id: String| app.client.post(format!("{}/uploads/{id}/complete", app.base)).send();
    let id = direct["id"].as_str().unwrap().to_string();
    if backend == Backend::Aws {
        policy_holds(&direct, &app.config.temp_bucket, 100_000);
    }
    let early = complete(id.clone()).await.unwrap();
    assert_eq!(early.status(), StatusCode::CONFLICT);
    assert_eq!(early.json::<Value>().await.unwrap()["code"], "upload-not-received");

    let image = common::png(&common::photo(120, 90));
    let sent = send_direct(&app, &direct, image.clone()).await;
    assert!(sent.status().is_success(), "{}: {}", sent.status(), sent.text().await.unwrap());
    if backend == Backend::Embedded {
        let again = send_direct(&app, &direct, image.clone()).await;
        assert_eq!(again.status(), StatusCode::FORBIDDEN, "the token is spent");
        assert_eq!(again.json::<Value>().await.unwrap()["code"], "invalid-upload-token");
    }
    let done = complete(id.clone()).await.unwrap();
    assert_eq!(done.status(), StatusCode::ACCEPTED);
    let done: Value = done.json().await.unwrap();
    let key = key_of(&done);
    assert!(key.starts_with("direct/") && key.ends_with(".png"), "{key}");
    assert_eq!(
        (done["images"][0]["width"].as_u64(), done["images"][0]["bytes"].as_u64()),
        (Some(120), Some(image.len() as u64))
    );
    let repeat: Value = complete(id.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(key_of(&repeat), key, "completing again answers the same");
    let status: Value =
        app.client.get(format!("{}/status/{key}?wait=20", app.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["state"], "done", "{status}");
    let incoming = app.objects(true).await;
    assert!(incoming.iter().all(|o| !o.contains(".pixbox/incoming/")), "the staged object is gone: {incoming:?}");

    // Over the limit: refused by the policy (S3's content-length-range, the PUT's own limit).
    let big: Value = create().await.unwrap().json().await.unwrap();
    let oversize = vec![7u8; 150_000];
    let sent = send_direct(&app, &big, oversize).await;
    let big_id = big["id"].as_str().unwrap().to_string();
    if sent.status().is_success() {
        // An emulator that stores the object without checking the policy: the check at completion
        // is what refuses it then.
        eprintln!("the S3 emulator accepted a POST over the policy's content-length-range; checked at completion");
        let refused = complete(big_id.clone()).await.unwrap();
        assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(refused.json::<Value>().await.unwrap()["code"], "image-too-large");
    } else {
        let status = sent.status();
        let text = sent.text().await.unwrap();
        assert!(status == StatusCode::PAYLOAD_TOO_LARGE || text.contains("EntityTooLarge"), "{status}: {text}");
        let refused = complete(big_id.clone()).await.unwrap();
        assert_eq!(refused.status(), StatusCode::CONFLICT, "nothing was stored");
    }
    let left = app.objects(true).await;
    assert!(left.iter().all(|o| !o.contains(&format!("incoming/{big_id}"))), "{left:?}");
    let unknown = complete("0".repeat(32)).await.unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(unknown.json::<Value>().await.unwrap()["code"], "no-such-upload");
    app.running.stop().await;
}

/// A direct upload that is sent but never completed is removed once its URL expired.
async fn a_direct_upload_never_completed_is_swept(backend: Backend) {
    let Some(app) =
        App::start(backend, "a_direct_upload_swept", |config| config.limits.direct_upload_ttl_secs = 1).await
    else {
        return;
    };
    let direct: Value = app.client.post(format!("{}/uploads", app.base)).send().await.unwrap().json().await.unwrap();
    assert!(send_direct(&app, &direct, common::png(&common::photo(16, 16))).await.status().is_success());
    let id = direct["id"].as_str().unwrap().to_string();
    assert!(app.objects(true).await.iter().any(|o| o.contains(&format!("incoming/{id}"))));
    let deadline = Instant::now() + Duration::from_secs(15);
    while app.objects(true).await.iter().any(|o| o.contains(&id)) {
        assert!(Instant::now() < deadline, "not swept: {:?}", app.objects(true).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let late = app.client.post(format!("{}/uploads/{id}/complete", app.base)).send().await.unwrap();
    assert_eq!(late.status(), StatusCode::NOT_FOUND);
    app.running.stop().await;
}

/// On S3, the bucket's event notification (to the job queue, as DEPLOY.md sets it up) completes a
/// direct upload without the client's confirmation; the client's confirmation after it answers
/// the same.
#[cfg(feature = "aws")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_event_completes_a_direct_upload() {
    let Some(app) = App::start(Backend::Aws, "a_bucket_event_completes", |_| {}).await else { return };
    let sdk = pixbox::aws::sdk_config(app.config.endpoint_url.as_deref()).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let url = sqs.get_queue_url().queue_name(&app.config.queue_name).send().await.unwrap();
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(url.queue_url().unwrap())
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap();
    let arn = attributes.attributes().unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn].clone();
    let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&sdk).force_path_style(true).build());
    use aws_sdk_s3::types::{
        FilterRule, FilterRuleName, NotificationConfiguration, NotificationConfigurationFilter, QueueConfiguration,
        S3KeyFilter,
    };
    let prefix = FilterRule::builder().name(FilterRuleName::Prefix).value(".pixbox/incoming/").build();
    let queue = QueueConfiguration::builder()
        .queue_arn(arn)
        .events(aws_sdk_s3::types::Event::from("s3:ObjectCreated:*"))
        .filter(
            NotificationConfigurationFilter::builder().key(S3KeyFilter::builder().filter_rules(prefix).build()).build(),
        )
        .build()
        .unwrap();
    s3.put_bucket_notification_configuration()
        .bucket(&app.config.temp_bucket)
        .notification_configuration(NotificationConfiguration::builder().queue_configurations(queue).build())
        .send()
        .await
        .unwrap();

    let direct: Value = app.client.post(format!("{}/uploads", app.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(direct["method"], "POST");
    let sent = send_direct(&app, &direct, common::png(&common::photo(96, 64))).await;
    assert!(sent.status().is_success(), "{}", sent.status());
    let id = direct["id"].as_str().unwrap();
    let key = format!("{id}.png");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = app.client.get(format!("{}/status/{key}?wait=5", app.base)).send().await.unwrap();
        if status.status() == StatusCode::OK && status.json::<Value>().await.unwrap()["state"] == "done" {
            break;
        }
        assert!(Instant::now() < deadline, "the bucket's event did not complete {id}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let confirmed = app.client.post(format!("{}/uploads/{id}/complete", app.base)).send().await.unwrap();
    assert_eq!(confirmed.status(), StatusCode::ACCEPTED);
    assert_eq!(key_of(&confirmed.json().await.unwrap()), key);
    app.running.stop().await;
}

common::on_each_backend!(
    a_direct_upload_skips_the_api,
    a_direct_upload_never_completed_is_swept,
    deleting_a_done_image_removes_everything,
    deleting_a_pending_image_leaves_its_job_nothing_to_write,
    only_the_uploader_or_an_admin_deletes,
    webhooks_are_signed_and_retried,
    webhooks_reach_only_allowed_addresses,
    a_webhook_survives_a_kill,
    duplicate_uploads_share_one_set_of_images,
);
