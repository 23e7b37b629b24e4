//! Benchmark of reading JPEG XL: the `resize` plugin in the sandbox (jxl-oxide, pure Rust, one
//! thread) against libjxl's own decoder (`djxl`, one thread: decode only) and libvips
//! (`vipsthumbnail`, libjxl inside: decode and resize), same run, same files.
//!
//! Run with `cargo bench -p pixbox --bench inputs` (needs `cjxl`/`djxl` from Debian's libjxl-tools,
//! `vipsthumbnail` from libvips-tools and GNU time; photos from `scripts/fetch-photos`). Seven photos
//! of the corpus are encoded once with `cjxl -d 1` (its default effort: what cameras and
//! converters write), then each is fitted into 1024x1024 as JPEG q85 by pixbox and by vips, and
//! decoded to PPM by djxl. Medians of 3 turns, taken in turns.

use std::process::Command;
use std::time::{Duration, Instant};

#[path = "support/corpus.rs"]
mod corpus;

use pixbox::sandbox::{Param, Sandbox, SandboxSettings};

#[path = "support/peer.rs"]
mod peer;
use peer::{median, run};

const TURNS: usize = 3;
const PHOTOS: usize = 7;

fn main() {
    let photos = corpus::jpegs(&["mate-backgrounds"]);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let sandbox = Sandbox::new(SandboxSettings { time_budget_ms: 60_000, ..SandboxSettings::default() }).unwrap();
    let plugin = runtime.block_on(sandbox.load("resize")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let params: Vec<Param> = [("width", "1024"), ("height", "1024"), ("format", "jpeg"), ("quality", "85")]
        .into_iter()
        .map(|(name, value)| Param { name: name.into(), value: value.into() })
        .collect();

    println!(
        "| photo | pixels | JXL KiB | pixbox ms (decode + resize + JPEG) | vips ms (same) | djxl ms (decode only) | pixbox / vips | pixbox / djxl | pixbox MiB (call high-water) | vips MiB (peak RSS) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let (mut all_ours, mut all_vips, mut all_djxl) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for photo in photos.iter().take(PHOTOS) {
        let jxl = dir.path().join("in.jxl");
        let made = Command::new("cjxl").arg(photo).arg(&jxl).args(["-d", "1", "--quiet"]).output().expect("run cjxl");
        assert!(made.status.success(), "cjxl failed on {}", photo.display());
        let input = std::fs::read(&jxl).unwrap();
        let header = pixbox::imaging::probe(&input).unwrap();
        let (mut ours, mut vips, mut djxl) = (Vec::new(), Vec::new(), Vec::new());
        let (mut ours_peak, mut vips_rss) = (0, 0);
        for _ in 0..TURNS {
            let started = Instant::now();
            let out = runtime
                .block_on(sandbox.transform(&plugin, &input, "image/jxl", &params))
                .unwrap_or_else(|e| panic!("{}: {e}", photo.display()));
            ours.push(started.elapsed());
            ours_peak = ours_peak.max(out.stats.memory_peak);

            let vips_out = dir.path().join("vips.jpg");
            let (took, rss) = run(Command::new("vipsthumbnail")
                .arg(&jxl)
                .args(["-s", "1024x1024", "-o"])
                .arg(format!("{}[Q=85]", vips_out.display()))
                .env("VIPS_CONCURRENCY", "1"));
            vips.push(took);
            vips_rss = vips_rss.max(rss);

            let (took, _) = run(Command::new("djxl")
                .arg(&jxl)
                .arg(dir.path().join("djxl.ppm"))
                .args(["--num_threads=0", "--quiet"]));
            djxl.push(took);
        }
        let (ours, vips, djxl) = (median(&mut ours), median(&mut vips), median(&mut djxl));
        all_ours += ours;
        all_vips += vips;
        all_djxl += djxl;
        let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1e3);
        println!(
            "| {} | {:.1} MP | {} | {} | {} | {} | {:.2} | {:.2} | {} | {} |",
            photo.file_name().unwrap().to_string_lossy(),
            header.pixels() as f64 / 1e6,
            input.len() >> 10,
            ms(ours),
            ms(vips),
            ms(djxl),
            ours.as_secs_f64() / vips.as_secs_f64(),
            ours.as_secs_f64() / djxl.as_secs_f64(),
            ours_peak >> 20,
            vips_rss >> 20,
        );
    }
    println!(
        "| **all** | | | {:.0} | {:.0} | {:.0} | **{:.2}** | **{:.2}** | | |",
        all_ours.as_secs_f64() * 1e3,
        all_vips.as_secs_f64() * 1e3,
        all_djxl.as_secs_f64() * 1e3,
        all_ours.as_secs_f64() / all_vips.as_secs_f64(),
        all_ours.as_secs_f64() / all_djxl.as_secs_f64(),
    );
}
