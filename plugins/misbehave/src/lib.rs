//! A test plugin that misbehaves on request, so the host's sandbox limits can be tested in pairs.
//!
//! Option `mode`:
//! - `spin` with `ms` (default: forever): burn CPU for that long, then answer normally;
//! - `sleep` with `ms` (default: a minute): sleep in a host call (`wasi:clocks`), then answer;
//! - `block`: wait on a pollable that is never ready (`wasi:io/poll`);
//! - `alloc` with `mib` (default: without bound): hold that much memory, then answer normally;
//! - `log` with `mib` (default 64) and `count` (default 1000): send `count` log messages of that
//!   many MiB each, then answer;
//! - `random` with `kib` (default 262144, 256 MiB): ask the host for that many KiB of random
//!   bytes, then answer;
//! - `big` with `mib` (default 128): answer with an image of that many MiB (a PNG signature and
//!   zeros, so the host's size check is what stops it);
//! - `panic`: panic (a trap in the host);
//! - `garbage`: answer with bytes that are not an image, labelled `image/png`;
//! - `echo` (default): answer with the input unchanged;
//! - `short`: answer with one rendition fewer than asked for.
//!
//! Each rendition request runs its own mode, in order.

wit_bindgen::generate!({ path: "../../wit", world: "plugin" });

use pixbox::transform::log::{Level, log};
use pixbox::transform::types::{Param, ParamSpec};

struct Misbehave;

fn option<'a>(options: &'a [Param], name: &str) -> Option<&'a str> {
    options.iter().find(|p| p.name == name).map(|p| p.value.as_str())
}

fn number(options: &[Param], name: &str) -> Result<Option<u64>, TransformError> {
    option(options, name)
        .map(|v| v.parse().map_err(|_| TransformError::Unsupported(format!("{name} must be a number"))))
        .transpose()
}

fn mib(options: &[Param], default: u64) -> Result<usize, TransformError> {
    Ok((number(options, "mib")?.unwrap_or(default) as usize) << 20)
}

impl Guest for Misbehave {
    fn info() -> PluginInfo {
        let spec = |name: &str, description: &str, default: Option<&str>| ParamSpec {
            name: name.into(),
            description: description.into(),
            default: default.map(Into::into),
        };
        PluginInfo {
            name: "misbehave".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Misbehaves on request; for testing the sandbox.".into(),
            params: vec![
                spec(
                    "mode",
                    "echo, spin, sleep, block, alloc, log, random, big, panic, garbage or short",
                    Some("echo"),
                ),
                spec("ms", "how long `spin` or `sleep` runs; unset: `spin` forever, `sleep` a minute", None),
                spec("mib", "how much `alloc` holds (unset: without bound), `log` sends, `big` returns", None),
                spec("count", "how many messages `log` sends", Some("1000")),
                spec("kib", "how many KiB of random bytes `random` asks for", Some("262144")),
            ],
        }
    }

    fn transform(input: Image, requests: Vec<RenditionRequest>) -> Result<Transformed, TransformError> {
        let mut renditions = Vec::new();
        for request in &requests {
            if option(&request.options, "mode") == Some("short") {
                return Ok(Transformed { renditions, placeholder: None });
            }
            renditions.push(misbehave(input.clone(), &request.options)?);
        }
        Ok(Transformed { renditions, placeholder: None })
    }
}

fn misbehave(input: Image, options: &[Param]) -> Result<Image, TransformError> {
    let mode = option(options, "mode").unwrap_or("echo");
    log(Level::Info, &format!("misbehave: mode {mode}"));
    match mode {
        "echo" => Ok(input),
        "spin" => {
            let until =
                number(options, "ms")?.map(|ms| std::time::Instant::now() + std::time::Duration::from_millis(ms));
            let mut x: u64 = 1;
            while until.is_none_or(|t| std::time::Instant::now() < t) {
                for _ in 0..10_000 {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            Ok(input)
        }
        "sleep" => {
            let ms = number(options, "ms")?.unwrap_or(60_000);
            std::thread::sleep(std::time::Duration::from_millis(ms));
            Ok(input)
        }
        "block" => {
            // A pollable for a clock that never fires: blocks in the host for ever.
            let never = wasi::clocks::monotonic_clock::subscribe_duration(u64::MAX);
            never.block();
            Ok(input)
        }
        "alloc" => {
            let limit = number(options, "mib")?;
            let mut held: Vec<Vec<u8>> = Vec::new();
            while limit.is_none_or(|mib| (held.len() as u64) < mib) {
                // Touch every page so the memory is really used.
                held.push(std::hint::black_box(vec![1u8; 1 << 20]));
            }
            Ok(input)
        }
        "log" => {
            let message = "x\n".repeat(mib(options, 64)? / 2);
            for _ in 0..number(options, "count")?.unwrap_or(1000) {
                log(Level::Warn, &message);
            }
            Ok(input)
        }
        "random" => {
            let bytes = wasi::random::random::get_random_bytes(number(options, "kib")?.unwrap_or(256 << 10) << 10);
            std::hint::black_box(&bytes);
            Ok(input)
        }
        "big" => {
            let mut bytes = vec![0u8; mib(options, 128)?];
            bytes[..8].copy_from_slice(b"\x89PNG\r\n\x1a\n");
            Ok(Image { bytes, media_type: "image/png".into() })
        }
        "panic" => panic!("misbehave was asked to panic"),
        "garbage" => Ok(Image { bytes: b"this is not a png".to_vec(), media_type: "image/png".into() }),
        other => Err(TransformError::Unsupported(format!("unknown mode {other:?}"))),
    }
}

export!(Misbehave);
