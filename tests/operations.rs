//! Operating pixbox: Prometheus metrics through an upload and its jobs, the admin address of every
//! role (the container health check), request ids and JSON logs, CORS, `pixbox jobs` (list, stats,
//! retry, on both backends) and the orphan sweep. Real servers on port 0, real `pixbox` processes.

use crate::common::{self, Backend, int, route, text};

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pixbox::config::{Config, Role};
use pixbox::jobs::{self, Failure, Job};
use pixbox::server::Running;
use pixbox::storage::{Bucket, ObjectMeta};
use reqwest::multipart::{Form, Part};
use serde_json::Value;

/// Gauges are per process and every scrape sets them: tests that read one take turns.
static SCRAPES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Routes: everything resized to 64x64, except `bad/`, whose plugin answers garbage (a permanent
/// failure); a worker ticking every second.
fn config(dir: &Path) -> Config {
    let mut config = common::config(dir);
    config.routes = vec![
        route("", "resize", &[("width", int(64)), ("height", int(64))]),
        route("bad/", &common::misbehave(), &[("mode", text("garbage"))]),
    ];
    config.worker.visibility_timeout_secs = 2;
    config.worker.max_receives = 3;
    config
}

async fn start(config: &Config, role: Role) -> Running {
    let mut config = config.clone();
    config.role = role;
    pixbox::server::start(&config).await.unwrap()
}

fn url(addr: Option<std::net::SocketAddr>) -> String {
    format!("http://{}", addr.expect("listening"))
}

async fn upload(base: &str, query: &str, name: &str, bytes: Vec<u8>) -> (u16, Value) {
    let form = Form::new().part("images", Part::bytes(bytes).file_name(name.to_string()));
    let response = reqwest::Client::new().post(format!("{base}/upload{query}")).multipart(form).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn uploaded_key(base: &str, query: &str) -> String {
    let (status, body) = upload(base, query, "p.png", common::png(&common::photo(40, 30))).await;
    assert_eq!(status, 202, "{body}");
    body["images"][0]["key"].as_str().unwrap().to_string()
}

/// Polls `/status` until the key is no longer pending.
async fn settled(base: &str, key: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let status: Value = reqwest::get(format!("{base}/status/{key}")).await.unwrap().json().await.unwrap();
        if status["state"] != "pending" || Instant::now() > deadline {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn scrape(admin: &str) -> String {
    let response = reqwest::get(format!("{admin}/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    response.text().await.unwrap()
}

/// The sum of the samples of `name` whose labels include every pair of `labels` (0 when none).
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, rest) = series.split_once('{').unwrap_or((series, ""));
            let matches = series_name == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Runs `pixbox jobs ...` configured like `config`; returns its stdout (and fails on an error).
fn jobs(config: &Config, args: &[&str]) -> String {
    let out = Command::new(common::pixbox_bin())
        .arg("jobs")
        .args(args)
        .current_dir(&config.data_dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(common::process_env(config, "all"))
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pixbox jobs {args:?} failed:\n{stdout}\n{stderr}");
    stdout.into_owned()
}

fn jobs_json(config: &Config, args: &[&str]) -> Value {
    let out = jobs(config, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Polls `jobs stats` until `want` holds (SQS's counts are approximate and settle in seconds).
fn stats_until(config: &Config, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = jobs_json(config, &["stats", "--json"]);
        if want(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "{what}: {stats}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// An upload, a job done and a job failed move the counters and histograms; the queue depth on
/// `/metrics` is the queue's.
#[tokio::test]
async fn metrics_follow_uploads_and_jobs() {
    let _turn = SCRAPES.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let (_, queue) = pixbox::backends::connect(&config).await.unwrap();
    let api = start(&config, Role::Api).await;
    let (base, admin) = (url(api.addr), url(api.admin_addr));
    let before = scrape(&admin).await;

    let good = uploaded_key(&base, "").await;
    let bad = uploaded_key(&base, "?prefix=bad/").await;
    // The queue's depths are sampled at most once a second, whatever the number of scrapes.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let after_upload = scrape(&admin).await;
    let moved =
        |name: &str, labels: &[(&str, &str)], text: &str| metric(text, name, labels) - metric(&before, name, labels);
    assert!(moved("pixbox_uploaded_images_total", &[], &after_upload) >= 2.0);
    let png_bytes = common::png(&common::photo(40, 30)).len() as f64;
    assert!(moved("pixbox_uploaded_bytes_total", &[], &after_upload) >= 2.0 * png_bytes);
    let upload_202 = [("route", "/upload"), ("method", "POST"), ("status", "202")];
    assert!(moved("pixbox_http_requests_total", &upload_202, &after_upload) >= 2.0);
    assert!(moved("pixbox_http_request_duration_seconds_count", &upload_202, &after_upload) >= 2.0);
    // Nothing has taken the jobs: both wait, as the queue itself says.
    let depth = queue.depth().await.unwrap();
    assert_eq!(depth.waiting, 2);
    assert_eq!(metric(&after_upload, "pixbox_queue_depth", &[]), depth.waiting as f64);
    assert_eq!(metric(&after_upload, "pixbox_queue_in_flight", &[]), 0.0);
    assert_eq!(metric(&after_upload, "pixbox_dead_letter_depth", &[]), 0.0);
    assert_eq!(metric(&after_upload, "pixbox_queue_up", &[]), 1.0);
    assert!(metric(&after_upload, "pixbox_queue_oldest_age_seconds", &[]) > 0.0);

    let worker = start(&config, Role::Worker).await;
    assert_eq!(settled(&base, &good, Duration::from_secs(60)).await["state"], "done");
    let failed = settled(&base, &bad, Duration::from_secs(60)).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["error"]["code"], "invalid-output", "{failed}");
    // A job is settled before its tick ends (the tick still waits up to 1 s for more messages):
    // scrape until that tick is recorded, for at most 10 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after_jobs = loop {
        let text = scrape(&url(worker.admin_addr)).await;
        if moved("pixbox_worker_tick_duration_seconds_count", &[], &text) >= 1.0 || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let done = [("outcome", "done"), ("code", "ok"), ("plugin", "resize")];
    assert!(moved("pixbox_jobs_total", &done, &after_jobs) >= 1.0, "{after_jobs}");
    let garbage = [("outcome", "failed"), ("code", "invalid-output"), ("plugin", "misbehave")];
    assert!(moved("pixbox_jobs_total", &garbage, &after_jobs) >= 1.0, "{after_jobs}");
    let resize_ok = [("plugin", "resize"), ("result", "ok")];
    assert!(moved("pixbox_sandbox_duration_seconds_count", &resize_ok, &after_jobs) >= 1.0);
    assert!(moved("pixbox_sandbox_duration_seconds_sum", &resize_ok, &after_jobs) > 0.0);
    assert!(moved("pixbox_sandbox_memory_peak_bytes_count", &[("plugin", "resize")], &after_jobs) >= 1.0);
    assert!(moved("pixbox_sandbox_memory_peak_bytes_sum", &[("plugin", "resize")], &after_jobs) > 1e6);
    let misbehave = [("plugin", "misbehave"), ("result", "invalid-output")];
    assert!(moved("pixbox_sandbox_duration_seconds_count", &misbehave, &after_jobs) >= 1.0);
    assert!(moved("pixbox_worker_tick_duration_seconds_count", &[], &after_jobs) >= 1.0);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let sampled = scrape(&url(worker.admin_addr)).await;
    assert_eq!(metric(&sampled, "pixbox_queue_depth", &[]), 0.0, "every job is settled");
    assert_eq!(queue.depth().await.unwrap().waiting, 0);

    // The public port has no /metrics: it is for operators, on the admin address.
    assert_eq!(reqwest::get(format!("{base}/metrics")).await.unwrap().status(), 404);
    worker.stop().await;
    api.stop().await;
}

/// Clients get a stable code and a short reason; what the decoder said stays in the log.
#[tokio::test]
async fn failure_messages_are_a_code_and_a_short_reason() {
    let dir = tempfile::tempdir().unwrap();
    let api = start(&config(dir.path()), Role::Api).await;
    let jpeg = common::jpeg(&common::photo(64, 48));
    let (status, body) = upload(&url(api.addr), "", "a.jpg", jpeg[..100].to_vec()).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "unreadable-image");
    assert_eq!(
        body["message"],
        "image 1 (a.jpg): the image/jpeg header cannot be read (the file is damaged or not what it claims)"
    );
    api.stop().await;
}

/// The Dockerfile's HEALTHCHECK command, run as-is against an api and a worker process: it
/// passes while each runs and fails fast once it is gone. Each role also serves /ready and
/// /metrics on the admin address, and no api route there.
#[tokio::test]
async fn container_health_check_works_for_every_role() {
    let _turn = SCRAPES.lock().await;
    let dockerfile = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Dockerfile")).unwrap();
    let check = dockerfile.split("HEALTHCHECK").nth(1).expect("the Dockerfile has a HEALTHCHECK");
    let command = check.split("CMD").nth(1).unwrap().lines().next().unwrap().trim();
    let command: Vec<String> = serde_json::from_str(command).expect("HEALTHCHECK CMD is an exec-form array");
    assert_eq!(command[0], "pixbox", "{command:?}");

    for role in ["api", "worker"] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        let port = common::free_port();
        config.admin_listen = format!("127.0.0.1:{port}");
        let env = common::process_env(&config, role);
        let health = || {
            Command::new(common::pixbox_bin())
                .args(&command[1..])
                .current_dir(dir.path())
                .env_clear()
                .envs(env.clone())
                .output()
                .unwrap()
        };
        let mut server = Command::new(common::pixbox_bin())
            .arg("serve")
            .current_dir(dir.path())
            .env_clear()
            .envs(env.clone())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let passed = loop {
            let out = health();
            if out.status.success() {
                break out;
            }
            assert!(Instant::now() < deadline, "{role}: the health check never passed: {out:?}");
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(String::from_utf8_lossy(&passed.stdout).contains("up"), "{passed:?}");

        let admin = format!("http://127.0.0.1:{port}");
        assert_eq!(reqwest::get(format!("{admin}/ready")).await.unwrap().status(), 200, "{role}");
        let metrics = scrape(&admin).await;
        assert!(metrics.contains("pixbox_queue_depth"), "{role}: {metrics}");
        assert_eq!(reqwest::get(format!("{admin}/upload")).await.unwrap().status(), 404, "{role}");

        server.kill().unwrap();
        server.wait().unwrap();
        let started = Instant::now();
        let failed = health();
        assert!(!failed.status.success(), "{role}: the check passed with nothing running");
        assert!(started.elapsed() < Duration::from_secs(5), "{role}: the failing check took {:?}", started.elapsed());
    }
}

/// Every answer carries a request id (the client's when sane, a new one otherwise), and with
/// `PIXBOX_LOG_FORMAT=json` every log line is a JSON object, the request's lines naming its id.
#[tokio::test]
async fn request_ids_reach_answers_and_json_logs() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    let port = common::free_port();
    config.listen = format!("127.0.0.1:{port}");
    let log = dir.path().join("pixbox.log");
    let mut command = Command::new(common::pixbox_bin());
    command.arg("serve").current_dir(dir.path()).env_clear().envs(common::process_env(&config, "api"));
    let mut server =
        common::Served::start(command.env("PIXBOX_LOG_FORMAT", "json"), port, &log, Duration::from_secs(30)).await;
    let base = server.base.clone();
    let client = reqwest::Client::new();

    let id_of = |response: &reqwest::Response| response.headers()["x-request-id"].to_str().unwrap().to_string();
    let mine =
        client.get(format!("{base}/status/nope.png")).header("x-request-id", "trace-me-123").send().await.unwrap();
    assert_eq!(mine.status(), 404);
    assert_eq!(id_of(&mine), "trace-me-123");
    let new = client.get(format!("{base}/health")).send().await.unwrap();
    let generated = id_of(&new);
    assert!(generated.len() == 32 && generated.bytes().all(|b| b.is_ascii_hexdigit()), "{generated}");
    let insane = client.get(format!("{base}/health")).header("x-request-id", "a b\tc").send().await.unwrap();
    assert_ne!(id_of(&insane), "a b\tc", "an id with spaces is replaced");
    // Errors made before any handler (an unknown route) carry one too.
    let unknown = client.get(format!("{base}/nowhere")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(id_of(&unknown).len(), 32);

    server.kill();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 2, "{text}");
    let answered = lines
        .iter()
        .find(|l| {
            l["message"] == "answered"
                && l["spans"].as_array().is_some_and(|s| s.iter().any(|s| s["request_id"] == "trace-me-123"))
        })
        .unwrap_or_else(|| panic!("no log line names the request id: {text}"));
    assert_eq!(answered["status"], 404, "{answered}");
    assert_eq!(answered["level"], "INFO");
}

/// CORS: no headers by default; with `cors_origins` set, preflights and answers name the allowed
/// origin only; an origin that is not one is refused at start.
#[tokio::test]
async fn cors_is_off_by_default_and_answers_only_configured_origins() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let preflight = async |base: &str, origin: &str| {
        client
            .request(reqwest::Method::OPTIONS, format!("{base}/upload"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization")
            .send()
            .await
            .unwrap()
    };
    let allowed = "https://app.example.com";

    let closed = start(&config(dir.path()), Role::Api).await;
    let answer = preflight(&url(closed.addr), allowed).await;
    assert!(answer.headers().get("access-control-allow-origin").is_none(), "{:?}", answer.headers());
    closed.stop().await;

    let mut open = config(dir.path());
    open.cors_origins = format!("{allowed} https://admin.example.com");
    let open = start(&open, Role::Api).await;
    let base = url(open.addr);
    let answer = preflight(&base, allowed).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["access-control-allow-origin"], allowed);
    let methods = answer.headers()["access-control-allow-methods"].to_str().unwrap().to_string();
    assert!(methods.contains("POST"), "{methods}");
    let other = preflight(&base, "https://evil.example.com").await;
    assert!(other.headers().get("access-control-allow-origin").is_none(), "{:?}", other.headers());
    let get = client.get(format!("{base}/health")).header("origin", allowed).send().await.unwrap();
    assert_eq!(get.headers()["access-control-allow-origin"], allowed);
    let exposed = get.headers()["access-control-expose-headers"].to_str().unwrap().to_lowercase();
    assert!(exposed.contains("x-request-id"), "{exposed}");
    open.stop().await;

    let env = vec![("PIXBOX_CORS_ORIGINS".to_string(), "app.example.com".to_string())];
    let err = Config::load(None, env, toml::Table::new()).unwrap_err().to_string();
    assert!(err.contains("cors_origins") && err.contains("app.example.com"), "{err}");
}

/// A job that failed for good is listed and counted; once its cause is fixed (here: the worker's
/// pixel limit was too low), `pixbox jobs retry KEY` turns it into a done one.
async fn failed_job_is_retried_after_its_cause_is_fixed(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    let Some(()) = backend.configure(&mut config, "failed_job_is_retried_after_its_cause_is_fixed") else {
        return;
    };
    let api = start(&config, Role::Api).await;
    let base = url(api.addr);
    let key = uploaded_key(&base, "").await;

    let mut strict = config.clone();
    strict.limits.max_pixels = 100;
    let worker = start(&strict, Role::Worker).await;
    let failed = settled(&base, &key, Duration::from_secs(60)).await;
    assert_eq!(failed["error"]["code"], "too-many-pixels", "{failed}");
    worker.stop().await;

    let list = jobs_json(&config, &["list", "--failed", "--json"]);
    let entry = list.as_array().unwrap().iter().find(|j| j["key"] == key.as_str()).expect("listed");
    assert_eq!(entry["code"], "too-many-pixels");
    assert_eq!(entry["original_kept"], true);
    assert!(entry["attempts"].as_u64().unwrap() >= 1);
    let table = jobs(&config, &["list", "--failed"]);
    assert!(table.contains(&key) && table.contains("too-many-pixels"), "{table}");
    let waiting = jobs_json(&config, &["list", "--json"]);
    assert!(waiting.as_array().unwrap().iter().all(|j| j["key"] != key.as_str()), "failed is not waiting: {waiting}");
    stats_until(&config, "one failed, nothing queued", |s| {
        s["failed"] == 1 && s["queue"]["waiting"] == 0 && s["queue"]["in_flight"] == 0
    });
    assert!(jobs(&config, &["stats"]).contains("failed jobs: 1"));

    // The fix: a worker with the normal limits; then the retry.
    let worker = start(&config, Role::Worker).await;
    let out = jobs(&config, &["retry", &key]);
    assert!(out.contains("queued again"), "{out}");
    let done = settled(&base, &key, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "done", "{done}");
    let image = reqwest::get(format!("{base}/download/{key}")).await.unwrap();
    assert_eq!(image.status(), 200);
    stats_until(&config, "nothing failed", |s| s["failed"] == 0);
    assert!(jobs(&config, &["retry", &key]).contains("already done"));
    assert!(jobs(&config, &["retry", "never/uploaded.png"]).contains("not failed"));
    worker.stop().await;
    api.stop().await;
}

/// A job whose worker died on its last allowed attempt lands in the dead-letter queue and is
/// reported failed (`gave-up`); `pixbox jobs retry --all` re-drives it and it is done.
async fn dead_lettered_job_is_redriven(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.worker.max_receives = 1;
    let Some(()) = backend.configure(&mut config, "dead_lettered_job_is_redriven") else { return };
    let (_, queue) = pixbox::backends::connect(&config).await.unwrap();
    let api = start(&config, Role::Api).await;
    let base = url(api.addr);
    let key = uploaded_key(&base, "").await;

    // A worker takes the job and dies: the message is never deleted, its one receive is spent.
    let taken =
        pixbox::queue::conformance::receive_n(&*queue, 1, Duration::from_secs(1), Duration::from_secs(10)).await;
    assert_eq!(taken.len(), 1);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let worker = start(&config, Role::Worker).await;
    let failed = settled(&base, &key, Duration::from_secs(60)).await;
    assert_eq!(failed["error"]["code"], "gave-up", "{failed}");
    worker.stop().await;
    stats_until(&config, "one dead letter", |s| s["queue"]["dead"] == 1 && s["queue"]["waiting"] == 0);
    let list = jobs(&config, &["list", "--failed"]);
    assert!(list.contains(&key) && list.contains("gave-up"), "{list}");

    let out = jobs(&config, &["retry", "--all"]);
    assert!(out.contains(&key) && out.contains("taken off the dead-letter queue"), "{out}");
    let worker = start(&config, Role::Worker).await;
    let done = settled(&base, &key, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "done", "{done}");
    stats_until(&config, "dead-letter queue empty", |s| s["queue"]["dead"] == 0 && s["failed"] == 0);
    assert!(jobs(&config, &["retry", "--all"]).contains("nothing to retry"));
    worker.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn failed_job_is_retried_after_its_cause_is_fixed_embedded() {
    failed_job_is_retried_after_its_cause_is_fixed(Backend::Embedded).await;
}

#[tokio::test]
async fn failed_job_is_retried_after_its_cause_is_fixed_aws() {
    failed_job_is_retried_after_its_cause_is_fixed(Backend::Aws).await;
}

#[tokio::test]
async fn dead_lettered_job_is_redriven_embedded() {
    dead_lettered_job_is_redriven(Backend::Embedded).await;
}

#[tokio::test]
async fn dead_lettered_job_is_redriven_aws() {
    dead_lettered_job_is_redriven(Backend::Aws).await;
}

/// On the embedded backend, the worker removes originals and upload records that nothing refers
/// to once they are older than `orphan_age_secs`; younger ones, failed jobs' originals (kept for
/// a retry) and originals whose job is still queued stay.
#[tokio::test]
async fn orphans_older_than_the_age_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    // The shortest age allowed with these limits: above the longest upload + the visibility timeout.
    config.limits.request_timeout_secs = 30;
    config.worker.visibility_timeout_secs = 20;
    config.worker.orphan_age_secs = 60;
    let (store, queue) = pixbox::backends::connect(&config).await.unwrap();
    let put = async |bucket: Bucket, key: &str, body: &[u8]| {
        let meta = ObjectMeta { content_type: "image/png".into(), metadata: Default::default() };
        store.put(bucket, key, body.to_vec().into(), &meta).await.unwrap();
    };
    let png = common::png(&common::photo(8, 8));
    put(Bucket::Temp, "orphan.png", &png).await;
    put(Bucket::Temp, "young.png", &png).await;
    put(Bucket::Temp, "failed.png", &png).await;
    let failure = Failure { code: "trap".into(), message: "the plugin crashed".into(), plugin: None, attempts: 3 };
    jobs::record_failure(&*store, "failed.png", &failure).await.unwrap();
    // A job another worker is busy with: in flight for a minute.
    put(Bucket::Temp, "busy.png", &png).await;
    queue.send_batch(&[Job::new("busy.png").to_body()]).await.unwrap();
    assert_eq!(queue.receive(1, Duration::ZERO, Duration::from_secs(60)).await.unwrap().len(), 1);
    jobs::commit_upload(&*store, "busy-upload", &["busy.png".into()]).await.unwrap();
    jobs::commit_upload(&*store, "dropped-upload", &["long-gone.png".into()]).await.unwrap();
    // Everything but young.png was written two minutes ago (the filesystem store keeps an
    // object in a file named after its key's last segment, with `~` appended).
    let two_minutes_ago = std::time::SystemTime::now() - Duration::from_secs(120);
    let temp_dir = dir.path().join("buckets").join(&config.temp_bucket);
    for name in ["orphan.png", "failed.png", "busy.png", "busy-upload", "dropped-upload"] {
        let path = find_file(&temp_dir, &format!("{name}~")).unwrap_or_else(|| panic!("no file for {name}"));
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(two_minutes_ago).unwrap();
    }

    let worker = start(&config, Role::Worker).await;
    let temp = async || store.list(Bucket::Temp, "").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while temp().await.contains(&"orphan.png".to_string()) {
        assert!(Instant::now() < deadline, "the orphan was not removed: {:?}", temp().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = temp().await;
    for kept in ["young.png", "failed.png", "busy.png", ".pixbox/uploads/busy-upload"] {
        assert!(left.contains(&kept.to_string()), "{kept} was removed: {left:?}");
    }
    assert!(!left.contains(&".pixbox/uploads/dropped-upload".to_string()), "{left:?}");
    worker.stop().await;
}

/// `pixbox jobs retry` racing the orphan sweep: the sweep is made to run at the two moments where
/// the original could look unreferenced (as the retry's message is sent, and as the worker that
/// takes it removes the failure record), and neither removes it; the retried job is then done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_racing_the_orphan_sweep_keeps_the_original() {
    use common::memory::{Faulty, Op};
    use pixbox::queue::{EmbeddedQueue, JobQueue};
    use pixbox::storage::{BlobStore, FsStore};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let store =
        Arc::new(Faulty::new(FsStore::open(dir.path(), &config.temp_bucket, &config.permanent_bucket, true).unwrap()));
    let queue = Arc::new(Faulty::new(EmbeddedQueue::open(&dir.path().join("queue.db"), 5).unwrap()));
    let meta = ObjectMeta { content_type: "image/png".into(), metadata: Default::default() };
    store.put(Bucket::Temp, "failed.png", common::png(&common::photo(64, 48)).into(), &meta).await.unwrap();
    let failure = Failure { code: "trap".into(), message: "the plugin crashed".into(), plugin: None, attempts: 3 };
    jobs::record_failure(&*store, "failed.png", &failure).await.unwrap();
    let path = find_file(&dir.path().join("buckets").join(&config.temp_bucket), "failed.png~").unwrap();
    let long_ago = std::time::SystemTime::now() - Duration::from_secs(600);
    std::fs::File::options().write(true).open(&path).unwrap().set_modified(long_ago).unwrap();

    let sandbox = common::sandbox(Default::default());
    let worker = common::worker(store.clone(), queue.clone(), sandbox, &[], &config).await;
    let swept = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sweep_before = |op: Op| {
        let (worker, swept) = (worker.clone(), swept.clone());
        let hook: common::memory::Hook = Box::new(move || {
            Box::pin(async move {
                let removed = worker.sweep_orphans(Duration::from_secs(60)).await.unwrap();
                swept.lock().unwrap().push((op, removed));
            })
        });
        hook
    };
    queue.before(Op::Send, sweep_before(Op::Send));
    store.before(Op::Delete, sweep_before(Op::Delete));

    let retried = pixbox::operations::retry(&*store, &*queue, "failed.png").await.unwrap();
    assert!(matches!(retried, pixbox::operations::Retry::Queued { .. }), "{retried:?}");
    assert!(jobs::found(store.head(Bucket::Temp, "failed.png").await).unwrap().is_some());
    // The worker takes the retry: it removes the failure record (the sweep runs just before),
    // runs the job, and it ends done.
    let delivery = queue.receive(1, Duration::from_secs(1), Duration::from_secs(30)).await.unwrap().remove(0);
    let outcome = worker.process(&delivery).await;
    assert!(matches!(outcome, pixbox::worker::Outcome::Done { .. }), "{outcome:?}");
    assert_eq!(*swept.lock().unwrap(), [(Op::Send, 0), (Op::Delete, 0)], "a sweep removed the original");
    assert!(jobs::failure(&*store, "failed.png").await.unwrap().is_none());
}

/// The one file under `dir` named `name`.
fn find_file(dir: &Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
    }
    None
}
