//! The plugin author's commands: `pixbox wit` (the contract, from the binary), `pixbox plugin new`
//! (a crate that builds and passes its tests as written), `pixbox transform` over a folder of
//! samples with a table of time, memory and size, and `pixbox plugin watch` (rebuild and re-run
//! on every change).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};

use crate::config::Config;
use crate::imaging;
use crate::sandbox::{LoadedPlugin, Param, RenditionRequest, Sandbox};

/// The contract plugins are built against, as this binary speaks it.
pub const WIT: &str = include_str!("../../wit/transform.wit");
/// Frozen contract versions this binary still loads, oldest first, with their text.
const FROZEN_WIT: &[(&str, &str)] = &[("0.1.0", include_str!("../../wit/frozen/transform-0.1.0.wit"))];
/// The version of [`WIT`].
pub const WIT_VERSION: &str = "0.2.0";

/// `pixbox wit`: prints the contract; `--version` alone lists the versions this binary loads,
/// `--version V` prints that version's text.
pub fn wit(version: Option<&str>) -> anyhow::Result<()> {
    match version {
        None => print!("{WIT}"),
        Some("") => {
            println!("{WIT_VERSION} (current; plugins built against it get every feature)");
            for (v, _) in FROZEN_WIT.iter().rev() {
                println!("{v} (frozen; still loaded)");
            }
        }
        Some(v) if v == WIT_VERSION => print!("{WIT}"),
        Some(v) => match FROZEN_WIT.iter().find(|(known, _)| *known == v) {
            Some((_, text)) => print!("{text}"),
            None => bail!("no contract version {v:?}; this pixbox loads {WIT_VERSION} and 0.1.0"),
        },
    }
    Ok(())
}

/// The kit's files, written next to a new plugin (its path dependency): (path, text).
const KIT_FILES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../../plugins/kit/Cargo.toml")),
    ("src/lib.rs", include_str!("../../plugins/kit/src/lib.rs")),
    ("src/options.rs", include_str!("../../plugins/kit/src/options.rs")),
    ("src/codec.rs", include_str!("../../plugins/kit/src/codec.rs")),
    ("src/error.rs", include_str!("../../plugins/kit/src/error.rs")),
    ("src/bindings.rs", include_str!("../../plugins/kit/src/bindings.rs")),
    ("src/animation.rs", include_str!("../../plugins/kit/src/animation.rs")),
    ("src/container.rs", include_str!("../../plugins/kit/src/container.rs")),
    ("src/decode.rs", include_str!("../../plugins/kit/src/decode.rs")),
    ("src/jpeg.rs", include_str!("../../plugins/kit/src/jpeg.rs")),
    ("src/png.rs", include_str!("../../plugins/kit/src/png.rs")),
    ("src/colour.rs", include_str!("../../plugins/kit/src/colour.rs")),
    ("src/testing.rs", include_str!("../../plugins/kit/src/testing.rs")),
    ("wit/transform.wit", WIT),
];

/// The template plugin's code: `plugins/template`, built and tested with pixbox's own plugins.
const TEMPLATE_LIB: &str = include_str!("../../plugins/template/src/lib.rs");

/// The new crate's manifest. Standalone (`[workspace]`), so it builds inside any folder.
fn manifest(name: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
# cdylib: the WebAssembly component pixbox loads; rlib: for `cargo test-native`.
crate-type = ["cdylib", "rlib"]

[dependencies]
# The plugin kit: bindings, guarded decoding, encoding, options, a native test harness.
# Written here by `pixbox plugin new` (a path dependency), so this crate builds on its own.
pixbox-kit = {{ path = "pixbox-kit" }}

[profile.release]
# Small, fast components: pixbox compiles a plugin once and instantiates it per image.
opt-level = 3
lto = true
codegen-units = 1
strip = "debuginfo"

# Not part of an enclosing workspace.
[workspace]
"#
    )
}

/// `cargo build` makes the component; `cargo test-native` runs the tests on this machine.
const CARGO_CONFIG: &str = r#"[build]
target = "wasm32-wasip2"

[target.wasm32-wasip2]
# SIMD makes decoding and pixel loops 30-35 % faster in the sandbox; pixbox's wasmtime runs it.
rustflags = ["-C", "target-feature=+simd128"]

[alias]
# The tests need no wasm: they run the plugin natively through pixbox-kit's harness.
test-native = "test --target host-tuple"
"#;

const GITIGNORE: &str = "/target\n/Cargo.lock\n";

fn readme(name: &str, wasm: &str) -> String {
    format!(
        "# {name}\n\nA pixbox image plugin. `src/lib.rs` is the whole plugin; `pixbox-kit/` does the rest.\n\n\
         ```sh\n\
         cargo build --release                   # the component: {wasm}\n\
         cargo test-native                       # its tests, natively\n\
         pixbox transform --plugin {wasm} samples out\n\
         pixbox plugin watch .                   # rebuild and re-run on every change\n\
         ```\n\n\
         Route a prefix to it in the data directory's pixbox.toml (a relative path is relative to that file):\n\n\
         ```toml\n[[routes]]\nprefix = \"{name}/\"\nplugin = \"/path/to/{wasm}\"\n```\n"
    )
}

/// A crate name cargo and the component tooling take.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !ok {
        bail!("plugin name {name:?}: use 1 to 64 of a-z, 0-9, - and _, starting with a letter");
    }
    Ok(())
}

/// Where `cargo build --release` puts the component of crate `name`.
pub fn wasm_path(name: &str) -> String {
    format!("target/wasm32-wasip2/release/{}.wasm", name.replace('-', "_"))
}

/// `pixbox plugin new NAME`: writes the crate into `parent/NAME` (which must not exist yet).
pub fn new_plugin(name: &str, parent: &Path) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let dir = parent.join(name);
    if dir.exists() {
        bail!("{} already exists; pick another name or folder", dir.display());
    }
    let wasm = wasm_path(name);
    let mut files: Vec<(PathBuf, Vec<u8>)> = vec![
        ("Cargo.toml".into(), manifest(name).into_bytes()),
        (".cargo/config.toml".into(), CARGO_CONFIG.into()),
        (".gitignore".into(), GITIGNORE.into()),
        ("README.md".into(), readme(name, &wasm).into_bytes()),
        ("src/lib.rs".into(), TEMPLATE_LIB.into()),
    ];
    files.extend(KIT_FILES.iter().map(|(path, text)| (Path::new("pixbox-kit").join(path), text.as_bytes().to_vec())));
    for (format, extension) in [(image::ImageFormat::Jpeg, "jpg"), (image::ImageFormat::Png, "png")] {
        files.push((format!("samples/sample.{extension}").into(), sample(format)?));
    }
    files.push(("samples/sample.webp".into(), sample(image::ImageFormat::WebP)?));
    files.push(("samples/sample.gif".into(), sample(image::ImageFormat::Gif)?));
    for (path, bytes) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("files are in the crate"))?;
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(dir)
}

/// A 480x320 picture in `format`, to run a new plugin on at once.
fn sample(format: image::ImageFormat) -> anyhow::Result<Vec<u8>> {
    let (w, h) = (480u32, 320u32);
    let picture = image::RgbImage::from_fn(w, h, |x, y| {
        let ring = (((x as f32 - 240.0).hypot(y as f32 - 160.0)) / 12.0) as u32 % 2;
        image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, if ring == 0 { 60 } else { 200 }])
    });
    let mut bytes = std::io::Cursor::new(Vec::new());
    let picture = image::DynamicImage::ImageRgb8(picture);
    let picture =
        if format == image::ImageFormat::Gif { image::DynamicImage::ImageRgba8(picture.to_rgba8()) } else { picture };
    picture.write_to(&mut bytes, format)?;
    Ok(bytes.into_inner())
}

/// The compile cache for the author's commands: the configured one, else the user's cache
/// directory (never the working directory: running pixbox in a plugin's folder leaves nothing).
pub fn tool_sandbox(config: &Config) -> anyhow::Result<Sandbox> {
    let mut settings = config.sandbox.clone();
    if settings.cache_dir.is_none() {
        settings.cache_dir = user_cache_dir().map(|d| d.join("pixbox").join("plugin-cache"));
    }
    Ok(Sandbox::new(settings)?)
}

fn user_cache_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()).map(PathBuf::from);
    xdg.or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".cache")))
}

/// One input of `pixbox transform`, and where its result goes.
struct Job {
    input: PathBuf,
    output: PathBuf,
}

/// The inputs of `pixbox transform INPUT OUTPUT`: one file, or every image in a folder (by
/// content, sorted by name) written to the OUTPUT folder under the same stem.
fn jobs(input: &Path, output: &Path) -> anyhow::Result<Vec<Job>> {
    if !input.is_dir() {
        let output = if output.is_dir() { output.join(input.file_name().unwrap_or_default()) } else { output.into() };
        return Ok(vec![Job { input: input.into(), output }]);
    }
    std::fs::create_dir_all(output).with_context(|| format!("cannot create {}", output.display()))?;
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(input)
        .with_context(|| format!("cannot read {}", input.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    inputs.sort();
    let jobs: Vec<Job> = inputs
        .into_iter()
        .filter(|p| std::fs::read(p).is_ok_and(|bytes| imaging::sniff(&bytes).is_some()))
        .map(|p| Job { output: output.join(p.file_name().unwrap_or_default()), input: p })
        .collect();
    if jobs.is_empty() {
        bail!("{} holds no JPEG, PNG, WebP, GIF, JPEG XL or HEIC files", input.display());
    }
    Ok(jobs)
}

/// Runs `plugin` on every input and prints a row per image (plugin log lines appear above the
/// row of the image that wrote them). Returns how many failed.
/// With `renditions`, each image gets them all from one call (as the worker makes a route's), a
/// row and a file (`out.{name}.{ext}`) each.
pub async fn run_table(
    sandbox: &Sandbox,
    config: &Config,
    plugin: &LoadedPlugin,
    params: &[Param],
    renditions: Option<&[RenditionRequest]>,
    input: &Path,
    output: &Path,
) -> anyhow::Result<usize> {
    let jobs = jobs(input, output)?;
    let longest_rendition = renditions.into_iter().flatten().map(|r| r.name.len() + 1).max().unwrap_or(0);
    let width = jobs.iter().map(|j| j.input.file_name().unwrap_or_default().len()).max().unwrap_or(5).max(5)
        + longest_rendition;
    println!(
        "{} {} (pixbox:transform@{}); limits: {} MiB, {} ms",
        plugin.info.name,
        plugin.info.version,
        plugin.contract.version(),
        config.sandbox.memory_limit_mib,
        config.sandbox.time_budget_ms
    );
    println!(
        "{:<width$}  {:<22}  {:<22}  {:>9}  {:>10}  {:>12}",
        "input", "in", "out", "time", "memory", "logs dropped"
    );
    let mut failed = 0;
    for job in &jobs {
        let name = job.input.file_name().unwrap_or_default().to_string_lossy();
        match transform_one(sandbox, config, plugin, params, renditions, job).await {
            Ok(rows) => {
                for (rendition, row) in rows {
                    let label = match rendition {
                        Some(rendition) => format!("{name}:{rendition}"),
                        None => name.to_string(),
                    };
                    println!("{label:<width$}  {row}");
                }
            }
            Err(e) => {
                failed += 1;
                println!("{name:<width$}  failed: {e:#}");
            }
        }
    }
    Ok(failed)
}

/// One input through the plugin: a row per output (the rendition's name, when there are several).
async fn transform_one(
    sandbox: &Sandbox,
    config: &Config,
    plugin: &LoadedPlugin,
    params: &[Param],
    renditions: Option<&[RenditionRequest]>,
    job: &Job,
) -> anyhow::Result<Vec<(Option<String>, String)>> {
    let bytes = std::fs::read(&job.input).with_context(|| format!("cannot read {}", job.input.display()))?;
    // The header check runs before any plugin, exactly as for uploads.
    let header = imaging::probe(&bytes).context("not a usable image")?;
    config.limits.pixels().check(&header).context("refused by [limits] in pixbox.toml")?;
    if let Some(refusal) = config.formats.refusal(header.format) {
        anyhow::bail!("{}: {refusal}", job.input.display());
    }
    let media_type = header.format.media_type();
    let (images, stats) = match renditions {
        None => {
            let result = sandbox.transform(plugin, &bytes, media_type, params).await?;
            let image = crate::sandbox::Image { bytes: result.bytes, header: result.header };
            (vec![(None, image)], result.stats)
        }
        Some(requests) => {
            let rendered = sandbox.render(plugin, &bytes, media_type, requests).await?;
            let names = requests.iter().map(|r| Some(r.name.clone()));
            (names.zip(rendered.images).collect(), rendered.stats)
        }
    };
    let describe = |h: &imaging::Header, size: usize| {
        format!("{}x{} {} {}", h.width, h.height, h.format.extension(), human_bytes(size))
    };
    let mut rows = Vec::new();
    for (rendition, image) in images {
        let out_path = output_path(&job.output, rendition.as_deref(), image.header.format);
        std::fs::write(&out_path, &image.bytes).with_context(|| format!("cannot write {}", out_path.display()))?;
        let row = format!(
            "{:<22}  {:<22}  {:>6.1} ms  {:>6.1} MiB  {:>12}",
            describe(&header, bytes.len()),
            describe(&image.header, image.bytes.len()),
            stats.elapsed.as_secs_f64() * 1e3,
            stats.memory_peak as f64 / f64::from(1 << 20),
            stats.logs_dropped
        );
        rows.push((rendition, row));
    }
    Ok(rows)
}

/// Where an output goes, named after what the plugin wrote: `a.jpg` stays `a.jpg`, a GIF written
/// as PNG becomes `d.gif.png` (never clashing with a `d.png` input); an output path whose
/// extension already names the written format is used as given. A rendition's output is
/// `a.{rendition}.{ext}`.
fn output_path(output: &Path, rendition: Option<&str>, written: imaging::Format) -> PathBuf {
    if let Some(rendition) = rendition {
        return output.with_extension(format!("{rendition}.{}", written.extension()));
    }
    let named = output.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let fits = named.is_some_and(|e| e == written.extension() || (e == "jpeg" && written == imaging::Format::Jpeg));
    if fits {
        return output.to_path_buf();
    }
    let mut name = output.to_path_buf().into_os_string();
    name.push(format!(".{}", written.extension()));
    PathBuf::from(name)
}

fn human_bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MB", n as f64 / f64::from(1 << 20)),
        n if n >= 1 << 10 => format!("{:.0} KB", n as f64 / f64::from(1 << 10)),
        n => format!("{n} B"),
    }
}

/// `pixbox plugin watch DIR`: builds the crate in `dir`, runs the component on the samples, and
/// again on every change of its sources, until interrupted.
pub fn watch(config: &Config, dir: &Path, samples: Option<&Path>, params: &[Param]) -> anyhow::Result<()> {
    let samples = samples.map(Path::to_path_buf).unwrap_or_else(|| dir.join("samples"));
    let out = dir.join("target").join("pixbox-watch");
    let sandbox = tool_sandbox(config)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let mut seen = None;
    loop {
        let stamp = newest_change(dir);
        if seen != Some(stamp) {
            seen = Some(stamp);
            let started = Instant::now();
            match build(dir) {
                Ok(wasm) => {
                    let run = async {
                        let plugin = sandbox.load(&wasm.display().to_string()).await?;
                        run_table(&sandbox, config, &plugin, params, None, &samples, &out).await
                    };
                    match runtime.block_on(run) {
                        Ok(failed) => println!(
                            "-- ran {} in {:.1} s: {failed} failed; results in {}",
                            wasm.display(),
                            started.elapsed().as_secs_f64(),
                            out.display()
                        ),
                        Err(e) => println!("-- cannot run {}: {e:#}", wasm.display()),
                    }
                }
                Err(e) => println!("-- build failed: {e:#}"),
            }
            println!("-- watching {} for changes (Ctrl-C to stop)", dir.display());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The newest modification time under `src/`, `Cargo.toml`, `pixbox-kit/` and the samples:
/// polled rather than subscribed to (no file-watching dependency; a few hundred files at most).
fn newest_change(dir: &Path) -> SystemTime {
    fn walk(path: &Path, newest: &mut SystemTime) {
        let Ok(meta) = std::fs::metadata(path) else { return };
        if let Ok(modified) = meta.modified() {
            *newest = (*newest).max(modified);
        }
        if meta.is_dir()
            && let Ok(entries) = std::fs::read_dir(path)
        {
            for entry in entries.flatten() {
                walk(&entry.path(), newest);
            }
        }
    }
    let mut newest = SystemTime::UNIX_EPOCH;
    for part in ["src", "Cargo.toml", "pixbox-kit", "samples", ".cargo"] {
        walk(&dir.join(part), &mut newest);
    }
    newest
}

/// `cargo build --release` in `dir`; the component's path from cargo's own report (wherever the
/// target directory is).
fn build(dir: &Path) -> anyhow::Result<PathBuf> {
    let output = std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(dir)
        .args(["build", "--release", "--message-format=json-render-diagnostics"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run cargo (is Rust installed?)")?;
    if !output.status.success() {
        bail!("cargo build exited with {}", output.status);
    }
    let manifest = std::fs::canonicalize(dir.join("Cargo.toml"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    for line in stdout.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if message["reason"] != "compiler-artifact" || message["manifest_path"].as_str() != manifest.to_str() {
            continue;
        }
        let wasm = message["filenames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str())
            .find(|f| f.ends_with(".wasm"));
        if let Some(wasm) = wasm {
            return Ok(wasm.into());
        }
    }
    bail!("cargo built no .wasm; is the target wasm32-wasip2 (.cargo/config.toml) and crate-type cdylib?")
}

#[cfg(test)]
mod tests {
    use super::{KIT_FILES, WIT};

    /// A file added to the kit but not to [`KIT_FILES`] would build here and break every plugin
    /// `pixbox plugin new` writes.
    #[test]
    fn every_kit_source_file_is_written_with_a_new_plugin() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/kit/src");
        for entry in std::fs::read_dir(&src).unwrap() {
            let name = format!("src/{}", entry.unwrap().file_name().to_string_lossy());
            assert!(KIT_FILES.iter().any(|(path, _)| *path == name), "{name} is missing from KIT_FILES");
        }
    }

    /// The kit builds in this repository against its own copy of the contract (a new plugin gets
    /// [`WIT`] itself): the copy must not drift from the one the host speaks.
    #[test]
    fn the_kits_copy_of_the_contract_is_the_hosts() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let copy = root.join("plugins/kit/wit/transform.wit");
        assert!(std::fs::read_to_string(&copy).unwrap() == WIT, "{} differs from wit/transform.wit", copy.display());
        for entry in std::fs::read_dir(root.join("wit/frozen")).unwrap() {
            let frozen = entry.unwrap().path();
            let copy = root.join("plugins/kit/wit/frozen").join(frozen.file_name().unwrap());
            let same = std::fs::read(&copy).ok() == Some(std::fs::read(&frozen).unwrap());
            assert!(same, "{} is missing or differs from {}", copy.display(), frozen.display());
        }
    }
}
