//! Benchmark: the default resize plugin in the sandbox vs the same code natively vs vipsthumbnail.
//!
//! Run with `cargo bench -p pixbox --bench transform`; results and the machine they were measured
//! on go in BENCHMARKS.md. Each case runs a few warm-up rounds, then reports the median and the
//! fastest of `ROUNDS` runs, one at a time on one thread.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use pixbox::sandbox::{Param, Sandbox, SandboxSettings};

const ROUNDS: usize = 7;
const WARMUP: usize = 2;

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    media_type: &'static str,
    extension: &'static str,
}

fn main() {
    let mut twelve_mp = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut twelve_mp, 90)
        .encode_image(&common::photo(4000, 3000))
        .unwrap();
    let cases = [
        Case { name: "12 MP JPEG (4000x3000, q90)", bytes: twelve_mp, media_type: "image/jpeg", extension: "jpg" },
        Case {
            name: "1080p PNG (1920x1080)",
            bytes: common::png(&common::photo(1920, 1080)),
            media_type: "image/png",
            extension: "png",
        },
    ];

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let sandbox = Sandbox::new(SandboxSettings::default()).unwrap();
    let plugin = runtime.block_on(sandbox.load("resize")).unwrap();
    let params = vec![
        Param { name: "width".into(), value: "1024".into() },
        Param { name: "height".into(), value: "1024".into() },
    ];
    let native_options = imagekit::Options { width: 1024, height: 1024, ..imagekit::Options::default() };
    let vips = which("vipsthumbnail");
    let dir = tempfile::tempdir().unwrap();

    println!("| input | pipeline | median ms | fastest ms | output | memory high-water |");
    println!("|---|---|---:|---:|---|---:|");
    for case in &cases {
        let mut peak = 0;
        let mut out_dims = (0, 0);
        let sandboxed = measure(|| {
            let out = runtime.block_on(sandbox.transform(&plugin, &case.bytes, case.media_type, &params)).unwrap();
            peak = out.stats.memory_peak;
            out_dims = (out.header.width, out.header.height);
        });
        row(case.name, "sandbox: resize plugin (wasm, simd128)", sandboxed, out_dims, &format!("{:.0} MiB", mib(peak)));

        let native = measure(|| {
            let out = imagekit::resize(&case.bytes, &native_options).unwrap();
            std::hint::black_box(out);
        });
        row(case.name, "native: the same imagekit code", native, out_dims, "n/a");
        // What the plugin's placeholder (ThumbHash + dominant colour) adds to the same work.
        let with_placeholder = measure(|| {
            let out = imagekit::renditions_with_placeholder(&case.bytes, std::slice::from_ref(&native_options), true);
            std::hint::black_box(out.unwrap());
        });
        row(case.name, "native: the same, with the placeholder", with_placeholder, out_dims, "n/a");

        match &vips {
            Some(vips) => {
                let input = dir.path().join(format!("in.{}", case.extension));
                std::fs::write(&input, &case.bytes).unwrap();
                let output = dir.path().join(format!("out.{}", case.extension));
                let quality = if case.extension == "jpg" { "[Q=85]" } else { "" };
                let timing = measure(|| {
                    let status = std::process::Command::new(vips)
                        .env("VIPS_CONCURRENCY", "1")
                        .arg(&input)
                        .args(["--size", "1024x1024", "-o"])
                        .arg(format!("{}{quality}", output.display()))
                        .status()
                        .unwrap();
                    assert!(status.success());
                });
                row(case.name, "vipsthumbnail 1 thread (whole process)", timing, out_dims, "n/a");
            }
            None => {
                println!("| {} | vipsthumbnail: not installed (apt-get install libvips-tools) | | | | |", case.name)
            }
        }
    }
}

fn measure(mut f: impl FnMut()) -> (Duration, Duration) {
    for _ in 0..WARMUP {
        f();
    }
    let mut times: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .collect();
    times.sort();
    (times[ROUNDS / 2], times[0])
}

fn row(input: &str, pipeline: &str, (median, fastest): (Duration, Duration), dims: (u32, u32), memory: &str) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("| {input} | {pipeline} | {:.1} | {:.1} | {}x{} | {memory} |", ms(median), ms(fastest), dims.0, dims.1);
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|p| p.exists())
}
