//! Benchmark on real photographs: the default plugin in the sandbox vs the same code natively vs
//! `vipsthumbnail`, per format, with the quality each one gives.
//!
//! Run with `cargo bench -p pixbox --bench photos`; it fetches the photos with
//! `scripts/fetch-photos` (Debian packages, cached outside the repository). Every photo is fitted
//! into 1024x1024 (JPEG q85, PNG, lossy WebP q85: the plugin's defaults; lossless WebP before 2026-11-28) by:
//! - the `resize` plugin in the sandbox, compiled once, one call per photo (as the worker runs it);
//! - the same `imagekit` code built natively (the sandbox tax is the ratio of the two);
//! - `vipsthumbnail` with `VIPS_CONCURRENCY=1`, one process per photo, and once more with all the
//!   photos of a format in one process (no start-up cost: the stricter comparison);
//! - with `PIXBOX_BENCH_KEEP_RESIDENT_MIB=N`, the sandbox keeps N MiB of each slot's memory
//!   mapped between calls instead of the default 128 (`sandbox.keep_resident_mib`; 0: none);
//! - optionally the plugin of another build (`PIXBOX_BASELINE_PLUGIN=path/to/resize.wasm`), to
//!   compare with an earlier version in the same run.
//!
//! Quality is luma PSNR and SSIM of each output against a reference made from the full-size decode
//! with a Lanczos3 resize (no shrink-on-load, no encoding), and against vips' own output.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "support/corpus.rs"]
mod corpus;

use image::GrayImage;
use pixbox::sandbox::{LoadedPlugin, Param, Sandbox, SandboxSettings};

#[path = "support/quality.rs"]
mod quality;
use quality::{reference, ssim};

const ROUNDS: usize = 3;

struct Photo {
    path: PathBuf,
    format: &'static str,
    bytes: Vec<u8>,
    width: u32,
    height: u32,
    progressive: bool,
}

/// Median time of one pipeline on one photo, and what it produced.
struct Run {
    time: Duration,
    output: Vec<u8>,
}

fn main() {
    let cache = corpus::cache();
    let photos = corpus(&cache);
    let vips = which("vipsthumbnail").expect("vipsthumbnail is needed (apt-get install libvips-tools)");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // The defaults, except `PIXBOX_BENCH_KEEP_RESIDENT_MIB` (pooling keep-resident).
    let defaults = SandboxSettings::default();
    let keep_resident_mib =
        std::env::var("PIXBOX_BENCH_KEEP_RESIDENT_MIB").map_or(defaults.keep_resident_mib, |v| v.parse().unwrap());
    let sandbox = Sandbox::new(SandboxSettings { keep_resident_mib, ..defaults }).unwrap();
    let plugin = runtime.block_on(sandbox.load("resize")).unwrap();
    let baseline = std::env::var_os("PIXBOX_BASELINE_PLUGIN").map(|path| {
        let bytes = std::fs::read(&path).expect("read PIXBOX_BASELINE_PLUGIN");
        runtime.block_on(sandbox.load_bytes("baseline", bytes)).unwrap()
    });
    let params = vec![
        Param { name: "width".into(), value: "1024".into() },
        Param { name: "height".into(), value: "1024".into() },
    ];
    let native_options = imagekit::Options { width: 1024, height: 1024, ..imagekit::Options::default() };
    let out_dir = tempfile::tempdir().unwrap();
    let sandboxed = |plugin: &LoadedPlugin, photo: &Photo, peak: &mut usize| {
        median(|| {
            let out =
                runtime.block_on(sandbox.transform(plugin, &photo.bytes, media_type(photo.format), &params)).unwrap();
            *peak = (*peak).max(out.stats.memory_peak);
            out.bytes
        })
    };

    println!(
        "| photo | MP | sandbox ms | native ms | vips ms (process) | sandbox / vips | tax | peak MiB | PSNR ref dB | PSNR vips dB | SSIM ref | baseline ms | baseline PSNR ref dB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut totals: BTreeMap<&str, [Duration; 4]> = BTreeMap::new();
    let mut worst_psnr_drop = f64::NEG_INFINITY;
    for photo in &photos {
        let mut peak = 0;
        let ours = sandboxed(&plugin, photo, &mut peak);
        let native = median(|| imagekit::resize(&photo.bytes, &native_options).unwrap().bytes);
        let vips_out = out_dir.path().join(format!("out.{}", photo.format));
        let vips_run = median(|| {
            run_vips(&vips, &[&photo.path], &vips_out, photo.format);
            std::fs::read(&vips_out).unwrap()
        });
        let reference = reference(&photo.bytes, &native_options);
        let ours_luma = luma(&ours.output);
        let vips_luma = luma(&vips_run.output);
        let psnr_ref = psnr(&ours_luma, &reference);
        let psnr_vips = psnr(&ours_luma, &vips_luma);
        let ssim_ref = ssim(&ours_luma, &reference);
        let total = totals.entry(group(photo)).or_default();
        total[0] += ours.time;
        total[1] += native.time;
        total[2] += vips_run.time;
        let (base_ms, base_psnr) = match &baseline {
            Some(base) => {
                let run = sandboxed(base, photo, &mut 0);
                total[3] += run.time;
                let base_psnr = psnr(&luma(&run.output), &reference);
                if let (Some(ours), Some(base)) = (psnr_ref, base_psnr) {
                    worst_psnr_drop = worst_psnr_drop.max(base - ours);
                }
                (format!("{:.0}", ms(run.time)), db(base_psnr))
            }
            None => ("n/a".into(), "n/a".into()),
        };
        println!(
            "| {} | {:.1} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.1} | {} | {} | {} | {base_ms} | {base_psnr} |",
            name(photo),
            f64::from(photo.width) * f64::from(photo.height) / 1e6,
            ms(ours.time),
            ms(native.time),
            ms(vips_run.time),
            ratio(ours.time, vips_run.time),
            ratio(ours.time, native.time),
            peak as f64 / f64::from(1 << 20),
            db(psnr_ref),
            db(psnr_vips),
            ssim_ref.map_or("n/a".into(), |s| format!("{s:.4}")),
        );
    }

    // vips with every photo of a group in one process: no per-process start-up in its time.
    let mut batched: BTreeMap<&str, Duration> = BTreeMap::new();
    for group_name in totals.keys() {
        let members: Vec<&Photo> = photos.iter().filter(|p| group(p) == *group_name).collect();
        let paths: Vec<&Path> = members.iter().map(|p| p.path.as_path()).collect();
        let pattern = out_dir.path().join(format!("batch-%s.{}", members[0].format));
        let run = median(|| {
            run_vips(&vips, &paths, &pattern, members[0].format);
            Vec::new()
        });
        batched.insert(group_name, run.time);
    }

    println!();
    println!(
        "| format | photos | sandbox ms | native ms | vips ms (process per photo) | vips ms (one process) | sandbox / vips (process) | sandbox / vips (one process) | sandbox tax | baseline sandbox ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (group_name, [ours, native, vips_time, base]) in &totals {
        let count = photos.iter().filter(|p| group(p) == *group_name).count();
        let one_process = batched[group_name];
        println!(
            "| {group_name} | {count} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            ms(*ours),
            ms(*native),
            ms(*vips_time),
            ms(one_process),
            ratio(*ours, *vips_time),
            ratio(*ours, one_process),
            ratio(*ours, *native),
            if baseline.is_some() { format!("{:.0}", ms(*base)) } else { "n/a".into() },
        );
    }
    if baseline.is_some() {
        println!();
        println!(
            "Largest luma PSNR drop against the baseline plugin (reference: full decode + Lanczos3): {worst_psnr_drop:.2} dB"
        );
    }
}

/// The photos from `scripts/fetch-photos`, 2 to 24 MP, in a stable order.
fn corpus(cache: &Path) -> Vec<Photo> {
    let mut paths: Vec<PathBuf> = ["mate-backgrounds", "plasma", "derived"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(cache.join(dir)).unwrap().map(|e| e.unwrap().path()))
        .collect();
    paths.sort();
    let only = std::env::var("PIXBOX_BENCH_ONLY").unwrap_or_default();
    paths.retain(|p| p.to_string_lossy().contains(&only));
    paths
        .into_iter()
        .filter_map(|path| {
            let format = match path.extension()?.to_str()? {
                "jpg" => "jpg",
                "png" => "png",
                "webp" => "webp",
                _ => return None,
            };
            let bytes = std::fs::read(&path).unwrap();
            let header = pixbox::imaging::probe(&bytes).unwrap();
            let (width, height) = (header.width, header.height);
            let megapixels = f64::from(width) * f64::from(height) / 1e6;
            let progressive = format == "jpg" && is_progressive(&bytes);
            (2.0..=24.5).contains(&megapixels).then_some(Photo { path, format, bytes, width, height, progressive })
        })
        .collect()
}

/// A JPEG is progressive when its frame header is SOF2 (0xFFC2).
fn is_progressive(jpeg: &[u8]) -> bool {
    let mut i = 2;
    while i + 4 <= jpeg.len() && jpeg[i] == 0xFF {
        let marker = jpeg[i + 1];
        if matches!(marker, 0xC0 | 0xC1) {
            return false;
        }
        if marker == 0xC2 {
            return true;
        }
        i += 2 + usize::from(u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]));
    }
    false
}

fn group(photo: &Photo) -> &'static str {
    match (photo.format, photo.progressive) {
        ("jpg", false) => "JPEG baseline",
        ("jpg", true) => "JPEG progressive",
        ("png", _) => "PNG",
        _ => "WebP",
    }
}

fn name(photo: &Photo) -> String {
    let file = photo.path.file_name().unwrap().to_string_lossy();
    let folder = photo.path.parent().unwrap().file_name().unwrap().to_string_lossy();
    format!("{folder}/{file}{}", if photo.progressive { " (progressive)" } else { "" })
}

fn media_type(format: &str) -> &'static str {
    match format {
        "jpg" => "image/jpeg",
        "png" => "image/png",
        _ => "image/webp",
    }
}

/// `vipsthumbnail` on one thread, with the plugin's defaults (JPEG q85, lossless WebP).
fn run_vips(vips: &Path, inputs: &[&Path], output: &Path, format: &str) {
    let options = match format {
        "jpg" => "[Q=85,strip]",
        "webp" => "[lossless,strip]",
        _ => "[strip]",
    };
    let status = Command::new(vips)
        .env("VIPS_CONCURRENCY", "1")
        .args(inputs)
        .args(["--size", "1024x1024", "-o"])
        .arg(format!("{}{options}", output.display()))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "vipsthumbnail failed on {inputs:?}");
}

/// One warm-up run, then the median of `ROUNDS`.
fn median(mut f: impl FnMut() -> Vec<u8>) -> Run {
    let mut output = f();
    let mut times: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            output = std::hint::black_box(f());
            started.elapsed()
        })
        .collect();
    times.sort();
    Run { time: times[ROUNDS / 2], output }
}

fn luma(encoded: &[u8]) -> GrayImage {
    image::load_from_memory(encoded).unwrap().to_luma8()
}

/// Peak signal-to-noise ratio of two luma planes, or `None` when their sizes differ.
fn psnr(a: &GrayImage, b: &GrayImage) -> Option<f64> {
    if a.dimensions() != b.dimensions() {
        return None;
    }
    let sum: f64 = a.as_raw().iter().zip(b.as_raw()).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum();
    let mse = sum / a.as_raw().len() as f64;
    Some(if mse == 0.0 { 99.0 } else { 10.0 * (255.0f64 * 255.0 / mse).log10() })
}

fn db(value: Option<f64>) -> String {
    value.map_or("n/a".into(), |v| format!("{v:.2}"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(program)).find(|p| p.exists())
}
