//! Formats pixbox reads but does not write, end to end: a JPEG XL photo is probed from its header
//! at upload, decoded inside the sandbox and comes out with the colours a decoder outside pixbox
//! (libjxl's own `djxl`) gives; a cut-off one fails as `bad-input`. HEIC likewise against libheif's
//! `heif-convert`, turned by its `irot` box, within the memory cap, and hostile files fail cleanly.

use crate::common::{self, int, route, text};

use image::GenericImageView;
use pixbox::imaging::Format;

/// `scripts/make-inputs`: cups-srgb.jpg as lossy JPEG XL (`cjxl -d 1`), and djxl's decode of it.
const JXL: &[u8] = include_bytes!("fixtures/cups.jxl");
const JXL_BY_DJXL: &[u8] = include_bytes!("fixtures/cups.jxl.png");
/// The same photo whose codestream says "turn 90 degrees clockwise" (orientation 6), and djxl's
/// upright decode of it.
const JXL_TURNED: &[u8] = include_bytes!("fixtures/cups-turned.jxl");
const JXL_TURNED_BY_DJXL: &[u8] = include_bytes!("fixtures/cups-turned.jxl.png");

/// A pixbox with two routes: `png/` writes a lossless PNG at the photos' own size (320 pixels),
/// so its pixels are the decoder's; the default route writes `same`.
async fn photo_routes(dir: &std::path::Path) -> (pixbox::server::Running, String) {
    let mut config = common::config(dir);
    config.routes = vec![
        route("", "resize", &[]),
        route("png/", "resize", &[("width", int(320)), ("height", int(320)), ("format", text("png"))]),
    ];
    let running = pixbox::server::start(&config).await.unwrap();
    let base = format!("http://{}", running.addr.unwrap());
    (running, base)
}

/// PSNR over RGB, in dB.
fn psnr(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let squared: f64 =
        a.as_raw().iter().zip(b.as_raw()).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum::<f64>();
    let mse = squared / a.as_raw().len() as f64;
    10.0 * (255.0 * 255.0 / mse).log10()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jpeg_xl_photo_comes_out_in_the_orientation_and_colours_libjxl_gives() {
    let header = pixbox::imaging::probe(JXL).unwrap();
    assert_eq!((header.format, header.width, header.height, header.frames), (Format::Jxl, 320, 200, 1));

    let dir = tempfile::tempdir().unwrap();
    let (running, base) = photo_routes(dir.path()).await;
    let client = reqwest::Client::new();

    // At its own size, losslessly out: the pixels are the decoder's.
    let key = common::upload_done(&client, &base, "png/", JXL.to_vec()).await;
    let out = client.get(format!("{base}/download/{key}")).send().await.unwrap().bytes().await.unwrap();
    let ours = common::decode(&out).to_rgb8();
    let reference = common::decode(JXL_BY_DJXL).to_rgb8();
    let db = psnr(&ours, &reference);
    assert!(db >= 35.0, "pixbox's decode is {db:.1} dB from djxl's");
    eprintln!("JPEG XL photo, pixbox vs djxl: {db:.1} dB");

    // Its orientation applied once (the header's size is already turned; the EXIF block cjxl
    // keeps says the same and is not applied again): upright as djxl shows it, and the same
    // picture as the unturned file turned a quarter clockwise.
    let turned = pixbox::imaging::probe(JXL_TURNED).unwrap();
    assert_eq!((turned.width, turned.height), (200, 320));
    let key = common::upload_done(&client, &base, "png/", JXL_TURNED.to_vec()).await;
    let out = client.get(format!("{base}/download/{key}")).send().await.unwrap().bytes().await.unwrap();
    let upright = common::decode(&out).to_rgb8();
    assert_eq!(upright.dimensions(), (200, 320));
    let db = psnr(&upright, &common::decode(JXL_TURNED_BY_DJXL).to_rgb8());
    assert!(db >= 35.0, "the turned JPEG XL is {db:.1} dB from djxl's");
    let db = psnr(&upright, &image::imageops::rotate90(&ours));
    assert!(db >= 35.0, "the turned JPEG XL is {db:.1} dB from the photo turned a quarter clockwise");

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

/// `scripts/make-inputs`: cups-srgb.jpg as HEIC (heif-enc), the same turned a quarter anticlockwise
/// by an `irot` box as phones store it, and heif-convert's decodes of both.
const HEIC: &[u8] = include_bytes!("fixtures/cups.heic");
const HEIC_BY_LIBHEIF: &[u8] = include_bytes!("fixtures/cups.heic.png");
const HEIC_TURNED: &[u8] = include_bytes!("fixtures/cups-turned.heic");
const HEIC_TURNED_BY_LIBHEIF: &[u8] = include_bytes!("fixtures/cups-turned.heic.png");
/// The photo as a grid of 2x2 tiles, as phones store photos, and heif-convert's decode.
const HEIC_GRID: &[u8] = include_bytes!("fixtures/cups-grid.heic");
const HEIC_GRID_BY_LIBHEIF: &[u8] = include_bytes!("fixtures/cups-grid.heic.png");

/// HEIC (an iPhone's default) is probed at upload from its header, decoded inside the sandbox by
/// libheif with libde265, and comes out with heif-convert's colours and orientation (`irot` applied,
/// the header's size already turned); `same` writes JPEG; a cut-off file is refused at upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heic_photo_comes_out_in_the_orientation_and_colours_libheif_gives() {
    let header = pixbox::imaging::probe(HEIC).unwrap();
    assert_eq!((header.format, header.width, header.height, header.frames), (Format::Heic, 320, 200, 1));
    let turned = pixbox::imaging::probe(HEIC_TURNED).unwrap();
    assert_eq!((turned.format, turned.width, turned.height), (Format::Heic, 200, 320));

    let dir = tempfile::tempdir().unwrap();
    let (running, base) = photo_routes(dir.path()).await;
    let client = reqwest::Client::new();
    let download = |key: String| {
        let client = client.clone();
        let base = base.clone();
        async move { client.get(format!("{base}/download/{key}")).send().await.unwrap() }
    };

    // At its own size, losslessly out: the pixels are the decoder's.
    let key = common::upload_done(&client, &base, "png/", HEIC.to_vec()).await;
    let ours = common::decode(&download(key).await.bytes().await.unwrap()).to_rgb8();
    let db = psnr(&ours, &common::decode(HEIC_BY_LIBHEIF).to_rgb8());
    assert!(db >= 35.0, "pixbox's decode is {db:.1} dB from heif-convert's");
    eprintln!("HEIC photo, pixbox vs heif-convert: {db:.1} dB");

    // Turned by its `irot` box: upright as heif-convert shows it, and the same picture as the
    // unturned file turned a quarter anticlockwise.
    let key = common::upload_done(&client, &base, "png/", HEIC_TURNED.to_vec()).await;
    let upright = common::decode(&download(key).await.bytes().await.unwrap()).to_rgb8();
    assert_eq!(upright.dimensions(), (200, 320));
    let db = psnr(&upright, &common::decode(HEIC_TURNED_BY_LIBHEIF).to_rgb8());
    assert!(db >= 35.0, "the turned photo is {db:.1} dB from heif-convert's");
    let db = psnr(&upright, &image::imageops::rotate270(&ours));
    assert!(db >= 35.0, "the turned photo is {db:.1} dB from the photo turned a quarter anticlockwise");

    // A grid of tiles, as phones store photos: the tiles put together as heif-convert does.
    let key = common::upload_done(&client, &base, "png/", HEIC_GRID.to_vec()).await;
    let grid = common::decode(&download(key).await.bytes().await.unwrap()).to_rgb8();
    assert_eq!(grid.dimensions(), (320, 192));
    let db = psnr(&grid, &common::decode(HEIC_GRID_BY_LIBHEIF).to_rgb8());
    assert!(db >= 35.0, "the grid is {db:.1} dB from heif-convert's");

    // `same`: HEIC is read, not written, so a photo comes out as JPEG (and its key says so).
    let key = common::upload_done(&client, &base, "", HEIC.to_vec()).await;
    assert!(key.ends_with(".jpg"), "{key}");
    let answer = download(key).await;
    assert_eq!(answer.headers()["content-type"], "image/jpeg");
    assert_eq!(common::decode(&answer.bytes().await.unwrap()).dimensions(), (320, 200));

    // libheif's own sample: a 1280x854 image of a camera, major brand `mif1`, several images.
    let sample = std::fs::read(heif_sources().join("libheif/examples/example.heic")).unwrap();
    let key = common::upload_done(&client, &base, "png/", sample).await;
    let out = common::decode(&download(key).await.bytes().await.unwrap());
    assert_eq!(out.dimensions(), (320, 214));

    // Cut off: its boxes no longer reach the end of the file.
    let form = reqwest::multipart::Form::new()
        .part("images", reqwest::multipart::Part::bytes(HEIC[..HEIC.len() - 100].to_vec()).file_name("cut.heic"));
    let answer = client.post(format!("{base}/upload")).multipart(form).send().await.unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::UNPROCESSABLE_ENTITY);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["code"], "truncated-image", "{body}");
    running.stop().await;
}

/// Where scripts/c-sources put libheif and libde265 (the build runs it).
fn heif_sources() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/heif/vendor")
}

/// `formats.heic = false`: refused at upload as `unsupported-format`, naming the setting, with
/// nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heic_turned_off_is_refused_by_name_with_nothing_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path());
    config.role = pixbox::config::Role::Api;
    config.formats.heic = false;
    let (store, _) = pixbox::backends::connect(&config).await.unwrap();
    let running = pixbox::server::start(&config).await.unwrap();
    let base = format!("http://{}", running.addr.unwrap());
    let form = reqwest::multipart::Form::new()
        .part("images", reqwest::multipart::Part::bytes(HEIC.to_vec()).file_name("IMG_0001.HEIC"));
    let answer = reqwest::Client::new().post(format!("{base}/upload")).multipart(form).send().await.unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["code"], "unsupported-format");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("HEIC") && message.contains("formats.heic"), "{message}");
    let stored = store.list(pixbox::storage::Bucket::Temp, "").await.unwrap();
    assert!(stored.iter().all(|k| k.starts_with(".pixbox/")), "{stored:?}");
    running.stop().await;
}

/// A 12 MP HEIC (an iPhone photo's size) decodes within the default 256 MiB; under a 64 MiB cap
/// the same file is stopped as `out-of-memory` at the cap, well before the time budget. And the
/// files of libheif's fuzzing corpus (crashes and hangs found in libheif over the years) each
/// end as an image or a `bad-input`/`unsupported` error, never a crash of the plugin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_12_mp_heic_fits_the_default_memory_is_stopped_at_a_smaller_cap_and_hostile_files_fail_cleanly() {
    use pixbox::sandbox::{SandboxSettings, TransformError};
    use std::time::{Duration, Instant};
    let heic = include_bytes!("fixtures/gradient-12mp.heic");
    let options = common::params(&[("width", "1024"), ("height", "1024"), ("format", "jpeg")]);

    memory_pair(heic, "image/heic", (1024, 768), 160, "12 MP HEIC").await;

    let sandbox = common::sandbox(SandboxSettings::default());
    let plugin = sandbox.load("resize").await.unwrap();

    let corpus = heif_sources().join("libheif/fuzzing/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&corpus).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 30, "{} files in {}", files.len(), corpus.display());
    let (mut images, mut refused) = (0, 0);
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        let started = Instant::now();
        match sandbox.transform(&plugin, &bytes, "image/heic", &options).await {
            Ok(_) => images += 1,
            Err(TransformError::BadInput(_) | TransformError::Unsupported(_)) => refused += 1,
            Err(e) => panic!("{}: {e:?}", file.display()),
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{} took {:?}", file.display(), started.elapsed());
    }
    eprintln!("libheif's fuzzing corpus: {images} images, {refused} refused, of {}", files.len());
}

/// A large JPEG XL renders in bands, so an 18 MP photo fits the default 256 MiB (a whole render
/// would take about 28 bytes a pixel: 480 MiB); under a 64 MiB cap the same photo is stopped as
/// `out-of-memory` at the cap, well before the time budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_18_mp_jpeg_xl_fits_the_default_memory_and_is_stopped_at_a_smaller_cap() {
    let jxl = include_bytes!("fixtures/gradient-18mp.jxl");
    memory_pair(jxl, "image/jxl", (1024, 512), 220, "18 MP JPEG XL").await;
}

/// The memory pair of a large `media_type` file: fitted into a 1024 box as JPEG within the default
/// 256 MiB, to `size`, with a high-water under `peak_mib`; under a 64 MiB cap, stopped as
/// `out-of-memory` at the cap within 5 s of the time the whole call took.
async fn memory_pair(input: &[u8], media_type: &str, size: (u32, u32), peak_mib: usize, label: &str) {
    use pixbox::sandbox::{SandboxSettings, TransformError};
    use std::time::{Duration, Instant};
    let options = common::params(&[("width", "1024"), ("height", "1024"), ("format", "jpeg")]);
    let sandbox = common::sandbox(SandboxSettings::default());
    let plugin = sandbox.load("resize").await.unwrap();
    let out = sandbox.transform(&plugin, input, media_type, &options).await.expect("fits the default 256 MiB");
    assert_eq!((out.header.width, out.header.height), size);
    let peak = out.stats.memory_peak;
    assert!(peak < peak_mib << 20, "{label}: high-water {} MiB", peak >> 20);
    eprintln!("{label} -> 1024 px JPEG: {:?}, high-water {} MiB", out.stats.elapsed, peak >> 20);

    let small = common::sandbox(SandboxSettings { memory_limit_mib: 64, ..SandboxSettings::default() });
    let plugin = small.load("resize").await.unwrap();
    let started = Instant::now();
    let refused = small.transform(&plugin, input, media_type, &options).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(refused, TransformError::OutOfMemory { limit_bytes } if limit_bytes == 64 << 20), "{refused:?}");
    assert!(took < out.stats.elapsed + Duration::from_secs(5), "{label}: stopped after {took:?}");
}
