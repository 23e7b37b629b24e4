//! Benchmark: presets rendered on request (`GET /img/{preset}/{key}`) on the embedded backend.
//! A miss is timed against the same transform called straight on the sandbox (what the render
//! adds: store reads and the write-once put) and against vipsthumbnail making the same size from
//! the same file; hits are timed under 32 concurrent clients.
//!
//! Run with `cargo bench -p pixbox --bench presets`. The app runs in this process (port 0, over
//! loopback), the clients too, on the same cores; vipsthumbnail (Debian's libvips-tools) is a
//! process per image, as imgproxy-style services are not: its figure includes process start.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pixbox::sandbox::{OptionValue, Param, RouteConfig, Sandbox};

const IMAGES: usize = 8;
const CLIENTS: usize = 32;
const HIT_SECONDS: u64 = 5;
/// The preset: a 600x400 card, cropped, as JPEG.
const PRESET: &[(&str, &str)] = &[("width", "600"), ("height", "400"), ("mode", "cover"), ("format", "jpeg")];

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = pixbox::config::Config {
        listen: "127.0.0.1:0".into(),
        admin_listen: String::new(),
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    config.worker.schedule = "* * * * * *".into();
    config.limits.rate_per_second = 0;
    let mut route = RouteConfig::new("", "resize", BTreeMap::new());
    route.keep_originals = true;
    config.routes = vec![route];
    let card: BTreeMap<String, OptionValue> =
        PRESET.iter().map(|(k, v)| (k.to_string(), OptionValue::Text(v.to_string()))).collect();
    config.presets = [("card".to_string(), pixbox::render::PresetConfig { plugin: None, options: card })].into();
    let running = pixbox::server::start(&config).await.unwrap();
    let base = format!("http://{}", running.addr.unwrap());
    let client = reqwest::Client::builder().pool_max_idle_per_host(CLIENTS).build().unwrap();

    // 3000x2000 photo-like JPEGs, uploaded and processed.
    let photo = photo_jpeg(3000, 2000);
    let mut keys = Vec::new();
    for _ in 0..IMAGES {
        let form = reqwest::multipart::Form::new()
            .part("images", reqwest::multipart::Part::bytes(photo.clone()).file_name("p.jpg"));
        let body: serde_json::Value =
            client.post(format!("{base}/upload")).multipart(form).send().await.unwrap().json().await.unwrap();
        keys.push(body["images"][0]["key"].as_str().unwrap().to_string());
    }
    for key in &keys {
        let status: serde_json::Value =
            client.get(format!("{base}/status/{key}?wait=30")).send().await.unwrap().json().await.unwrap();
        assert_eq!(status["state"], "done", "{status}");
    }

    // The plugin's own time, on a sandbox of this process (warmed up first).
    let mut settings = config.sandbox.clone();
    settings.cache_dir = Some(dir.path().join("plugin-cache"));
    let sandbox = Sandbox::new(settings).unwrap();
    let plugin = sandbox.load("resize").await.unwrap();
    let params: Vec<Param> = PRESET.iter().map(|(k, v)| Param { name: k.to_string(), value: v.to_string() }).collect();
    sandbox.transform(&plugin, &photo, "image/jpeg", &params).await.unwrap();
    let mut own = Vec::new();
    let mut misses = Vec::new();
    for key in &keys {
        let started = Instant::now();
        sandbox.transform(&plugin, &photo, "image/jpeg", &params).await.unwrap();
        own.push(started.elapsed());
        let started = Instant::now();
        let answer = client.get(format!("{base}/img/card/{key}")).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        answer.bytes().await.unwrap();
        misses.push(started.elapsed());
    }

    // vipsthumbnail: the same file, the same box, cropped.
    let input = dir.path().join("photo.jpg");
    std::fs::write(&input, &photo).unwrap();
    let mut vips = Vec::new();
    for i in 0..IMAGES {
        let out = dir.path().join(format!("vips-{i}.jpg"));
        let started = Instant::now();
        let status = std::process::Command::new("vipsthumbnail")
            .arg(&input)
            .args(["--size", "600x400", "--smartcrop", "centre", "-o"])
            .arg(format!("{}[Q=85]", out.display()))
            .status()
            .expect("vipsthumbnail (apt-get install libvips-tools)");
        assert!(status.success());
        vips.push(started.elapsed());
    }

    // Hits: 32 clients for HIT_SECONDS, each asking for the stored variants in turn.
    let deadline = Instant::now() + Duration::from_secs(HIT_SECONDS);
    let clients = (0..CLIENTS).map(|c| {
        let (client, base, keys) = (client.clone(), base.clone(), keys.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = c;
            while Instant::now() < deadline {
                let started = Instant::now();
                let answer = client.get(format!("{base}/img/card/{}", keys[i % keys.len()])).send().await.unwrap();
                assert_eq!(answer.status(), 200);
                answer.bytes().await.unwrap();
                latencies.push(started.elapsed());
                i += 1;
            }
            latencies
        })
    });
    let mut hits: Vec<Duration> = Vec::new();
    for handle in clients {
        hits.extend(handle.await.unwrap());
    }
    running.stop().await;

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (miss, plugin_own, vips_median) = (median(&mut misses), median(&mut own), median(&mut vips));
    println!("presets: {IMAGES} images of 3000x2000 (JPEG), preset 600x400 cover -> JPEG");
    println!("miss (render + store + serve)   median {:.1} ms", ms(miss));
    println!("the plugin's own call           median {:.1} ms", ms(plugin_own));
    println!("miss - plugin                   {:.1} ms", ms(miss.saturating_sub(plugin_own)));
    println!(
        "vipsthumbnail (process per file) median {:.1} ms; miss / vipsthumbnail = {:.2}",
        ms(vips_median),
        ms(miss) / ms(vips_median)
    );
    hits.sort();
    let at = |q: f64| hits[((hits.len() as f64 * q) as usize).min(hits.len() - 1)];
    println!(
        "hits, {CLIENTS} clients for {HIT_SECONDS} s: {} requests ({:.0}/s), p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        hits.len(),
        hits.len() as f64 / HIT_SECONDS as f64,
        ms(at(0.5)),
        ms(at(0.99)),
        ms(*hits.last().unwrap())
    );
}

fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// A photo-like JPEG: smooth gradients and a fine pattern.
fn photo_jpeg(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, (((x / 7) ^ (y / 5)) & 0xff) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image).write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}
