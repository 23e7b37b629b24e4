//! Benchmark of pixbox's lossy WebP against libwebp's own `cwebp` at the same `quality`, on the
//! real-photo corpus: bytes and error of each, on the same pixels.
//!
//! Run with `cargo bench -p pixbox --bench webp` (needs `cwebp` and `dwebp`: Debian's `webp`;
//! photos come from `scripts/fetch-photos`). Every photo is fitted into 1024x1024 by the `resize`
//! plugin in the sandbox, once as lossless PNG (the pixels both encoders get) and once as WebP at
//! each quality; `cwebp -q <quality>` (its defaults otherwise) encodes the PNG. Both outputs are
//! decoded by `dwebp`, libwebp's own decoder, and compared with the PNG: PSNR over RGB and luma SSIM.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "support/corpus.rs"]
mod corpus;

use image::RgbImage;
use pixbox::sandbox::{Param, Sandbox, SandboxSettings};

#[path = "support/quality.rs"]
#[allow(dead_code)] // only its SSIM is used here
mod quality;

const QUALITIES: [u32; 3] = [50, 75, 90];

fn main() {
    let photos = corpus::jpegs(&["mate-backgrounds", "plasma"]);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let sandbox = Sandbox::new(SandboxSettings { time_budget_ms: 60_000, ..SandboxSettings::default() }).unwrap();
    let plugin = runtime.block_on(sandbox.load("resize")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let transform = |input: &[u8], format: &str, quality: u32| {
        let params: Vec<Param> = [("width", "1024"), ("height", "1024"), ("format", format)]
            .into_iter()
            .map(|(name, value)| Param { name: name.into(), value: value.into() })
            .chain([Param { name: "quality".into(), value: quality.to_string() }])
            .collect();
        let started = Instant::now();
        let bytes = runtime.block_on(sandbox.transform(&plugin, input, "image/jpeg", &params)).unwrap().bytes;
        (bytes, started.elapsed())
    };

    println!(
        "| quality | photos | pixbox KiB | cwebp KiB | bytes pixbox / cwebp | pixbox PSNR dB | cwebp PSNR dB | pixbox SSIM | cwebp SSIM | pixbox ms (sandbox call) | cwebp ms (encode, process) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut rows: Vec<Vec<Row>> = vec![Vec::new(); QUALITIES.len()];
    for path in &photos {
        let input = std::fs::read(path).unwrap();
        let (png, _) = transform(&input, "png", 100);
        let source_png = dir.path().join("source.png");
        std::fs::write(&source_png, &png).unwrap();
        let source = image::load_from_memory(&png).unwrap().to_rgb8();
        for (i, &q) in QUALITIES.iter().enumerate() {
            let (ours, ours_time) = transform(&input, "webp", q);
            let theirs_path = dir.path().join("cwebp.webp");
            let started = Instant::now();
            let status = Command::new("cwebp")
                .args(["-quiet", "-q", &q.to_string()])
                .arg(&source_png)
                .arg("-o")
                .arg(&theirs_path)
                .status()
                .expect("run cwebp (Debian: apt-get install webp)");
            let theirs_time = started.elapsed();
            assert!(status.success(), "cwebp failed on {}", path.display());
            let theirs = std::fs::read(&theirs_path).unwrap();
            let measure = |encoded: &[u8], bytes_time: Duration| {
                let decoded = dwebp(encoded, dir.path());
                assert_eq!(decoded.dimensions(), source.dimensions(), "{}", path.display());
                Measure {
                    bytes: encoded.len(),
                    psnr: psnr(&source, &decoded),
                    ssim: quality::ssim(&luma(&source), &luma(&decoded)).unwrap(),
                    time: bytes_time,
                }
            };
            rows[i].push(Row { ours: measure(&ours, ours_time), theirs: measure(&theirs, theirs_time) });
        }
    }
    for (q, rows) in QUALITIES.iter().zip(&rows) {
        let sum = |f: &dyn Fn(&Row) -> f64| rows.iter().map(f).sum::<f64>();
        let mean = |f: &dyn Fn(&Row) -> f64| sum(f) / rows.len() as f64;
        let median = |f: &dyn Fn(&Row) -> f64| {
            let mut values: Vec<f64> = rows.iter().map(f).collect();
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        println!(
            "| {q} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.4} | {:.4} | {:.0} | {:.0} |",
            rows.len(),
            sum(&|r| r.ours.bytes as f64) / 1024.0,
            sum(&|r| r.theirs.bytes as f64) / 1024.0,
            sum(&|r| r.ours.bytes as f64) / sum(&|r| r.theirs.bytes as f64),
            mean(&|r| r.ours.psnr),
            mean(&|r| r.theirs.psnr),
            mean(&|r| r.ours.ssim),
            mean(&|r| r.theirs.ssim),
            median(&|r| ms(r.ours.time)),
            median(&|r| ms(r.theirs.time)),
        );
    }
    println!();
    println!("KiB: the whole corpus at that quality; PSNR and SSIM: mean per photo; ms: median per photo.");
}

#[derive(Clone)]
struct Row {
    ours: Measure,
    theirs: Measure,
}

#[derive(Clone)]
struct Measure {
    bytes: usize,
    psnr: f64,
    ssim: f64,
    time: Duration,
}

/// A WebP decoded by libwebp's `dwebp` (to PNG), so both encoders are judged by the same decoder.
fn dwebp(encoded: &[u8], dir: &Path) -> RgbImage {
    let (webp, png) = (dir.join("decode.webp"), dir.join("decode.png"));
    std::fs::write(&webp, encoded).unwrap();
    let status = Command::new("dwebp").arg("-quiet").arg(&webp).arg("-o").arg(&png).status().expect("run dwebp");
    assert!(status.success(), "dwebp cannot decode the output");
    image::open(&png).unwrap().to_rgb8()
}

fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
    let squared: f64 = a.as_raw().iter().zip(b.as_raw()).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum();
    let mse = squared / a.as_raw().len() as f64;
    10.0 * (255.0f64 * 255.0 / mse.max(1e-10)).log10()
}

fn luma(image: &RgbImage) -> image::GrayImage {
    image::DynamicImage::ImageRgb8(image.clone()).to_luma8()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
