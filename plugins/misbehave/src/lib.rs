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
//! - `short`: answer with one rendition fewer than asked for;
//! - `env`, `files`, `tcp`, `udp`, `dns`: try to read the environment and arguments, to open a
//!   file (and list the preopened directories), to connect over TCP to 127.0.0.1, to bind a UDP
//!   socket, to look up `localhost`. Each answers with the error `bad-input` "denied: ..." when
//!   the host refused, `internal` "GRANTED: ..." when it did not.
//!
//! Each rendition request runs its own mode, in order.

// The bindings wit-bindgen generates (imports, exports) are unsafe FFI glue; this plugin's own
// code has no unsafe.
#![allow(unsafe_code)]

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
                    "echo, spin, sleep, block, alloc, log, random, big, panic, garbage, short, env, files, tcp, udp \
                     or dns",
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
        "env" | "files" | "tcp" | "udp" | "dns" => Err(match reach_out(mode) {
            Ok(what) => TransformError::Internal(format!("GRANTED: {what}")),
            Err(why) => TransformError::BadInput(format!("denied: {why}")),
        }),
        "panic" => panic!("misbehave was asked to panic"),
        "garbage" => Ok(Image { bytes: b"this is not a png".to_vec(), media_type: "image/png".into() }),
        other => Err(TransformError::Unsupported(format!("unknown mode {other:?}"))),
    }
}

/// Tries what a transform must not be able to do; `Ok` says what it got, `Err` why not.
fn reach_out(mode: &str) -> Result<String, String> {
    use wasi::sockets::network::{IpAddressFamily, IpSocketAddress, Ipv4SocketAddress};
    use wasi::sockets::{instance_network, ip_name_lookup, tcp_create_socket, udp_create_socket};
    let loopback = |port| IpSocketAddress::Ipv4(Ipv4SocketAddress { port, address: (127, 0, 0, 1) });
    match mode {
        "env" => {
            use wasi::cli::environment;
            let (vars, args, cwd) =
                (environment::get_environment(), environment::get_arguments(), environment::initial_cwd());
            if vars.is_empty() && args.is_empty() && cwd.is_none() {
                Err("no environment variables, arguments or working directory".into())
            } else {
                Ok(format!("environment {vars:?}, arguments {args:?}, working directory {cwd:?}"))
            }
        }
        "files" => {
            let dirs = wasi::filesystem::preopens::get_directories();
            if !dirs.is_empty() {
                return Ok(format!("{} preopened directories", dirs.len()));
            }
            match std::fs::read("/etc/hostname") {
                Ok(bytes) => Ok(format!("read {} bytes of /etc/hostname", bytes.len())),
                Err(e) => Err(format!("no preopened directory; opening /etc/hostname: {e}")),
            }
        }
        "tcp" => {
            let network = instance_network::instance_network();
            let socket = tcp_create_socket::create_tcp_socket(IpAddressFamily::Ipv4)
                .map_err(|e| format!("creating a TCP socket: {e:?}"))?;
            socket.start_connect(&network, loopback(9)).map_err(|e| format!("connecting: {e:?}"))?;
            socket.subscribe().block();
            socket.finish_connect().map(|_| "connected to 127.0.0.1:9".into()).map_err(|e| format!("{e:?}"))
        }
        "udp" => {
            let network = instance_network::instance_network();
            let socket = udp_create_socket::create_udp_socket(IpAddressFamily::Ipv4)
                .map_err(|e| format!("creating a UDP socket: {e:?}"))?;
            socket.start_bind(&network, loopback(0)).map_err(|e| format!("binding: {e:?}"))?;
            socket.subscribe().block();
            socket.finish_bind().map(|_| "bound a UDP socket".into()).map_err(|e| format!("{e:?}"))
        }
        "dns" => {
            let network = instance_network::instance_network();
            let found = ip_name_lookup::resolve_addresses(&network, "localhost")
                .map_err(|e| format!("looking up localhost: {e:?}"))?;
            found.subscribe().block();
            match found.resolve_next_address() {
                Ok(Some(address)) => Ok(format!("localhost is {address:?}")),
                Ok(None) => Err("localhost resolved to nothing".into()),
                Err(e) => Err(format!("looking up localhost: {e:?}")),
            }
        }
        other => unreachable!("{other}"),
    }
}

export!(Misbehave);
