//! Benchmark of what a page costs: the three sizes a responsive page asks for (2048, 1024 and 256
//! pixel boxes, JPEG q85) made by one call of the `resize` plugin in the sandbox (one decode for
//! all three), against `vipsthumbnail` making them in three passes, each pass one process over
//! every photo (`VIPS_CONCURRENCY=1`: no start-up per photo, libvips' shrink-on-load per size).
//! Then the published bar for an image server: CPU per 2 MP JPEG fitted into 500 pixels (about
//! 20 ms for imgproxy and imagor), for pixbox and for vips in one process over the same photos.
//!
//! Run with `cargo bench -p pixbox --bench renditions` (needs `vipsthumbnail` from libvips-tools
//! and GNU time; photos from `scripts/fetch-photos`). Medians of 3 rounds after a warm-up, taken in
//! turns.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "support/corpus.rs"]
mod corpus;
#[path = "support/cpu.rs"]
mod cpu;
use cpu::cpu_time;

use pixbox::sandbox::{Param, RenditionRequest, Sandbox, SandboxSettings};

const ROUNDS: usize = 3;
const SIZES: [u32; 3] = [2048, 1024, 256];

fn main() {
    let mut photos = corpus::jpegs(&["mate-backgrounds", "plasma"]);
    photos.retain(|p| !p.to_string_lossy().contains("derived"));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let sandbox = Sandbox::new(SandboxSettings { time_budget_ms: 60_000, ..SandboxSettings::default() }).unwrap();
    let plugin = runtime.block_on(sandbox.load("resize")).unwrap();
    let inputs: Vec<Vec<u8>> = photos.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let dir = tempfile::tempdir().unwrap();

    let requests: Vec<RenditionRequest> = SIZES
        .iter()
        .map(|size| RenditionRequest {
            name: size.to_string(),
            options: params(&[("width", &size.to_string()), ("height", &size.to_string()), ("format", "jpeg")]),
        })
        .collect();
    let pixbox_set = || {
        let (started, cpu) = (Instant::now(), cpu_time());
        for input in &inputs {
            let out = runtime.block_on(sandbox.render(&plugin, input, "image/jpeg", &requests)).unwrap();
            assert_eq!(out.images.len(), SIZES.len());
        }
        (started.elapsed(), cpu_time() - cpu)
    };
    let vips_set = || {
        let mut total = (Duration::ZERO, Duration::ZERO);
        for size in SIZES {
            let (wall, cpu) = vips(&photos, size, &dir.path().join(format!("%s-{size}.jpg")));
            total = (total.0 + wall, total.1 + cpu);
        }
        total
    };
    let (ours, theirs) = in_turns(pixbox_set, vips_set);
    println!("Rendition set (2048, 1024, 256 px; JPEG q85), {} JPEG photos:\n", photos.len());
    println!("| | pixbox (one call per photo) | vips (three passes, one process each) | pixbox / vips |");
    println!("|---|---:|---:|---:|");
    row("wall ms", ours.0, theirs.0);
    row("CPU ms", ours.1, theirs.1);

    // The published bar: CPU per 2 MP JPEG into a 500-pixel box.
    let small: Vec<usize> = (0..photos.len())
        .filter(|&i| {
            let header = pixbox::imaging::probe(&inputs[i]).unwrap();
            (1_500_000..=2_500_000).contains(&header.pixels())
        })
        .collect();
    let options = params(&[("width", "500"), ("height", "500"), ("format", "jpeg")]);
    let pixbox_500 = || {
        let (started, cpu) = (Instant::now(), cpu_time());
        for &i in &small {
            runtime.block_on(sandbox.transform(&plugin, &inputs[i], "image/jpeg", &options)).unwrap();
        }
        (started.elapsed(), cpu_time() - cpu)
    };
    let chosen: Vec<PathBuf> = small.iter().map(|&i| photos[i].clone()).collect();
    let vips_500 = || vips(&chosen, 500, &dir.path().join("%s-500.jpg"));
    let (ours, theirs) = in_turns(pixbox_500, vips_500);
    let per = |d: Duration| d.as_secs_f64() * 1e3 / small.len() as f64;
    println!("\nCPU per 2 MP JPEG into a 500-pixel box ({} photos of 1.5-2.5 MP):\n", small.len());
    println!("| | pixbox | vips (one process) | published (imgproxy, imagor) |");
    println!("|---|---:|---:|---:|");
    println!("| CPU ms per image | {:.1} | {:.1} | ~20 |", per(ours.1), per(theirs.1));
    println!("| wall ms per image | {:.1} | {:.1} | |", per(ours.0), per(theirs.0));
}

fn params(pairs: &[(&str, &str)]) -> Vec<Param> {
    pairs.iter().map(|(name, value)| Param { name: (*name).into(), value: (*value).into() }).collect()
}

fn row(label: &str, ours: Duration, theirs: Duration) {
    println!(
        "| {label} | {:.0} | {:.0} | **{:.2}** |",
        ours.as_secs_f64() * 1e3,
        theirs.as_secs_f64() * 1e3,
        ours.as_secs_f64() / theirs.as_secs_f64()
    );
}

/// A warm-up of each, then `ROUNDS` of each in turns; the median (by wall time) of each.
fn in_turns(
    mut a: impl FnMut() -> (Duration, Duration),
    mut b: impl FnMut() -> (Duration, Duration),
) -> ((Duration, Duration), (Duration, Duration)) {
    a();
    b();
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        xs.push(a());
        ys.push(b());
    }
    xs.sort();
    ys.sort();
    (xs[ROUNDS / 2], ys[ROUNDS / 2])
}

/// `vipsthumbnail` over every photo in one process into a `size` box, JPEG q85: wall time and the
/// process's CPU time (user + system, from GNU time).
fn vips(photos: &[PathBuf], size: u32, pattern: &Path) -> (Duration, Duration) {
    let times = tempfile::NamedTempFile::new().unwrap();
    let started = Instant::now();
    let status = Command::new("/usr/bin/time")
        .args(["-f", "%U %S", "-o"])
        .arg(times.path())
        .arg("vipsthumbnail")
        .env("VIPS_CONCURRENCY", "1")
        .args(photos)
        .args(["--size", &format!("{size}x{size}"), "-o"])
        .arg(format!("{}[Q=85,strip]", pattern.display()))
        .status()
        .expect("run GNU time (Debian: time) and vipsthumbnail (libvips-tools)");
    let wall = started.elapsed();
    assert!(status.success(), "vipsthumbnail failed");
    let text = std::fs::read_to_string(times.path()).unwrap();
    let cpu: f64 = text.split_whitespace().filter_map(|s| s.parse::<f64>().ok()).sum();
    (wall, Duration::from_secs_f64(cpu))
}
