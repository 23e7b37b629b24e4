//! Mutation fuzzing of the whole path an image takes: thousands of mutated JPEG, PNG, WebP and GIF
//! files go through the host's header checks and, when they pass, through the default plugin in
//! the sandbox. Every outcome must be an image or a typed error; the host must never panic, and no
//! small input may run a call to its time budget. Counts are printed.
//!
//! CI runs a short pass; a long one: `PIXBOX_FUZZ_CASES=20000 cargo test --release --test suite fuzz::
//! -- --nocapture` (`PIXBOX_FUZZ_SEED` replays a run). TESTING.md records the counts.

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use image::{DynamicImage, ImageFormat};
use pixbox::imaging::{self, PixelLimits};
use pixbox::sandbox::{Param, Sandbox, SandboxSettings, TransformError};

/// xorshift64*: a reproducible stream of random numbers, no dependency needed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let photo = DynamicImage::ImageRgb8(common::photo(96, 64));
    let encode = |format| {
        let mut out = std::io::Cursor::new(Vec::new());
        photo.write_to(&mut out, format).unwrap();
        out.into_inner()
    };
    vec![
        ("jpeg", encode(ImageFormat::Jpeg)),
        ("png", encode(ImageFormat::Png)),
        ("webp", encode(ImageFormat::WebP)),
        ("gif", encode(ImageFormat::Gif)),
    ]
}

/// One to four random edits: bit flips, overwritten runs, truncation, duplicated or inserted
/// bytes. The first bytes are edited less often, so most inputs still reach the decoders.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = bytes.len().max(1);
        let at =
            if rng.below(4) == 0 { rng.below(len) } else { 16.min(len - 1) + rng.below(len.saturating_sub(16).max(1)) };
        match rng.below(6) {
            0 | 1 => {
                if let Some(b) = bytes.get_mut(at) {
                    *b ^= 1 << rng.below(8);
                }
            }
            2 => {
                for i in at..(at + 1 + rng.below(16)).min(bytes.len()) {
                    bytes[i] = rng.next() as u8;
                }
            }
            3 => bytes.truncate(at.max(1)),
            4 => {
                let end = (at + 1 + rng.below(64)).min(bytes.len());
                let copy = bytes[at.min(end)..end].to_vec();
                let to = rng.below(bytes.len());
                bytes.splice(to..to, copy);
            }
            _ => {
                let insert: Vec<u8> = (0..1 + rng.below(8)).map(|_| rng.next() as u8).collect();
                let to = at.min(bytes.len());
                bytes.splice(to..to, insert);
            }
        }
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_images_end_as_images_or_typed_errors() {
    let cases: usize = std::env::var("PIXBOX_FUZZ_CASES").map_or(4000, |v| v.parse().unwrap());
    let seed: u64 = std::env::var("PIXBOX_FUZZ_SEED").map_or(0x5EED_F00D, |v| v.parse().unwrap());
    eprintln!("fuzz: {cases} cases, PIXBOX_FUZZ_SEED={seed}");
    let budget = Duration::from_secs(2);
    let sandbox = Sandbox::new(SandboxSettings {
        memory_limit_mib: 128,
        time_budget_ms: budget.as_millis() as u64,
        cache_dir: Some(common::plugin_cache()),
        ..SandboxSettings::default()
    })
    .unwrap();
    let plugin = sandbox.load(common::built_plugin("resize").to_str().unwrap()).await.unwrap();
    let options =
        [Param { name: "width".into(), value: "48".into() }, Param { name: "height".into(), value: "48".into() }];
    let limits = PixelLimits { max_pixels: 4_000_000, max_side: 4000, ..PixelLimits::default() };

    let mut rng = Rng(seed | 1);
    let seeds = seeds();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for case in 0..cases {
        let (name, seed_bytes) = &seeds[case % seeds.len()];
        let mut input = mutate(&mut rng, seed_bytes);
        if *name == "png" && rng.below(2) == 0 {
            fix_png_crcs(&mut input);
        }
        // The host's checks, exactly as an upload meets them.
        let outcome = match imaging::probe(&input) {
            Err(_) => "refused: unreadable header".to_string(),
            Ok(header) if limits.check(&header).is_err() => "refused: over the pixel limits".to_string(),
            Ok(header) if !imaging::is_complete(&input, header.format) => "refused: incomplete".to_string(),
            Ok(header) => {
                let call = Instant::now();
                let result = sandbox.transform(&plugin, &input, header.format.media_type(), &options).await;
                slowest = slowest.max(call.elapsed());
                match result {
                    Ok(output) => {
                        let out = imaging::probe(&output.bytes).expect("the sandbox checked the output");
                        assert!(out.width <= 48 && out.height <= 48, "{name} case {case}: {out:?}");
                        "image".to_string()
                    }
                    Err(TransformError::Timeout { .. }) => {
                        panic!("{name} case {case} (seed {seed}) ran to the {budget:?} budget")
                    }
                    Err(e @ (TransformError::Trap(_) | TransformError::OutOfMemory { .. })) => {
                        eprintln!("{name} case {case}: {e}");
                        format!("error: {}", e.code())
                    }
                    Err(e) => format!("error: {}", e.code()),
                }
            }
        };
        *counts.entry(format!("{name:<5} {outcome}")).or_default() += 1;
    }
    for (outcome, n) in &counts {
        eprintln!("fuzz: {n:>6}  {outcome}");
    }
    eprintln!("fuzz: {cases} cases in {:.1} s, slowest call {slowest:?}", started.elapsed().as_secs_f64());
    // The run exercised the plugin, not only the header checks.
    let images: usize = counts.iter().filter(|(k, _)| k.ends_with("image")).map(|(_, n)| n).sum();
    let errors: usize = counts.iter().filter(|(k, _)| k.contains("error:")).map(|(_, n)| n).sum();
    assert!(images > cases / 10 && errors > 0, "images {images}, plugin errors {errors}");
}

/// Recomputes every PNG chunk's CRC, so a mutation reaches the decoder instead of failing the
/// checksum (stops at the first chunk whose length runs past the end).
fn fix_png_crcs(png: &mut [u8]) {
    let mut at = 8;
    while at + 12 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        let Some(end) = (at + 8).checked_add(len).filter(|end| end + 4 <= png.len()) else { return };
        let crc = crc32fast::hash(&png[at + 4..end]);
        png[end..end + 4].copy_from_slice(&crc.to_be_bytes());
        at = end + 4;
    }
}
