//! A test plugin that misbehaves on request, so the host's sandbox limits can be tested in pairs.
//!
//! Option `mode`:
//! - `spin` with `ms` (default: forever): burn CPU for that long, then answer normally;
//! - `alloc` with `mib` (default: without bound): hold that much memory, then answer normally;
//! - `panic`: panic (a trap in the host);
//! - `garbage`: answer with bytes that are not an image, labelled `image/png`;
//! - `echo` (default): answer with the input unchanged.

wit_bindgen::generate!({ path: "../../wit", world: "plugin" });

use pixbox::transform::log::{Level, log};
use pixbox::transform::types::ParamSpec;

struct Misbehave;

fn option<'a>(options: &'a [Param], name: &str) -> Option<&'a str> {
    options.iter().find(|p| p.name == name).map(|p| p.value.as_str())
}

fn number(options: &[Param], name: &str) -> Result<Option<u64>, TransformError> {
    option(options, name)
        .map(|v| v.parse().map_err(|_| TransformError::Unsupported(format!("{name} must be a number"))))
        .transpose()
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
                spec("mode", "echo, spin, alloc, panic or garbage", Some("echo")),
                spec("ms", "how long `spin` runs; unset runs forever", None),
                spec("mib", "how much `alloc` holds; unset grows without bound", None),
            ],
        }
    }

    fn transform(input: Image, options: Vec<Param>) -> Result<Image, TransformError> {
        let mode = option(&options, "mode").unwrap_or("echo");
        log(Level::Info, &format!("misbehave: mode {mode}"));
        match mode {
            "echo" => Ok(input),
            "spin" => {
                let until =
                    number(&options, "ms")?.map(|ms| std::time::Instant::now() + std::time::Duration::from_millis(ms));
                let mut x: u64 = 1;
                while until.is_none_or(|t| std::time::Instant::now() < t) {
                    for _ in 0..10_000 {
                        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                    }
                }
                Ok(input)
            }
            "alloc" => {
                let limit = number(&options, "mib")?;
                let mut held: Vec<Vec<u8>> = Vec::new();
                while limit.is_none_or(|mib| (held.len() as u64) < mib) {
                    // Touch every page so the memory is really used.
                    held.push(std::hint::black_box(vec![1u8; 1 << 20]));
                }
                Ok(input)
            }
            "panic" => panic!("misbehave was asked to panic"),
            "garbage" => Ok(Image { bytes: b"this is not a png".to_vec(), media_type: "image/png".into() }),
            other => Err(TransformError::Unsupported(format!("unknown mode {other:?}"))),
        }
    }
}

export!(Misbehave);
