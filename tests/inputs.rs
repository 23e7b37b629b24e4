//! Formats pixbox reads but does not write, end to end: a JPEG XL photo is probed from its header
//! at upload, decoded inside the sandbox and comes out with the colours a decoder outside pixbox
//! (libjxl's own `djxl`) gives; a cut-off one fails as `bad-input`. HEIC is refused by name.

use crate::common::{self, int, route, text};

use image::GenericImageView;
use pixbox::imaging::Format;

/// `scripts/make-inputs`: cups-srgb.jpg as lossy JPEG XL (`cjxl -d 1`), and djxl's decode of it.
const JXL: &[u8] = include_bytes!("fixtures/cups.jxl");
const JXL_BY_DJXL: &[u8] = include_bytes!("fixtures/cups.jxl.png");

/// PSNR over RGB, in dB.
fn psnr(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let squared: f64 =
        a.as_raw().iter().zip(b.as_raw()).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum::<f64>();
    let mse = squared / a.as_raw().len() as f64;
    10.0 * (255.0 * 255.0 / mse).log10()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jpeg_xl_photo_comes_out_with_the_colours_libjxl_decodes() {
    let header = pixbox::imaging::probe(JXL).unwrap();
    assert_eq!((header.format, header.width, header.height, header.frames), (Format::Jxl, 320, 200, 1));

    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path());
    config.routes = vec![
        route("", "resize", &[]),
        route("png/", "resize", &[("width", int(320)), ("height", int(320)), ("format", text("png"))]),
    ];
    let running = pixbox::server::start(&config).await.unwrap();
    let base = format!("http://{}", running.addr.unwrap());
    let client = reqwest::Client::new();

    // At its own size, losslessly out: the pixels are the decoder's.
    let key = common::upload_done(&client, &base, "png/", JXL.to_vec()).await;
    let out = client.get(format!("{base}/download/{key}")).send().await.unwrap().bytes().await.unwrap();
    let ours = common::decode(&out).to_rgb8();
    let reference = common::decode(JXL_BY_DJXL).to_rgb8();
    let db = psnr(&ours, &reference);
    assert!(db >= 35.0, "pixbox's decode is {db:.1} dB from djxl's");
    eprintln!("JPEG XL photo, pixbox vs djxl: {db:.1} dB");

    // `same`: JPEG XL is read, not written, so a photo comes out as JPEG.
    let key = common::upload_done(&client, &base, "", JXL.to_vec()).await;
    let answer = client.get(format!("{base}/download/{key}")).send().await.unwrap();
    assert_eq!(answer.headers()["content-type"], "image/jpeg");
    let jpeg = common::decode(&answer.bytes().await.unwrap());
    assert_eq!(jpeg.dimensions(), (320, 200));

    // Cut off: nothing in a codestream says where it ends, so the decoder finds it.
    let form = reqwest::multipart::Form::new()
        .part("images", reqwest::multipart::Part::bytes(JXL[..JXL.len() / 2].to_vec()).file_name("cut.jxl"));
    let answer = client.post(format!("{base}/upload")).multipart(form).send().await.unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::ACCEPTED);
    let body: serde_json::Value = answer.json().await.unwrap();
    let key = body["images"][0]["key"].as_str().unwrap();
    let status: serde_json::Value =
        client.get(format!("{base}/status/{key}?wait=20")).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(status["error"]["code"], "bad-input", "{status}");
    running.stop().await;
}

/// HEIC (an iPhone's default) is not read yet: refused at upload as `unsupported-format`, by name
/// and with the reason, nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heic_photo_is_refused_by_name_with_the_reason() {
    let heic = include_bytes!("fixtures/cups-64.heic");
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path());
    config.role = pixbox::config::Role::Api;
    let (store, _) = pixbox::backends::connect(&config).await.unwrap();
    let running = pixbox::server::start(&config).await.unwrap();
    let base = format!("http://{}", running.addr.unwrap());
    let form = reqwest::multipart::Form::new()
        .part("images", reqwest::multipart::Part::bytes(heic.to_vec()).file_name("IMG_0001.HEIC"));
    let answer = reqwest::Client::new().post(format!("{base}/upload")).multipart(form).send().await.unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["code"], "unsupported-format");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("HEIC") && message.contains("libheif"), "{message}");
    let stored = store.list(pixbox::storage::Bucket::Temp, "").await.unwrap();
    assert!(stored.iter().all(|k| k.starts_with(".pixbox/")), "{stored:?}");
    running.stop().await;
}

/// A large JPEG XL renders in bands, so an 18 MP photo fits the default 256 MiB (a whole render
/// would take about 28 bytes a pixel: 480 MiB); under a 64 MiB cap the same photo is stopped as
/// `out-of-memory` at the cap, well before the time budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_18_mp_jpeg_xl_fits_the_default_memory_and_is_stopped_at_a_smaller_cap() {
    use pixbox::sandbox::{SandboxSettings, TransformError};
    use std::time::Instant;
    let jxl = include_bytes!("fixtures/gradient-18mp.jxl");
    let options = common::params(&[("width", "1024"), ("height", "1024"), ("format", "jpeg")]);

    let sandbox = common::sandbox(SandboxSettings::default());
    let plugin = sandbox.load("resize").await.unwrap();
    let out = sandbox.transform(&plugin, jxl, "image/jxl", &options).await.expect("fits the default 256 MiB");
    assert_eq!((out.header.width, out.header.height), (1024, 512));
    let peak = out.stats.memory_peak;
    assert!(peak < 220 << 20, "high-water {} MiB", peak >> 20);
    eprintln!("18 MP JPEG XL -> 1024 px JPEG: {:?}, high-water {} MiB", out.stats.elapsed, peak >> 20);

    let small = common::sandbox(SandboxSettings { memory_limit_mib: 64, ..SandboxSettings::default() });
    let plugin = small.load("resize").await.unwrap();
    let started = Instant::now();
    let refused = small.transform(&plugin, jxl, "image/jxl", &options).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(refused, TransformError::OutOfMemory { limit_bytes } if limit_bytes == 64 << 20), "{refused:?}");
    assert!(took < out.stats.elapsed + std::time::Duration::from_secs(5), "stopped after {took:?}");
}
