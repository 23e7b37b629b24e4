//! The `pixbox` binary as a user runs it: `transform` and `plugin info` (the plugin author's
//! commands are in plugin_author.rs).

use crate::common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{built_plugin, decode, jpeg, photo, pixbox_bin, png_claiming};
use image::GenericImageView;

fn pixbox(data_dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(pixbox_bin());
    // Isolated from any pixbox.toml or PIXBOX_* of the machine running the tests.
    cmd.current_dir(data_dir).env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    cmd.env("PIXBOX_SANDBOX_CACHE_DIR", common::plugin_cache());
    cmd.arg("--data-dir").arg(data_dir);
    cmd
}

#[test]
fn transform_resizes_a_photo_and_reports_its_cost() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("photo.jpg");
    let output = dir.path().join("out.jpg");
    std::fs::write(&input, jpeg(&photo(1600, 1200))).unwrap();
    let run = pixbox(dir.path())
        // The user's cache folder, to see it filled (and the data directory left alone).
        .env_remove("PIXBOX_SANDBOX_CACHE_DIR")
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .args(["transform", "--option", "width=400", "--option", "height=400"])
        .arg(&input)
        .arg(&output)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&run.stderr));
    let row = stdout.lines().find(|l| l.starts_with("photo.jpg")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(row.contains("1600x1200 jpg") && row.contains("400x300 jpg") && row.contains("MiB"), "{stdout}");
    assert_eq!(decode(&std::fs::read(&output).unwrap()).dimensions(), (400, 300));
    // The compiled plugin was cached for the next start, outside the data directory.
    let cached = std::fs::read_dir(dir.path().join("cache/pixbox/plugin-cache")).unwrap().count();
    assert_eq!(cached, 1);
    assert!(!dir.path().join("plugin-cache").exists());
}

/// `pixbox transform` runs what the service runs: for a key whose route has renditions, every
/// rendition from one call (a file and a row each); with `--preset`, the preset.
#[test]
fn transform_makes_a_routes_renditions_and_a_preset() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pixbox.toml"),
        "[[routes]]\nprefix = \"products/\"\nplugin = \"resize\"\ndefault_rendition = \"large\"\n\
         [routes.renditions.thumb]\nwidth = 64\nheight = 64\nformat = \"webp\"\n\
         [routes.renditions.large]\nwidth = 400\nheight = 400\n\
         [presets.card]\nwidth = 200\nheight = 150\nmode = \"cover\"\nformat = \"auto\"\n",
    )
    .unwrap();
    let input = dir.path().join("photo.jpg");
    std::fs::write(&input, jpeg(&photo(1600, 1200))).unwrap();
    let run = pixbox(dir.path())
        .args(["transform", "--key", "products/x.jpg"])
        .arg(&input)
        .arg(dir.path().join("out.jpg"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&run.stderr));
    for (rendition, file, size) in [("large", "out.large.jpg", (400, 300)), ("thumb", "out.thumb.webp", (64, 48))] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("photo.jpg:{rendition} ")))
            .unwrap_or_else(|| panic!("{stdout}"));
        assert!(row.contains(&format!("{}x{}", size.0, size.1)), "{row}");
        assert_eq!(decode(&std::fs::read(dir.path().join(file)).unwrap()).dimensions(), size, "{file}");
    }

    let run = pixbox(dir.path())
        .args(["transform", "--preset", "card"])
        .arg(&input)
        .arg(dir.path().join("card.jpg"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.lines().any(|l| l.starts_with("photo.jpg ") && l.contains("200x150 jpg")), "{stdout}");
    assert_eq!(decode(&std::fs::read(dir.path().join("card.jpg")).unwrap()).dimensions(), (200, 150));
    let unknown =
        pixbox(dir.path()).args(["transform", "--preset", "nope"]).arg(&input).arg(dir.path()).output().unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no preset \"nope\""), "{unknown:?}");
}

/// Settings that would lose work or only wait are refused at start, with the reason: more
/// worker calls than sandbox slots, and an orphan sweep younger than an upload can take.
#[test]
fn unsafe_worker_settings_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for (env, reason) in [
        (
            [("PIXBOX_WORKER_CONCURRENCY", "8"), ("PIXBOX_SANDBOX_MAX_INSTANCES", "4")],
            "worker.concurrency (8) is above sandbox.max_instances (4)",
        ),
        (
            [("PIXBOX_WORKER_ORPHAN_AGE_SECS", "60"), ("PIXBOX_LIMITS_REQUEST_TIMEOUT_SECS", "300")],
            "worker.orphan_age_secs (60) must be above",
        ),
    ] {
        let started = Instant::now();
        let run = pixbox(dir.path()).envs(env).arg("serve").output().unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{env:?} started");
        assert!(stderr.contains(reason), "{env:?}: {stderr}");
        assert!(started.elapsed() < Duration::from_secs(10), "{env:?}: refused after {:?}", started.elapsed());
    }
}

/// Under `ulimit -v` (a small VM, a hardened service) the sandbox's pool cannot reserve its
/// address space: pixbox says why and runs each call with its own allocation instead of
/// refusing to start, with the same result.
#[test]
fn transform_runs_under_a_low_address_space_limit() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("photo.jpg");
    let output = dir.path().join("out.jpg");
    std::fs::write(&input, jpeg(&photo(1600, 1200))).unwrap();
    let cmd = pixbox(dir.path());
    let args: Vec<std::ffi::OsString> = cmd.get_args().map(Into::into).collect();
    let run = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {ADDRESS_SPACE_KIB} && exec \"$0\" \"$@\""))
        .arg(cmd.get_program())
        .args(args)
        .args(["transform", "--option", "width=400", "--option", "height=400"])
        .arg(&input)
        .arg(&output)
        .current_dir(dir.path())
        .env_clear()
        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "stderr: {stderr}");
    assert!(stderr.contains("cannot reserve its address space"), "no warning saying why: {stderr}");
    assert_eq!(decode(&std::fs::read(&output).unwrap()).dimensions(), (400, 300));
}

/// Far below what the pool reserves (tens of GiB of untouched address space), enough for the
/// process and one call's memory.
const ADDRESS_SPACE_KIB: u64 = 4 << 20;

#[test]
fn transform_refuses_a_decompression_bomb_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bomb.png");
    std::fs::write(&input, png_claiming(100_000, 100_000)).unwrap();
    let started = Instant::now();
    let run = pixbox(dir.path()).arg("transform").arg(&input).arg(dir.path().join("out.png")).output().unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(stderr.contains("100000x100000") && stderr.contains("limit"), "{stderr}");
    // Refused from the header, before the sandbox is even set up (generous bound for slow CI).
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    assert!(!dir.path().join("out.png").exists());
}

#[test]
fn transform_reports_a_plugin_failure_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("photo.jpg");
    std::fs::write(&input, jpeg(&photo(64, 64))).unwrap();
    let run = pixbox(dir.path())
        .args(["transform", "--plugin"])
        .arg(built_plugin("misbehave"))
        .args(["--option", "mode=panic"])
        .arg(&input)
        .arg(dir.path().join("out.jpg"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(!run.status.success());
    assert!(stdout.contains("plugin crashed") && stdout.contains("asked to panic"), "{stdout}");
    assert!(String::from_utf8_lossy(&run.stderr).contains("1 image(s) failed"));
}

#[test]
fn plugin_info_prints_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let run = pixbox(dir.path()).args(["plugin", "info"]).arg(built_plugin("thumbnail")).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.starts_with("thumbnail 0.1.0 (pixbox:transform@0.2.0)"), "{stdout}");
    assert!(stdout.contains("size") && stdout.contains("default 256"), "{stdout}");
    // A plugin built against the frozen 0.1.0 contract says so.
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/misbehave-0.1.0.wasm");
    let run = pixbox(dir.path()).args(["plugin", "info", fixture]).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.starts_with("misbehave 0.1.0 (pixbox:transform@0.1.0)"), "{stdout}");

    std::fs::write(dir.path().join("junk.wasm"), b"junk").unwrap();
    let run = pixbox(dir.path()).args(["plugin", "info", "junk.wasm"]).output().unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("not a valid pixbox plugin"));
}
