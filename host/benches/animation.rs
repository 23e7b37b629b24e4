//! Benchmark of animated GIF resizing: the `resize` plugin in the sandbox against libvips
//! (`vipsthumbnail 'in.gif[n=-1]'`, every frame) and gifsicle (`--resize-fit`), same run, same
//! files: time, memory and output size.
//!
//! Run with `cargo bench -p pixbox --bench animation` (needs `vipsthumbnail` from Debian's
//! libvips-tools and `gifsicle`). The animations are generated (moving stripes over a gradient,
//! every frame covering the canvas and differing from the one before); each is fitted into
//! 480x480 (the largest animation the default limits take: 1024x1024, the default route's box), as an animated WebP (pixbox's default for a GIF, vips' `.webp`) and as an animated GIF
//! (pixbox `format = gif`, vips `.gif`, gifsicle). Times are medians of 3 turns, taken in turns,
//! vips with `VIPS_CONCURRENCY=1`. pixbox's memory is the call's high-water (every linear memory
//! of the guest: the input, the canvas, the frame, the output so far); the peers' is their
//! process's peak resident set (GNU time, Debian's `time`).

use std::process::Command;
use std::time::{Duration, Instant};

use pixbox::sandbox::{Param, Sandbox, SandboxSettings};

#[path = "support/peer.rs"]
mod peer;
use peer::{median, run};

#[path = "support/striped_gif.rs"]
mod striped_gif;
use striped_gif::striped_gif;

const TURNS: usize = 3;

/// (label, width, height, frames, the box it is fitted into).
const ANIMATIONS: [(&str, u16, u16, u16, &str); 4] = [
    ("48 x 480x270", 480, 270, 48, "480"),
    ("100 x 1280x720", 1280, 720, 100, "480"),
    ("200 x 1920x1080", 1920, 1080, 200, "480"),
    // About the largest the default limits accept (50 million pixels), into the default box.
    ("24 x 1920x1080", 1920, 1080, 24, "1024"),
];

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let sandbox = Sandbox::new(SandboxSettings { time_budget_ms: 120_000, ..SandboxSettings::default() }).unwrap();
    let plugin = runtime.block_on(sandbox.load("resize")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    println!(
        "| animation | GIF MiB | box | out | pixbox ms | vips ms | gifsicle ms | pixbox / vips | pixbox / gifsicle | pixbox MiB (call high-water) | vips MiB (peak RSS) | gifsicle MiB (peak RSS) | pixbox KiB | vips KiB | gifsicle KiB |"
    );
    println!("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (label, width, height, frames, side) in ANIMATIONS {
        let fit = format!("{side}x{side}");
        let gif = striped_gif(width, height, frames);
        let input = dir.path().join("in.gif");
        std::fs::write(&input, &gif).unwrap();
        for out in ["webp", "gif"] {
            let params: Vec<Param> = [
                ("width", side),
                ("height", side),
                ("format", if out == "gif" { "gif" } else { "webp" }),
                ("max-animation-pixels", "1000000000"),
            ]
            .into_iter()
            .map(|(name, value)| Param { name: name.into(), value: value.into() })
            .collect();
            let (mut ours, mut vips, mut gifsicle) = (Vec::new(), Vec::new(), Vec::new());
            let (mut ours_peak, mut ours_bytes) = (0, 0);
            let (mut vips_rss, mut vips_bytes, mut gifsicle_rss, mut gifsicle_bytes) = (0, 0, 0, 0);
            for _ in 0..TURNS {
                let started = Instant::now();
                let made = runtime.block_on(sandbox.transform(&plugin, &gif, "image/gif", &params)).unwrap();
                ours.push(started.elapsed());
                ours_peak = ours_peak.max(made.stats.memory_peak);
                ours_bytes = made.bytes.len();
                assert_eq!(frame_count(&made.bytes), u32::from(frames), "{label}: pixbox kept every frame");

                let vips_out = dir.path().join(format!("vips.{out}"));
                let (took, rss) = run(Command::new("vipsthumbnail")
                    .arg(format!("{}[n=-1]", input.display()))
                    .args(["-s", &fit, "-o"])
                    .arg(&vips_out)
                    .env("VIPS_CONCURRENCY", "1"));
                vips.push(took);
                vips_rss = vips_rss.max(rss);
                vips_bytes = std::fs::metadata(&vips_out).unwrap().len() as usize;

                if out == "gif" {
                    let gifsicle_out = dir.path().join("gifsicle.gif");
                    let (took, rss) = run(Command::new("gifsicle")
                        .args(["--no-warnings", "--resize-fit", &fit, "-o"])
                        .arg(&gifsicle_out)
                        .arg(&input));
                    gifsicle.push(took);
                    gifsicle_rss = gifsicle_rss.max(rss);
                    gifsicle_bytes = std::fs::metadata(&gifsicle_out).unwrap().len() as usize;
                }
            }
            let (ours, vips) = (median(&mut ours), median(&mut vips));
            let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1e3);
            let (gifsicle_ms, ratio_gifsicle, gifsicle_mib, gifsicle_kib) = if gifsicle.is_empty() {
                ("-".to_string(), "-".to_string(), "-".to_string(), "-".to_string())
            } else {
                let g = median(&mut gifsicle);
                (
                    ms(g),
                    format!("{:.2}", ours.as_secs_f64() / g.as_secs_f64()),
                    format!("{}", gifsicle_rss >> 20),
                    format!("{}", gifsicle_bytes >> 10),
                )
            };
            println!(
                "| {label} | {:.1} | {side} | {out} | {} | {} | {gifsicle_ms} | {:.2} | {ratio_gifsicle} | {} | {} | {gifsicle_mib} | {} | {} | {gifsicle_kib} |",
                gif.len() as f64 / f64::from(1 << 20),
                ms(ours),
                ms(vips),
                ours.as_secs_f64() / vips.as_secs_f64(),
                ours_peak >> 20,
                vips_rss >> 20,
                ours_bytes >> 10,
                vips_bytes >> 10,
            );
        }
    }
}

/// Frames of an animated WebP or GIF, from its container.
fn frame_count(bytes: &[u8]) -> u32 {
    match &bytes[..4] {
        b"RIFF" => pixbox::imaging::container::webp(bytes).unwrap().frames,
        _ => pixbox::imaging::container::gif(bytes).unwrap().frames,
    }
}
