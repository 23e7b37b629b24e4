//! Benchmark of reading the formats pixbox reads but does not write, each against its own native
//! decoder and libvips, same run, same files: JPEG XL (the `resize` plugin in the sandbox with
//! jxl-oxide, pure Rust, one thread; libjxl's `djxl`, one thread, decode only) and HEIC (the plugin
//! with libheif and libde265 compiled into it; libheif's `heif-convert`, decode and JPEG).
//! `vipsthumbnail` has libjxl and libheif inside: decode and resize.
//!
//! Run with `cargo bench -p pixbox --bench inputs` (needs `cjxl`/`djxl` from Debian's libjxl-tools,
//! `heif-enc`/`heif-convert` from libheif-examples, `vipsthumbnail` from libvips-tools and GNU time;
//! photos from `scripts/fetch-photos`); `-- jxl` or `-- heic` runs one format. Seven photos of the
//! corpus are encoded once (`cjxl -d 1`, its default effort, what cameras and converters write;
//! `heif-enc` at its default quality 50 with x265), then each is fitted into 1024x1024 as JPEG q85
//! by pixbox and by vips, and decoded by the native tool. Medians of 3 turns, taken in turns.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "support/corpus.rs"]
mod corpus;

use pixbox::sandbox::{LoadedPlugin, Param, Sandbox, SandboxSettings};

#[path = "support/peer.rs"]
mod peer;
use peer::{median, run};

const TURNS: usize = 3;
const PHOTOS: usize = 7;

/// One input format: how a photo becomes one, and its native decoder's command.
struct Input {
    name: &'static str,
    extension: &'static str,
    media_type: &'static str,
    native: &'static str,
    /// Encodes `photo` into `out`.
    encode: fn(&Path, &Path) -> Command,
    /// Decodes `input` into a file in `dir` with the native tool.
    decode: fn(&Path, &Path) -> Command,
}

const INPUTS: [Input; 2] = [
    Input {
        name: "jxl",
        extension: "jxl",
        media_type: "image/jxl",
        native: "djxl ms (decode only)",
        encode: |photo, out| {
            let mut command = Command::new("cjxl");
            command.arg(photo).arg(out).args(["-d", "1", "--quiet"]);
            command
        },
        decode: |input, dir| {
            let mut command = Command::new("djxl");
            command.arg(input).arg(dir.join("djxl.ppm")).args(["--num_threads=0", "--quiet"]);
            command
        },
    },
    Input {
        name: "heic",
        extension: "heic",
        media_type: "image/heic",
        native: "heif-convert ms (decode + JPEG)",
        encode: |photo, out| {
            let mut command = Command::new("heif-enc");
            command.arg(photo).arg("-o").arg(out);
            command
        },
        decode: |input, dir| {
            let mut command = Command::new("heif-convert");
            command.args(["-q", "85"]).arg(input).arg(dir.join("native.jpg")).stdout(std::process::Stdio::null());
            command
        },
    },
];

fn main() {
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let photos = corpus::jpegs(&["mate-backgrounds"]);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let sandbox = Sandbox::new(SandboxSettings { time_budget_ms: 60_000, ..SandboxSettings::default() }).unwrap();
    let plugin = runtime.block_on(sandbox.load("resize")).unwrap();
    for input in INPUTS.iter().filter(|i| only.is_empty() || only.iter().any(|o| o == i.name)) {
        println!("\n{}:\n", input.name);
        table(input, &photos[..PHOTOS.min(photos.len())], &runtime, &sandbox, &plugin);
    }
}

fn table(
    input: &Input,
    photos: &[std::path::PathBuf],
    runtime: &tokio::runtime::Runtime,
    sandbox: &Sandbox,
    plugin: &LoadedPlugin,
) {
    let dir = tempfile::tempdir().unwrap();
    let params: Vec<Param> = [("width", "1024"), ("height", "1024"), ("format", "jpeg"), ("quality", "85")]
        .into_iter()
        .map(|(name, value)| Param { name: name.into(), value: value.into() })
        .collect();
    let native = input.native.split(' ').next().unwrap();
    println!(
        "| photo | pixels | {} KiB | pixbox ms (decode + resize + JPEG) | vips ms (same) | {} | pixbox / vips | pixbox / {native} | pixbox MiB (call high-water) | vips MiB (peak RSS) | {native} MiB (peak RSS) |",
        input.name.to_uppercase(),
        input.native,
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let (mut all_ours, mut all_vips, mut all_native) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for photo in photos {
        let file = dir.path().join(format!("in.{}", input.extension));
        let made = (input.encode)(photo, &file).output().expect("run the encoder");
        assert!(made.status.success(), "{} could not encode {}", input.name, photo.display());
        let bytes = std::fs::read(&file).unwrap();
        let header = pixbox::imaging::probe(&bytes).unwrap();
        let (mut ours, mut vips, mut native) = (Vec::new(), Vec::new(), Vec::new());
        let (mut ours_peak, mut vips_rss, mut native_rss) = (0, 0, 0);
        for _ in 0..TURNS {
            let started = Instant::now();
            let out = runtime
                .block_on(sandbox.transform(plugin, &bytes, input.media_type, &params))
                .unwrap_or_else(|e| panic!("{}: {e}", photo.display()));
            ours.push(started.elapsed());
            ours_peak = ours_peak.max(out.stats.memory_peak);

            let vips_out = dir.path().join("vips.jpg");
            let (took, rss) = run(Command::new("vipsthumbnail")
                .arg(&file)
                .args(["-s", "1024x1024", "-o"])
                .arg(format!("{}[Q=85]", vips_out.display()))
                .env("VIPS_CONCURRENCY", "1"));
            vips.push(took);
            vips_rss = vips_rss.max(rss);

            let (took, rss) = run(&mut (input.decode)(&file, dir.path()));
            native.push(took);
            native_rss = native_rss.max(rss);
        }
        let (ours, vips, native) = (median(&mut ours), median(&mut vips), median(&mut native));
        all_ours += ours;
        all_vips += vips;
        all_native += native;
        let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1e3);
        println!(
            "| {} | {:.1} MP | {} | {} | {} | {} | {:.2} | {:.2} | {} | {} | {} |",
            photo.file_name().unwrap().to_string_lossy(),
            header.pixels() as f64 / 1e6,
            bytes.len() >> 10,
            ms(ours),
            ms(vips),
            ms(native),
            ours.as_secs_f64() / vips.as_secs_f64(),
            ours.as_secs_f64() / native.as_secs_f64(),
            ours_peak >> 20,
            vips_rss >> 20,
            native_rss >> 20,
        );
    }
    println!(
        "| **all** | | | {:.0} | {:.0} | {:.0} | **{:.2}** | **{:.2}** | | | |",
        all_ours.as_secs_f64() * 1e3,
        all_vips.as_secs_f64() * 1e3,
        all_native.as_secs_f64() * 1e3,
        all_ours.as_secs_f64() / all_vips.as_secs_f64(),
        all_ours.as_secs_f64() / all_native.as_secs_f64(),
    );
}
