//! Safe on an open network: API keys and scopes, signed read URLs and the refusal to start open
//! off loopback, against the real app on port 0 and the real `pixbox` binary.

use crate::common;

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use pixbox::auth::{AuthSettings, Reads, Scope};
use pixbox::config::{Config, Role};
use pixbox::server::Running;
use pixbox::storage::{BlobStore, Bucket};
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "a-test-signing-secret-of-32-chars-or-more";

/// An api-only app with keys configured as `reads` says, on the embedded backend.
struct App {
    running: Running,
    base: String,
    client: reqwest::Client,
    store: std::sync::Arc<dyn BlobStore>,
    _dir: tempfile::TempDir,
}

impl App {
    async fn start(keys: &[&str], reads: Reads) -> App {
        App::start_with(keys, reads, |_| {}).await
    }

    async fn start_with(keys: &[&str], reads: Reads, adjust: impl FnOnce(&mut Config)) -> App {
        let dir = tempfile::tempdir().unwrap();
        let mut config = common::config(dir.path());
        config.role = Role::Api;
        config.auth =
            AuthSettings { keys: keys.join(" "), reads, signing_secret: SECRET.into(), ..AuthSettings::default() };
        adjust(&mut config);
        let (store, _) = pixbox::backends::connect(&config).await.unwrap();
        let running = pixbox::server::start(&config).await.unwrap();
        let base = format!("http://{}", running.addr.unwrap());
        App { running, base, client: reqwest::Client::new(), store, _dir: dir }
    }

    /// `host:port` of the app, for raw connections.
    fn addr(&self) -> String {
        self.running.addr.unwrap().to_string()
    }

    async fn upload(&self, key: Option<&str>) -> reqwest::Response {
        let image = common::png(&common::photo(16, 12));
        let form = Form::new().part("images", Part::bytes(image).file_name("a.png").mime_str("image/png").unwrap());
        let mut request = self.client.post(format!("{}/upload", self.base)).multipart(form);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send().await.unwrap()
    }

    async fn get(&self, url: &str, key: Option<&str>) -> reqwest::Response {
        let mut request = self.client.get(format!("{}{url}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send().await.unwrap()
    }

    async fn originals(&self) -> usize {
        self.store.list(Bucket::Temp, "").await.unwrap().into_iter().filter(|k| !k.starts_with(".pixbox/")).count()
    }
}

async fn error_code(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    (status, body["code"].as_str().unwrap_or_default().to_string())
}

#[tokio::test]
async fn uploads_and_reads_need_a_key_with_the_scope() {
    let (uploader, upload_entry) = pixbox::auth::new_key(&[Scope::Upload]);
    let (reader, read_entry) = pixbox::auth::new_key(&[Scope::Read]);
    let app = App::start(&[&upload_entry, &read_entry], Reads::Key).await;

    let anonymous = app.upload(None).await;
    assert_eq!(anonymous.headers().get("www-authenticate").unwrap(), "Bearer");
    assert_eq!(error_code(anonymous).await, (StatusCode::UNAUTHORIZED, "unauthorized".into()));
    assert_eq!(
        error_code(app.upload(Some("pbx_not-a-key")).await).await,
        (StatusCode::UNAUTHORIZED, "unauthorized".into())
    );
    assert_eq!(error_code(app.upload(Some(&reader)).await).await, (StatusCode::FORBIDDEN, "forbidden".into()));
    assert_eq!(app.originals().await, 0, "a refused upload stores nothing");

    let accepted = app.upload(Some(&uploader)).await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let body: Value = accepted.json().await.unwrap();
    let status_url = body["images"][0]["status_url"].as_str().unwrap().to_string();
    assert!(!status_url.contains("sig="), "reads by key are not signed: {status_url}");
    assert_eq!(app.originals().await, 1);

    assert_eq!(error_code(app.get(&status_url, None).await).await, (StatusCode::UNAUTHORIZED, "unauthorized".into()));
    assert_eq!(
        error_code(app.get(&status_url, Some(&uploader)).await).await,
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    let read = app.get(&status_url, Some(&reader)).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(read.json::<Value>().await.unwrap()["state"], "pending");
    // Health and the API description stay open for probes and clients.
    assert_eq!(app.get("/health", None).await.status(), StatusCode::OK);
    assert_eq!(app.get("/openapi.json", None).await.status(), StatusCode::OK);
    app.running.stop().await;
}

fn sign(kind: &str, key: &str, expires: u64) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{kind}\n{key}\n{expires}").as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn signed_urls_are_checked_for_tampering_and_expiry() {
    let (uploader, entry) = pixbox::auth::new_key(&[Scope::Upload]);
    let app = App::start(&[&entry], Reads::Signed).await;
    let body: Value = app.upload(Some(&uploader)).await.json().await.unwrap();
    let image = &body["images"][0];
    let key = image["key"].as_str().unwrap();
    let (download, status) = (image["download_url"].as_str().unwrap(), image["status_url"].as_str().unwrap());
    assert!(download.contains("expires=") && download.contains("&sig="), "{download}");

    // As returned: readable without a key (pending, so 202 from /download, 200 from /status).
    assert_eq!(app.get(download, None).await.status(), StatusCode::ACCEPTED);
    let answer: Value = app.get(status, None).await.json().await.unwrap();
    assert_eq!(answer["state"], "pending");
    assert!(answer["download_url"].as_str().unwrap().contains("sig="), "status hands out signed URLs too");

    // The same signature on the other route, another key, an edited expiry or signature: refused.
    let (path, query) = download.split_once('?').unwrap();
    let other_route = format!("{}?{query}", path.replacen("/download/", "/status/", 1));
    let other_key = format!("{}?{query}", path.replace(".png", ".jpg"));
    let expires: u64 = query.split('&').find_map(|p| p.strip_prefix("expires=")).unwrap().parse().unwrap();
    let later = download.replace(&format!("expires={expires}"), &format!("expires={}", expires + 3600));
    let flipped = {
        let sig = query.split('&').find_map(|p| p.strip_prefix("sig=")).unwrap();
        let mut chars: Vec<char> = sig.chars().collect();
        chars[0] = if chars[0] == 'A' { 'B' } else { 'A' };
        download.replace(sig, &chars.into_iter().collect::<String>())
    };
    for url in [&other_route, &other_key, &later, &flipped] {
        assert_eq!(
            error_code(app.get(url, None).await).await,
            (StatusCode::FORBIDDEN, "invalid-signature".into()),
            "{url}"
        );
    }
    // A genuine signature whose time is up.
    let past = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() - 60;
    let expired = format!("{path}?expires={past}&sig={}", sign("download", key, past));
    assert_eq!(error_code(app.get(&expired, None).await).await, (StatusCode::FORBIDDEN, "signature-expired".into()));
    // No signature at all: a key is needed.
    assert_eq!(error_code(app.get(path, None).await).await, (StatusCode::UNAUTHORIZED, "unauthorized".into()));
    app.running.stop().await;
}

/// The binary, as an operator would run it: no key on a public address stops it before it binds,
/// with the way out in the message; `pixbox keys new` prints a key the service then accepts.
#[tokio::test]
async fn an_open_service_off_loopback_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(common::pixbox_bin())
        .env_clear()
        .args(["serve", "--role", "api", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    for hint in ["0.0.0.0:0", "pixbox keys new", "PIXBOX_AUTH_KEYS", "mode = \"none\""] {
        assert!(stderr.contains(hint), "the refusal should mention {hint}: {stderr}");
    }

    let keys =
        Command::new(common::pixbox_bin()).env_clear().args(["keys", "new", "--scopes", "upload"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&keys.stdout);
    let lines: Vec<&str> = stdout.lines().map(str::trim).collect();
    let key = lines.iter().find(|l| l.starts_with("pbx_")).unwrap();
    let entry = lines.iter().find(|l| l.starts_with("upload:")).unwrap();
    let app = App::start(&[entry], Reads::Public).await;
    assert_eq!(app.upload(Some(key)).await.status(), StatusCode::ACCEPTED);
    assert_eq!(app.upload(None).await.status(), StatusCode::UNAUTHORIZED);
    app.running.stop().await;
}

/// Reads until the server closes the connection; returns what it sent and when it closed.
async fn until_closed(stream: &mut TcpStream, started: Instant, limit: Duration) -> (String, Duration) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&seen).into_owned(), started.elapsed()),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server kept the connection open for {limit:?}"),
        }
    }
}

/// Slowloris: clients that trickle their headers are disconnected at the header timeout, with
/// next to no memory, while a normal client is served at once.
#[tokio::test]
async fn clients_trickling_headers_are_cut_off_at_the_header_timeout() {
    let _serial = common::RSS_SERIAL.lock().await;
    let app = App::start_with(&[], Reads::Public, |c| c.limits.header_read_timeout_secs = 1).await;
    let addr = app.addr();
    let before = common::rss_bytes();
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        slow.push(stream);
    }
    // Keep trickling: one header byte per connection every 100 ms, for up to 3 s.
    let trickle = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut open: Vec<bool> = vec![true; slow.len()];
        while Instant::now() < deadline && open.iter().any(|o| *o) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            for (stream, open) in slow.iter_mut().zip(open.iter_mut()) {
                if *open && stream.write_all(b"x").await.is_err() {
                    *open = false;
                }
            }
        }
        let mut ended = Vec::new();
        for mut stream in slow {
            ended.push(until_closed(&mut stream, started, Duration::from_secs(5)).await);
        }
        ended
    });
    // A normal request meanwhile: answered at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    assert_eq!(app.get("/health", None).await.status(), StatusCode::OK);
    assert!(asked.elapsed() < Duration::from_millis(500), "a normal client waited {:?}", asked.elapsed());
    let peak = common::rss_bytes();

    for (answer, after) in trickle.await.unwrap() {
        assert!(after >= Duration::from_millis(900) && after < Duration::from_millis(2500), "cut off after {after:?}");
        // Closed without an answer, or with 408: never a processed request.
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    assert!(peak.saturating_sub(before) < 16 << 20, "50 slow clients cost {} MiB", (peak - before) >> 20);
    app.running.stop().await;
}

/// One byte and stall, on `max_connections + 100` connections from one address, a third of them
/// whole HTTP/2 prefaces: the address's share (`max_connections_per_address`) is held until the
/// header timeout and closed then, the rest are closed at accept, and another address is served
/// throughout (`/health`, an upload, both over HTTP/1.1 and HTTP/2), with next to no memory.
#[tokio::test]
async fn one_byte_connections_and_idle_http2_prefaces_never_starve_another_client() {
    let _serial = common::RSS_SERIAL.lock().await;
    const MAX: u32 = 48;
    const PER_ADDRESS: u32 = 16;
    // Long enough that all the connections are made before the first share is released.
    let header_timeout = Duration::from_secs(2);
    let app = App::start_with(&[], Reads::Public, |c| {
        c.limits.header_read_timeout_secs = header_timeout.as_secs();
        c.limits.max_connections = MAX;
        c.limits.max_connections_per_address = PER_ADDRESS;
        c.limits.http2 = true;
    })
    .await;
    let addr = app.addr();
    let before = common::rss_bytes();
    let mut stalled = Vec::new();
    for i in 0..MAX + 100 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        let sends: &[u8] = if i % 3 == 0 { b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" } else { b"P" };
        // A connection closed at accept may refuse the byte: that is the point.
        let _ = stream.write_all(sends).await;
        stalled.push((stream, Instant::now()));
    }
    // Each watched on its own, so each close is timed when it happens.
    let closing =
        tokio::spawn(futures::future::join_all(stalled.into_iter().map(|(mut stream, connected)| async move {
            until_closed(&mut stream, connected, Duration::from_secs(6)).await.1
        })));

    // Another address (the whole 127/8 is loopback): served at once, over both protocols.
    let other = |h2: bool| {
        let builder = reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, 2]));
        if h2 { builder.http2_prior_knowledge() } else { builder }.build().unwrap()
    };
    for client in [other(false), other(true)] {
        let asked = Instant::now();
        assert_eq!(client.get(format!("{}/health", app.base)).send().await.unwrap().status(), StatusCode::OK);
        let image = common::png(&common::photo(16, 12));
        let form = Form::new().part("images", Part::bytes(image).file_name("a.png").mime_str("image/png").unwrap());
        let upload = client.post(format!("{}/upload", app.base)).multipart(form).send().await.unwrap();
        assert_eq!(upload.status(), StatusCode::ACCEPTED);
        assert!(asked.elapsed() < Duration::from_secs(1), "another client waited {:?}", asked.elapsed());
    }
    let peak = common::rss_bytes();

    let ended = closing.await.unwrap();
    let held = ended.iter().filter(|after| **after >= header_timeout - Duration::from_millis(100)).count();
    assert_eq!(held, PER_ADDRESS as usize, "the address's share is held to the header timeout: {ended:?}");
    let slowest = ended.iter().max().unwrap();
    assert!(*slowest <= header_timeout + Duration::from_secs(1), "one stayed open for {slowest:?}");
    assert!(
        peak.saturating_sub(before) < 16 << 20,
        "{} stalled connections cost {} MiB",
        MAX + 100,
        (peak - before) >> 20
    );
    // The mechanism, from the server's own count (other tests share the recorder: at least).
    let metrics = reqwest::get(format!("http://{}/metrics", app.running.admin_addr.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused = |reason: &str| -> f64 {
        let prefix = format!("pixbox_connections_refused_total{{reason=\"{reason}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0.0, |n| n.parse().unwrap())
    };
    assert!(refused("per-address") >= f64::from(MAX + 100 - PER_ADDRESS), "{metrics}");
    assert!(refused("header-timeout") >= f64::from(PER_ADDRESS), "{metrics}");
    app.running.stop().await;
}

/// After a request, an idle HTTP/1.1 connection stays for the keep-alive timeout (not the shorter
/// header timeout), and is closed then; a later head that begins and stalls has the header timeout.
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_keep_alive_timeout() {
    let app = App::start_with(&[], Reads::Public, |c| {
        c.limits.header_read_timeout_secs = 1;
        c.limits.keep_alive_timeout_secs = 3;
    })
    .await;
    let mut stream = TcpStream::connect(app.addr()).await.unwrap();
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let answered = Instant::now();
    let (_, after) = until_closed(&mut stream, answered, Duration::from_secs(6)).await;
    assert!(after >= Duration::from_millis(2_900), "closed after {after:?}, before the keep-alive timeout");
    assert!(after <= Duration::from_secs(4), "still open after {after:?}");

    // The head of a later request has the header timeout from its first byte, not the keep-alive.
    let mut stream = TcpStream::connect(app.addr()).await.unwrap();
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    stream.read_exact(&mut head).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stream.write_all(b"G").await.unwrap();
    let began = Instant::now();
    let (_, after) = until_closed(&mut stream, began, Duration::from_secs(6)).await;
    assert!(after >= Duration::from_millis(900), "a begun head was cut after {after:?}");
    assert!(after <= Duration::from_millis(2_000), "a begun head stalled for {after:?}");
    app.running.stop().await;
}

/// Image keys are unguessable: 128 random bits after the route prefix, as 32 hex digits, and two
/// keys of one upload share no more than chance gives (a UUIDv7's shared timestamp would be 12
/// hex digits; 8 shared by chance is a 1 in 4 billion event).
#[tokio::test]
async fn image_keys_carry_128_random_bits_and_no_time() {
    let app = App::start(&[], Reads::Public).await;
    let image = || Part::bytes(common::png(&common::photo(16, 12))).file_name("a.png").mime_str("image/png").unwrap();
    let form = Form::new().part("images", image()).part("images", image()).part("images", image());
    let response = app.client.post(format!("{}/upload?prefix=p/", app.base)).multipart(form).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    let ids: Vec<String> = body["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let key = i["key"].as_str().unwrap();
            let id = key.strip_prefix("p/").and_then(|k| k.strip_suffix(".png")).unwrap_or_else(|| panic!("{key}"));
            assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
            id.to_string()
        })
        .collect();
    for (i, a) in ids.iter().enumerate() {
        for b in &ids[i + 1..] {
            let shared = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
            assert!(shared < 8, "{a} and {b} share {shared} leading digits");
        }
    }
    app.running.stop().await;
}

/// A part header trickled towards 8 MiB (1 KiB every 20 ms) is refused within a second of its
/// 8 KiB-th byte, with next to no memory: the guard in front of the parser counts as it goes.
#[tokio::test]
async fn a_part_header_trickled_past_8_kib_is_refused_at_once() {
    let _serial = common::RSS_SERIAL.lock().await;
    let app = App::start(&[], Reads::Public).await;
    let stream = TcpStream::connect(app.addr()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=XyZ\r\n\
         Content-Length: {}\r\n\r\n",
        9 << 20
    );
    writer.write_all(head.as_bytes()).await.unwrap();
    let start = b"--XyZ\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.png\"\r\nX-Pad: ";
    writer.write_all(start).await.unwrap();
    let before = common::rss_bytes();
    let answer = tokio::spawn(async move {
        let mut seen = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), reader.read_to_end(&mut seen)).await;
        (String::from_utf8_lossy(&seen).into_owned(), Instant::now())
    });
    let mut header_bytes = start.len() - "--XyZ".len(); // the part's headers: after the boundary
    let mut past_limit = None;
    while header_bytes < 8 << 20 && !answer.is_finished() {
        if writer.write_all(&[b'a'; 1024]).await.is_err() {
            break;
        }
        header_bytes += 1024;
        if header_bytes > 8 << 10 && past_limit.is_none() {
            past_limit = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (answer, answered) = answer.await.unwrap();
    let past_limit = past_limit.expect("the header passed 8 KiB");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("part-header-too-large"), "{answer}");
    let after = answered.saturating_duration_since(past_limit);
    assert!(after < Duration::from_secs(1), "refused {after:?} after the 8 KiB-th byte ({header_bytes} bytes sent)");
    let grown = common::rss_bytes().saturating_sub(before);
    assert!(grown < 16 << 20, "the trickled header cost {} MiB", grown >> 20);
    app.running.stop().await;
}

#[tokio::test]
async fn a_burst_over_the_rate_gets_429_with_retry_after() {
    let (uploader, entry) = pixbox::auth::new_key(&[Scope::Upload]);
    let app = App::start_with(&[&entry], Reads::Public, |c| {
        c.limits.rate_per_second = 1;
        c.limits.rate_burst = 3;
    })
    .await;
    // Three within the burst (the image key is unknown: 404), the fourth refused.
    for _ in 0..3 {
        assert_eq!(app.get("/status/a.jpg", None).await.status(), StatusCode::NOT_FOUND);
    }
    let asked = Instant::now();
    let refused = app.get("/status/a.jpg", None).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(asked.elapsed() < Duration::from_millis(200), "refused only after {:?}", asked.elapsed());
    let retry: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After: {retry}");
    assert_eq!(error_code(refused).await.1, "rate-limited");
    // Probes are never limited; a key has its own bucket.
    assert_eq!(app.get("/health", None).await.status(), StatusCode::OK);
    assert_eq!(app.upload(Some(&uploader)).await.status(), StatusCode::ACCEPTED);
    // After Retry-After the address may ask again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(app.get("/status/a.jpg", None).await.status(), StatusCode::NOT_FOUND);
    app.running.stop().await;
}

/// Sends an upload's headers and the start of its body, then stalls.
async fn stalled_upload(addr: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n\
                Content-Length: 100000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let part = b"--b\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.png\"\r\n\r\n\x89PNG";
    stream.write_all(part).await.unwrap();
    stream
}

#[tokio::test]
async fn uploads_over_the_cap_are_refused_and_stalled_bodies_time_out() {
    let _serial = common::RSS_SERIAL.lock().await;
    let app = App::start_with(&[], Reads::Public, |c| {
        c.limits.max_concurrent_uploads = 1;
        c.limits.body_idle_timeout_secs = 1;
    })
    .await;
    let addr = app.addr();
    let before = common::rss_bytes();
    let started = Instant::now();
    let mut stalled = stalled_upload(&addr).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The only upload slot is taken by the stalled body.
    let busy = app.upload(None).await;
    assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(busy.headers()["retry-after"], "1");
    assert_eq!(error_code(busy).await.1, "too-busy");
    // The stalled body ends at the idle timeout, with 408, which frees the slot.
    let (answer, after) = until_closed(&mut stalled, started, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body-timeout"), "{answer}");
    assert!(after >= Duration::from_millis(900) && after < Duration::from_millis(2500), "ended after {after:?}");
    let grew = common::rss_bytes().saturating_sub(before);
    assert!(grew < 16 << 20, "a stalled upload and a refused one cost {} MiB", grew >> 20);
    assert_eq!(app.upload(None).await.status(), StatusCode::ACCEPTED);
    assert_eq!(app.originals().await, 1, "the stalled upload stored nothing");
    app.running.stop().await;
}

#[tokio::test]
async fn a_wrong_method_is_a_json_405() {
    let app = App::start(&[], Reads::Public).await;
    let response = app.client.delete(format!("{}/download/a.jpg", app.base)).send().await.unwrap();
    assert_eq!(error_code(response).await, (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed".into()));
    let response = app.get("/upload", None).await;
    assert_eq!(error_code(response).await, (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed".into()));
    app.running.stop().await;
}

/// `max_connections`: with the cap taken by idle connections a new client waits until the header
/// timeout frees a slot; one below the cap, it is served at once.
#[tokio::test]
async fn connections_over_the_cap_wait_for_a_free_slot() {
    let _serial = common::RSS_SERIAL.lock().await;
    let app = App::start_with(&[], Reads::Public, |c| {
        c.limits.max_connections = 2;
        c.limits.header_read_timeout_secs = 2;
    })
    .await;
    let addr = app.addr();
    // Each request on a connection of its own, so the pool cannot hide the cap.
    let fresh = || reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();

    let one_idle = TcpStream::connect(&addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let asked = Instant::now();
    assert_eq!(fresh().get(format!("{}/health", app.base)).send().await.unwrap().status(), StatusCode::OK);
    assert!(asked.elapsed() < Duration::from_millis(500), "below the cap: waited {:?}", asked.elapsed());
    drop(one_idle);

    let before = common::rss_bytes();
    let idle = [TcpStream::connect(&addr).await.unwrap(), TcpStream::connect(&addr).await.unwrap()];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let asked = Instant::now();
    assert_eq!(fresh().get(format!("{}/health", app.base)).send().await.unwrap().status(), StatusCode::OK);
    let waited = asked.elapsed();
    assert!(waited >= Duration::from_millis(1500) && waited < Duration::from_secs(4), "at the cap: waited {waited:?}");
    let grew = common::rss_bytes().saturating_sub(before);
    assert!(grew < 16 << 20, "connections at the cap cost {} MiB", grew >> 20);
    drop(idle);
    app.running.stop().await;
}

/// Sends a refused (keyless) upload of `len` body bytes, `chunk` at a time with `pause` between
/// chunks, until the server stops reading; returns what it answered, when it closed, and how many
/// body bytes it took before closing.
async fn refused_upload(addr: &str, len: usize, chunk: usize, pause: Duration) -> (String, Duration, usize) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: {len}\r\n\r\n"
    );
    writer.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    let sending = tokio::spawn(async move {
        let block = vec![b'x'; chunk];
        let mut total = 0;
        while total < len {
            let n = chunk.min(len - total);
            if writer.write_all(&block[..n]).await.is_err() {
                break;
            }
            total += n;
            counter.store(total, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(pause).await;
        }
        // Held open (not shut down) until aborted: the server, not the client, ends the exchange.
        std::future::pending::<()>().await;
    });
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10).saturating_sub(started.elapsed()), reader.read(&mut buf))
            .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server kept a refused upload's connection open for 10 s"),
        }
    }
    let closed = started.elapsed();
    sending.abort();
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    (String::from_utf8_lossy(&seen).into_owned(), closed, sent)
}

/// A refused upload's body is read (and dropped) up to 1 MiB or 2 s so that the client reads the
/// 401 rather than a reset: a 512 KiB body is answered in full and at once; a 64 MiB one, and one
/// trickled at 1 KiB per 100 ms, are cut after about 1 MiB and within about 2 s, with next to no
/// memory.
#[tokio::test]
async fn refused_uploads_are_drained_within_a_bound() {
    let _serial = common::RSS_SERIAL.lock().await;
    let (_, entry) = pixbox::auth::new_key(&[Scope::Upload]);
    let app = App::start(&[&entry], Reads::Public).await;
    let addr = app.addr();
    let before = common::rss_bytes();

    // Obeyed: a body under the bound is read to its end and the 401 arrives.
    let (answer, closed, sent) = refused_upload(&addr, 512 << 10, 64 << 10, Duration::ZERO).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    assert_eq!(sent, 512 << 10, "the whole small body was taken");
    assert!(closed < Duration::from_millis(500), "answered after {closed:?}");

    // Violated by size: cut soon after the first MiB (plus what socket buffers hold).
    let (answer, closed, sent) = refused_upload(&addr, 64 << 20, 64 << 10, Duration::ZERO).await;
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(sent < 16 << 20, "the server took {} MiB of a refused body", sent >> 20);
    assert!(closed < Duration::from_millis(1_500), "closed after {closed:?}");

    // Violated by time: a trickle is answered at the 2 s bound.
    let (answer, closed, sent) = refused_upload(&addr, 1 << 20, 1 << 10, Duration::from_millis(100)).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(closed >= Duration::from_millis(1_900) && closed < Duration::from_millis(3_000), "closed after {closed:?}");
    assert!(sent < 64 << 10, "{sent} bytes trickled");

    let grew = common::rss_bytes().saturating_sub(before);
    eprintln!("refused uploads: resident memory grew by {} KiB", grew >> 10);
    assert!(grew < 16 << 20, "refused uploads cost {} MiB", grew >> 20);
    assert_eq!(app.originals().await, 0, "nothing stored");
    app.running.stop().await;
}

/// The page at `/` is served without a key (it asks for one to call the API), with the configured
/// routes written into it; the calls it makes still need the key.
#[tokio::test]
async fn the_page_is_public_and_the_api_behind_it_is_not() {
    let (_, entry) = pixbox::auth::new_key(&[Scope::Upload, Scope::Read]);
    let app = App::start(&[&entry], Reads::Key).await;
    let page = app.get("/", None).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"const ROUTES = [{"prefix":"","renditions":["default"]}];"#), "routes not injected");
    assert_eq!(app.upload(None).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.get("/events?keys=a.jpg", None).await.status(), StatusCode::UNAUTHORIZED);
    app.running.stop().await;
}

/// `limits.max_watchers` in a pair: within it a long poll is served; over it, a second long poll
/// or an event stream is refused at once with 503 `too-busy` and `Retry-After`, costing next to no
/// memory; once the first wait ends its slot is free again.
#[tokio::test]
async fn watchers_over_the_cap_are_refused_at_once() {
    let _serial = common::RSS_SERIAL.lock().await;
    let app = App::start_with(&[], Reads::Public, |c| c.limits.max_watchers = 1).await;
    let uploaded: Value = app.upload(None).await.json().await.unwrap();
    let key = uploaded["images"][0]["key"].as_str().unwrap().to_string();
    let before = common::rss_bytes();
    // Obeyed: the only slot, held by a 2 s wait on a job no worker will run.
    let holder = tokio::spawn({
        let (client, url) = (app.client.clone(), format!("{}/status/{key}?wait=2", app.base));
        async move { client.get(url).send().await.unwrap().json::<Value>().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Violated: refused at once, whatever is asked.
    for url in [format!("/status/{key}?wait=2"), format!("/events?keys={key}")] {
        let asked = Instant::now();
        let refused = app.get(&url, None).await;
        let took = asked.elapsed();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE, "{url}");
        assert_eq!(refused.headers()["retry-after"], "1");
        assert_eq!(error_code(refused).await.1, "too-busy");
        assert!(took < Duration::from_millis(200), "{url} refused only after {took:?}");
    }
    let grew = common::rss_bytes().saturating_sub(before);
    assert!(grew < 8 << 20, "refused watchers cost {} MiB", grew >> 20);
    assert_eq!(holder.await.unwrap()["state"], "pending");
    // The slot is free again.
    assert_eq!(app.get(&format!("/status/{key}?wait=0"), None).await.status(), StatusCode::OK);
    app.running.stop().await;
}

/// Who the client is, behind a proxy and without one, seen through the rate limit (one request
/// a second, no burst): each row's second request is limited exactly when both count as the
/// same client.
#[tokio::test]
async fn the_rate_limit_counts_the_real_client_behind_trusted_proxies_and_ipv6_per_64() {
    let limited = |c: &mut Config| {
        c.limits.rate_per_second = 1;
        c.limits.rate_burst = 1;
    };
    let direct = App::start_with(&[], Reads::Public, limited).await;
    let proxied = App::start_with(&[], Reads::Public, |c| {
        limited(c);
        c.limits.trusted_proxies = "127.0.0.0/8 10.0.0.0/8".into();
    })
    .await;
    // (app, what the row is, the first request's X-Forwarded-For, the second's, same client?)
    let rows: [(&App, &str, &str, &str, bool); 6] = [
        (&direct, "untrusted peer: X-Forwarded-For ignored", "203.0.113.1", "203.0.113.2", true),
        (&proxied, "trusted peer: the forwarded client", "203.0.113.1", "203.0.113.2", false),
        (
            &proxied,
            "spoofed chain: the hop the proxy added",
            "198.51.100.9, 203.0.113.3",
            "198.51.100.10, 203.0.113.3",
            true,
        ),
        (&proxied, "trusted hops on the right are skipped", "203.0.113.4, 10.0.0.5", "203.0.113.4, 10.0.0.6", true),
        (&proxied, "IPv6: one /64 is one client", "2001:db8:1:2::1", "2001:db8:1:2:ffff::9", true),
        (&proxied, "IPv6: another /64 is another", "2001:db8:1:4::1", "2001:db8:1:5::1", false),
    ];
    for (app, row, first, second, same) in rows {
        let ask =
            |xff: &str| app.client.get(format!("{}/status/a.jpg", app.base)).header("x-forwarded-for", xff).send();
        assert_eq!(ask(first).await.unwrap().status(), StatusCode::NOT_FOUND, "{row}: first request");
        let answer = ask(second).await.unwrap().status();
        let expected = if same { StatusCode::TOO_MANY_REQUESTS } else { StatusCode::NOT_FOUND };
        assert_eq!(answer, expected, "{row}");
        // The buckets are full again for the next row.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
    }
    direct.running.stop().await;
    proxied.running.stop().await;
}

/// The per-caller caps in pairs: one client (behind a trusted proxy) holding its share of
/// watchers, or of uploads being received, is refused one more at once with 503 `too-busy`, while
/// another client gets one.
#[tokio::test]
async fn one_caller_cannot_take_every_watcher_or_upload_slot() {
    let app = App::start_with(&[], Reads::Public, |c| {
        c.limits.trusted_proxies = "127.0.0.1/32".into();
        c.limits.max_watchers = 10;
        c.limits.max_watchers_per_caller = 2;
        c.limits.max_concurrent_uploads = 10;
        c.limits.max_uploads_per_caller = 1;
        c.limits.body_idle_timeout_secs = 5;
    })
    .await;
    let uploaded: Value = app.upload(None).await.json().await.unwrap();
    let key = uploaded["images"][0]["key"].as_str().unwrap().to_string();
    let wait = |who: &'static str, secs: u32| {
        app.client.get(format!("{}/status/{key}?wait={secs}", app.base)).header("x-forwarded-for", who).send()
    };
    let holders: Vec<_> = (0..2).map(|_| tokio::spawn(wait("203.0.113.1", 3))).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    let refused = wait("203.0.113.1", 3).await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(asked.elapsed() < Duration::from_secs(1), "refused only after {:?}", asked.elapsed());
    assert_eq!(error_code(refused).await.1, "too-busy");
    assert_eq!(wait("203.0.113.2", 0).await.unwrap().status(), StatusCode::OK, "another caller has watchers left");
    for holder in holders {
        assert_eq!(holder.await.unwrap().unwrap().status(), StatusCode::OK);
    }

    // Uploads: a stalled body holds the caller's only slot.
    let mut stalled = TcpStream::connect(app.addr()).await.unwrap();
    let head = b"POST /upload HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.1\r\n\
                 Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n\
                 --b\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.png\"\r\n\r\n\x89PNG";
    stalled.write_all(head).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let upload = |who: &'static str| {
        let image = common::png(&common::photo(16, 12));
        let form = Form::new().part("images", Part::bytes(image).file_name("a.png").mime_str("image/png").unwrap());
        app.client.post(format!("{}/upload", app.base)).header("x-forwarded-for", who).multipart(form).send()
    };
    let asked = Instant::now();
    let refused = upload("203.0.113.1").await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(asked.elapsed() < Duration::from_secs(1), "refused only after {:?}", asked.elapsed());
    assert_eq!(error_code(refused).await.1, "too-busy");
    assert_eq!(upload("203.0.113.2").await.unwrap().status(), StatusCode::ACCEPTED, "another caller can upload");
    drop(stalled);
    app.running.stop().await;
}
