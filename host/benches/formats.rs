//! Benchmark of the output formats on real photographs: size and speed of lossy WebP and AVIF
//! against JPEG at equal quality, made by the default plugin in the sandbox, with libvips' own
//! AVIF encoder (`vipsthumbnail`, libheif + libaom) as the peer.
//!
//! Run with `cargo bench -p pixbox --bench formats` (needs `vips`/`vipsthumbnail` with HEIF
//! support: Debian's libvips-tools; photos come from `scripts/fetch-photos`). Every photo is
//! fitted into 1024x1024. "Equal quality" is measured, not assumed: JPEG at the default q85 sets
//! the SSIM to reach (luma, against a full-size decode resized with Lanczos3), and for WebP and
//! AVIF the lowest `quality` (in steps of 5) whose output reaches it is used. AVIF outputs are
//! decoded with `vips` (pixbox has no AV1 decoder).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "support/corpus.rs"]
mod corpus;

use image::GrayImage;
use pixbox::sandbox::{Param, Sandbox, SandboxSettings};

#[path = "support/quality.rs"]
mod quality;

const ROUNDS: usize = 3;
const PHOTOS: [&str; 6] = [
    "plasma/Autumn.jpg",
    "plasma/ColorfulCups.jpg",
    "plasma/Kite.jpg",
    "plasma/Path.jpg",
    "mate-backgrounds/Aqua.jpg",
    "mate-backgrounds/LadyBird.jpg",
];

fn main() {
    let cache = corpus::cache();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let sandbox = Sandbox::new(SandboxSettings { time_budget_ms: 60_000, ..SandboxSettings::default() }).unwrap();
    let plugin = runtime.block_on(sandbox.load("resize")).unwrap();
    let dir = tempfile::tempdir().unwrap();

    println!(
        "| photo | JPEG q85 KiB | SSIM | ms | WebP q | KiB | size / JPEG | ms | AVIF q | KiB | size / JPEG | ms | vips AVIF KiB | SSIM | ms (process) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let (mut webp_sizes, mut avif_sizes, mut webp_times, mut avif_times) = (vec![], vec![], vec![], vec![]);
    for name in PHOTOS {
        let path = cache.join(name);
        let input = std::fs::read(&path).unwrap();
        let reference =
            quality::reference(&input, &imagekit::Options { width: 1024, height: 1024, ..Default::default() });
        let transform = |format: &str, quality: u32| {
            let params: Vec<Param> = [("width", "1024".to_string()), ("height", "1024".into())]
                .into_iter()
                .chain([("format", format.to_string()), ("quality", quality.to_string())])
                .map(|(name, value)| Param { name: name.into(), value })
                .collect();
            let mut output = Vec::new();
            let mut times: Vec<Duration> = (0..=ROUNDS)
                .map(|_| {
                    let started = Instant::now();
                    output = runtime.block_on(sandbox.transform(&plugin, &input, "image/jpeg", &params)).unwrap().bytes;
                    started.elapsed()
                })
                .skip(1)
                .collect();
            times.sort();
            (output, times[ROUNDS / 2])
        };
        let quality_of =
            |encoded: &[u8], ext: &str| quality::ssim(&decode(encoded, ext, dir.path()), &reference).unwrap_or(0.0);
        let (jpeg, jpeg_time) = transform("jpeg", 85);
        let target = quality_of(&jpeg, "jpg");
        // The lowest quality that reaches JPEG's SSIM, found on the plugin's code built natively.
        let matched = |format: &str, ext: &str| {
            let native = |q: u32| {
                let options = imagekit::Options {
                    width: 1024,
                    height: 1024,
                    quality: q as u8,
                    format: if format == "avif" { imagekit::OutputFormat::Avif } else { imagekit::OutputFormat::Webp },
                    ..imagekit::Options::default()
                };
                imagekit::resize(&input, &options).unwrap().bytes
            };
            (30..=100).step_by(5).find(|&q| quality_of(&native(q), ext) >= target).unwrap_or(100)
        };
        let webp_q = matched("webp", "webp");
        let (webp, webp_time) = transform("webp", webp_q);
        let avif_q = matched("avif", "avif");
        let (avif, avif_time) = transform("avif", avif_q);
        let vips_out = dir.path().join("vips.avif");
        let started = Instant::now();
        let status = Command::new("vipsthumbnail")
            .env("VIPS_CONCURRENCY", "1")
            .arg(&path)
            .args(["--size", "1024x1024", "-o"])
            .arg(format!("{}[Q=50,effort=2]", vips_out.display()))
            .status()
            .unwrap();
        let vips_time = started.elapsed();
        assert!(status.success(), "vipsthumbnail failed on {name}");
        let vips_avif = std::fs::read(&vips_out).unwrap();
        let kib = |bytes: &[u8]| bytes.len() as f64 / 1024.0;
        let ratio = |bytes: &[u8]| bytes.len() as f64 / jpeg.len() as f64;
        webp_sizes.push(ratio(&webp));
        avif_sizes.push(ratio(&avif));
        webp_times.push(webp_time.as_secs_f64() / jpeg_time.as_secs_f64());
        avif_times.push(avif_time.as_secs_f64() / jpeg_time.as_secs_f64());
        println!(
            "| {name} | {:.0} | {target:.4} | {:.0} | {webp_q} | {:.0} | {:.2} | {:.0} | {avif_q} | {:.0} | {:.2} | {:.0} | {:.0} | {:.4} | {:.0} |",
            kib(&jpeg),
            ms(jpeg_time),
            kib(&webp),
            ratio(&webp),
            ms(webp_time),
            kib(&avif),
            ratio(&avif),
            ms(avif_time),
            kib(&vips_avif),
            quality_of(&vips_avif, "avif"),
            ms(vips_time),
        );
    }
    println!();
    println!(
        "Median at JPEG q85's SSIM: WebP {:.2}x the bytes and {:.2}x the time of JPEG; AVIF {:.2}x the bytes and {:.2}x the time.",
        median(webp_sizes),
        median(webp_times),
        median(avif_sizes),
        median(avif_times)
    );
}

/// Luma of an encoded output; AVIF through `vips` (to PNG).
fn decode(encoded: &[u8], ext: &str, dir: &Path) -> GrayImage {
    if ext != "avif" {
        return image::load_from_memory(encoded).unwrap().to_luma8();
    }
    let (avif, png) = (dir.join("decode.avif"), dir.join("decode.png"));
    std::fs::write(&avif, encoded).unwrap();
    let status = Command::new("vips").arg("copy").arg(&avif).arg(&png).status().unwrap();
    assert!(status.success(), "vips cannot decode the AVIF (is libheif's AV1 decoder installed?)");
    image::open(&png).unwrap().to_luma8()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
