//! Shared by pixbox's integration tests: generated images (no binary files in the repository)
//! and where the built plugins and the `pixbox` binary are.

#![allow(dead_code, unused_macros, unused_imports)] // each test binary uses a different part of this module

pub mod memory;
pub mod wat;

/// A port's conformance suite as tests: each named check of `conformance` (in scope where this is
/// used) against a local adapter, `$open(&tempdir)`, in module `$local`, and against an adapter on
/// the S3/SQS emulator, `$connect(test_name).await` (`None`: skipped, and it said so), in module
/// `$remote`.
macro_rules! conformance_tests {
    ($local:ident: $open:ident, $remote:ident: $connect:ident; $($name:ident),* $(,)?) => {
        mod $local {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    super::conformance::$name(&*super::$open(&dir)).await;
                }
            )*
        }
        mod $remote {
            $(
                #[tokio::test]
                async fn $name() {
                    let test = concat!(stringify!($remote), "::", stringify!($name));
                    if let Some(port) = super::$connect(test).await {
                        super::conformance::$name(&*port).await;
                    }
                }
            )*
        }
    };
}
pub(crate) use conformance_tests;

/// Each named `async fn(Backend)` as two tests: `embedded::name` and `s3_sqs::name`.
macro_rules! on_each_backend {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(crate::common::Backend::Embedded).await } )*
        }
        mod s3_sqs {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(crate::common::Backend::Aws).await } )*
        }
    };
}
pub(crate) use on_each_backend;

use std::io::Cursor;
use std::path::PathBuf;

use image::{DynamicImage, ImageFormat, Rgb, RgbImage};

/// A photo-like test image: smooth gradients plus a fine pattern, so encoders and resizers do
/// real work and results can be told apart.
pub fn photo(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let r = (x * 255 / width.max(1)) as u8;
        let g = (y * 255 / height.max(1)) as u8;
        let b = (((x / 7) ^ (y / 5)) & 0xff) as u8;
        Rgb([r, g, b])
    })
}

/// An image whose left half is red and right half blue, to check orientation.
pub fn red_left_blue_right(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, _| if x < width / 2 { Rgb([255, 0, 0]) } else { Rgb([0, 0, 255]) })
}

pub fn encode(image: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(image.clone()).write_to(&mut out, format).expect("encode fixture");
    out.into_inner()
}

pub fn jpeg(image: &RgbImage) -> Vec<u8> {
    encode(image, ImageFormat::Jpeg)
}

pub fn png(image: &RgbImage) -> Vec<u8> {
    encode(image, ImageFormat::Png)
}

/// Inserts an EXIF block with the given orientation tag (1..=8) right after a JPEG's SOI marker.
pub fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "not a JPEG");
    // TIFF header (little endian), one IFD with one entry: 0x0112 Orientation, SHORT, count 1.
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"II*\0");
    tiff.extend_from_slice(&8u32.to_le_bytes());
    tiff.extend_from_slice(&1u16.to_le_bytes());
    tiff.extend_from_slice(&0x0112u16.to_le_bytes());
    tiff.extend_from_slice(&3u16.to_le_bytes());
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_le_bytes());
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = vec![0xFF, 0xD8, 0xFF, 0xE1];
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// A tiny, well-formed PNG whose header claims `width` x `height`: the classic decompression bomb.
pub fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(&crc.finalize().to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, no interlace
    chunk(&mut out, b"IHDR", &ihdr);
    // A zlib stream of a few zero bytes: far too little data for the claimed size.
    chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01]);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// Decodes a result for checking (tests may decode; the host never does).
pub fn decode(bytes: &[u8]) -> DynamicImage {
    image::load_from_memory(bytes).expect("result decodes")
}

/// A component built from `plugins/` (`resize`, `thumbnail`, `misbehave`).
pub fn built_plugin(name: &str) -> PathBuf {
    PathBuf::from(pixbox::sandbox::BUILT_PLUGINS_DIR).join(format!("{name}.wasm"))
}

/// The `pixbox` binary of this build (cargo builds it before running these tests).
pub fn pixbox_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pixbox"))
}

/// The S3/SQS emulator the AWS-backed tests use: `PIXBOX_TEST_AWS_ENDPOINT` (scripts/test starts
/// one and sets it). Without it the tests fail, unless `PIXBOX_TEST_SKIP_AWS=1` explicitly opts out,
/// in which case they say loudly that they skipped.
pub fn aws_endpoint(test: &str) -> Option<String> {
    if let Ok(url) = std::env::var("PIXBOX_TEST_AWS_ENDPOINT") {
        // The SDK's standard chain needs credentials and a region; emulators accept any.
        for (k, v) in [("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_REGION", "us-east-1")] {
            if std::env::var_os(k).is_none() {
                // SAFETY: set before any SDK client is built; every test sets the same values.
                #[allow(unsafe_code)]
                unsafe {
                    std::env::set_var(k, v)
                };
            }
        }
        return Some(url);
    }
    if std::env::var("PIXBOX_TEST_SKIP_AWS").as_deref() == Ok("1") {
        eprintln!("SKIPPED {test}: PIXBOX_TEST_SKIP_AWS=1, the S3/SQS half of this test did not run");
        return None;
    }
    panic!(
        "{test} needs an S3/SQS emulator: run ./scripts/test (it starts one), or set \
         PIXBOX_TEST_AWS_ENDPOINT=http://127.0.0.1:PORT, or opt out with PIXBOX_TEST_SKIP_AWS=1"
    );
}

/// Points `config` at S3 + SQS on the emulator, with buckets and queue of its own (created at
/// start); `None` when the AWS half is explicitly skipped (see [`aws_endpoint`]).
pub fn use_aws(config: &mut pixbox::config::Config, test: &str) -> Option<()> {
    config.endpoint_url = Some(aws_endpoint(test)?);
    config.storage = pixbox::config::StorageKind::S3;
    config.queue = pixbox::config::QueueKind::Sqs;
    config.create_resources = true;
    config.temp_bucket = unique_name("temp");
    config.permanent_bucket = unique_name("perm");
    config.queue_name = unique_name("jobs");
    Some(())
}

/// Environment that configures a `pixbox` process (`serve` in `role`, or any other command) like
/// `config`: addresses, data dir, worker timing, buckets and queue, and the emulator when used.
pub fn process_env(c: &pixbox::config::Config, role: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("PIXBOX_ROLE", role.to_string()),
        ("PIXBOX_LISTEN", c.listen.clone()),
        ("PIXBOX_ADMIN_LISTEN", c.admin_listen.clone()),
        ("PIXBOX_DATA_DIR", c.data_dir.display().to_string()),
        ("PIXBOX_WORKER_SCHEDULE", c.worker.schedule.clone()),
        ("PIXBOX_WORKER_VISIBILITY_TIMEOUT_SECS", c.worker.visibility_timeout_secs.to_string()),
        ("PIXBOX_WORKER_MAX_RECEIVES", c.worker.max_receives.to_string()),
        ("PIXBOX_TEMP_BUCKET", c.temp_bucket.clone()),
        ("PIXBOX_PERMANENT_BUCKET", c.permanent_bucket.clone()),
        ("PIXBOX_QUEUE_NAME", c.queue_name.clone()),
        ("PIXBOX_LOG", "info".into()),
    ];
    if let Some(dir) = &c.sandbox.cache_dir {
        env.push(("PIXBOX_SANDBOX_CACHE_DIR", dir.display().to_string()));
    }
    if c.storage == pixbox::config::StorageKind::S3 {
        env.push(("PIXBOX_STORAGE", "s3".into()));
        env.push(("PIXBOX_QUEUE", "sqs".into()));
        env.push(("PIXBOX_ENDPOINT_URL", c.endpoint_url.clone().unwrap()));
        env.push(("AWS_ACCESS_KEY_ID", "test".into()));
        env.push(("AWS_SECRET_ACCESS_KEY", "test".into()));
        env.push(("AWS_REGION", "us-east-1".into()));
    }
    env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Which backend a test runs on: the embedded default, or S3 + SQS on the emulator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Backend {
    Embedded,
    Aws,
}

impl Backend {
    /// Points `config` at this backend; `None` when the S3/SQS half is skipped (and said so).
    pub fn configure(self, config: &mut pixbox::config::Config, test: &str) -> Option<()> {
        match self {
            Backend::Embedded => Some(()),
            Backend::Aws => use_aws(config, test),
        }
    }
}

/// A route of `plugin` (a built-in's name or a path) for `prefix`, with these options and one output.
pub fn route(
    prefix: &str,
    plugin: &str,
    options: &[(&str, pixbox::sandbox::OptionValue)],
) -> pixbox::sandbox::RouteConfig {
    pixbox::sandbox::RouteConfig::new(prefix, plugin, options.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
}

/// An integer option of a route.
pub fn int(value: i64) -> pixbox::sandbox::OptionValue {
    pixbox::sandbox::OptionValue::Integer(value)
}

/// A text option of a route.
pub fn text(value: &str) -> pixbox::sandbox::OptionValue {
    pixbox::sandbox::OptionValue::Text(value.into())
}

/// The misbehaving test plugin, as a route names it.
pub fn misbehave() -> String {
    built_plugin("misbehave").display().to_string()
}

/// The options of one plugin call.
pub fn params(pairs: &[(&str, &str)]) -> Vec<pixbox::sandbox::Param> {
    pairs.iter().map(|(n, v)| pixbox::sandbox::Param { name: n.to_string(), value: v.to_string() }).collect()
}

/// Uploads `image` under `prefix` to the pixbox at `base` and waits (up to 20 s) until its job is
/// done; returns its key.
pub async fn upload_done(client: &reqwest::Client, base: &str, prefix: &str, image: Vec<u8>) -> String {
    use reqwest::multipart::{Form, Part};
    let form = Form::new().text("prefix", prefix.to_string()).part("images", Part::bytes(image).file_name("a.png"));
    let answer = client.post(format!("{base}/upload")).multipart(form).send().await.unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::ACCEPTED);
    let body: serde_json::Value = answer.json().await.unwrap();
    let key = body["images"][0]["key"].as_str().unwrap().to_string();
    let url = format!("{base}/status/{key}?wait=20");
    let status: serde_json::Value = client.get(url).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["state"], "done", "{status}");
    key
}

/// imgproxy's signature of `path`, computed here from imgproxy's description (not pixbox's code).
pub fn imgproxy_signature(key: &[u8], salt: &[u8], path: &str) -> String {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(salt);
    mac.update(path.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// A free port on 127.0.0.1, for a process that must be told where to listen: bound, read and
/// released, so the process started next can take it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until the pixbox at `base` answers `/ready` with 200; fails the test after `within`,
/// with the process's `log` when there is one.
pub async fn wait_ready(base: &str, within: std::time::Duration, log: Option<&std::path::Path>) {
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + within;
    while client.get(format!("{base}/ready")).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        if std::time::Instant::now() >= deadline {
            let log = log.map(|path| std::fs::read_to_string(path).unwrap_or_default()).unwrap_or_default();
            panic!("pixbox at {base} was not ready within {within:?}; its log:\n{log}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A `pixbox serve` process, killed when dropped (so also when its test fails half-way).
pub struct Served {
    pub child: std::process::Child,
    pub base: String,
}

impl Served {
    /// Starts `command`, a `pixbox serve` told to listen on 127.0.0.1:`port`, with its stderr in
    /// `log`, and waits (up to `within`) until it is ready.
    pub async fn start(
        command: &mut std::process::Command,
        port: u16,
        log: &std::path::Path,
        within: std::time::Duration,
    ) -> Served {
        let child =
            command.stdout(std::process::Stdio::null()).stderr(std::fs::File::create(log).unwrap()).spawn().unwrap();
        let served = Served { child, base: format!("http://127.0.0.1:{port}") };
        wait_ready(&served.base, within, Some(log)).await;
        served
    }

    /// Stops the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The compiled-plugin cache the tests share (in cargo's per-target temporary directory): the
/// built-in plugins take seconds to compile, and every test starts a fresh data directory.
/// Artifacts are named after the plugin's bytes and the engine's settings, so sharing is safe.
pub fn plugin_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache")
}

/// A name no other test uses, for buckets and queues (lowercase, S3-safe).
pub fn unique_name(what: &str) -> String {
    format!("pixbox-test-{what}-{}", uuid::Uuid::new_v4().simple()).chars().take(60).collect()
}

/// Threads that burn a core each until dropped: a loaded machine (a cold CI build, other tests)
/// beside a test whose bound must hold regardless.
pub struct CpuHogs {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuHogs {
    pub fn start(count: usize) -> CpuHogs {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let threads = (0..count)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                    }
                })
            })
            .collect();
        CpuHogs { stop, threads }
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Resident memory of this process (an in-process app or sandbox included), from /proc (Linux):
/// cheap enough to sample every millisecond.
pub fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm (Linux)");
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Held by every test that asserts on the process's resident memory (those are also the tests
/// that allocate the most), so that no two of them run at once: resident memory is the process's,
/// not the test's.
pub static RSS_SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Samples [`rss_bytes`] on a thread of its own until [`RssWatch::peak`]: the high-water mark of
/// a call or a run, for the limit tests' "with how much memory" side.
pub struct RssWatch {
    peak: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssWatch {
    pub fn start(every: std::time::Duration) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let (peak, stop) =
            (std::sync::Arc::new(AtomicUsize::new(rss_bytes())), std::sync::Arc::new(AtomicBool::new(false)));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_bytes(), Ordering::Relaxed);
                std::thread::sleep(every);
            }
        });
        RssWatch { peak, stop, thread: Some(thread) }
    }

    /// The highest resident set seen since [`RssWatch::start`] (now included).
    pub fn peak(mut self) -> usize {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.peak.load(Ordering::Relaxed).max(rss_bytes())
    }
}

/// A sandbox with `settings` and the tests' shared compiled-plugin cache.
pub fn sandbox(settings: pixbox::sandbox::SandboxSettings) -> std::sync::Arc<pixbox::sandbox::Sandbox> {
    let settings = pixbox::sandbox::SandboxSettings { cache_dir: Some(plugin_cache()), ..settings };
    std::sync::Arc::new(pixbox::sandbox::Sandbox::new(settings).expect("sandbox"))
}

/// A worker over these adapters, as `pixbox serve` builds one from `config`: its `routes` (the
/// default `resize` one added) in `sandbox`, the worker settings and pixel limits of `config`, and
/// originals read up to 1 MiB.
pub async fn worker(
    store: std::sync::Arc<dyn pixbox::storage::BlobStore>,
    queue: std::sync::Arc<dyn pixbox::queue::JobQueue>,
    sandbox: std::sync::Arc<pixbox::sandbox::Sandbox>,
    routes: &[pixbox::sandbox::RouteConfig],
    config: &pixbox::config::Config,
) -> pixbox::worker::Worker {
    let routes = pixbox::sandbox::Routes::load(&sandbox, routes).await.expect("routes");
    pixbox::worker::Worker {
        store,
        queue,
        sandbox,
        routes: std::sync::Arc::new(routes),
        settings: config.worker.clone(),
        limits: config.limits.pixels(),
        formats: config.formats,
        max_input_bytes: 1 << 20,
    }
}

/// The configuration of a pixbox under test: the api and admin addresses on loopback, port 0;
/// data in `dir`; the tests' shared plugin cache; a worker ticking every second. Everything else
/// is the default; each test sets what it is about.
pub fn config(dir: &std::path::Path) -> pixbox::config::Config {
    let mut config = pixbox::config::Config {
        listen: "127.0.0.1:0".into(),
        admin_listen: "127.0.0.1:0".into(),
        data_dir: dir.to_path_buf(),
        ..pixbox::config::Config::default()
    };
    config.sandbox.cache_dir = Some(plugin_cache());
    config.worker.schedule = "* * * * * *".into();
    config
}
