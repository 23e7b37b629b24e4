//! Builds the plugins workspace (`plugins/`) for wasm32-wasip2 so the host can embed the default
//! plugins: a fresh clone runs `pixbox transform` and `pixbox serve` with no manual plugin build.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Components copied next to the build output; `resize` and `thumbnail` are embedded in the binary,
/// `misbehave` is used by the sandbox tests.
const PLUGINS: &[&str] = &["resize", "thumbnail", "misbehave"];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap();
    let plugins = root.join("plugins");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());

    watch(&root.join("wit"));
    println!("cargo:rerun-if-changed={}", plugins.join("Cargo.toml").display());
    println!("cargo:rerun-if-changed={}", plugins.join("Cargo.lock").display());
    println!("cargo:rerun-if-changed={}", plugins.join(".cargo/config.toml").display());
    for entry in std::fs::read_dir(&plugins).unwrap().flatten() {
        if entry.path().join("Cargo.toml").exists() {
            watch(&entry.path().join("src"));
            watch(&entry.path().join("csrc"));
            watch(&entry.path().join("patches"));
            println!("cargo:rerun-if-changed={}", entry.path().join("Cargo.toml").display());
        }
    }

    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out: keep the plugin build in <target> so
    // debug, release and clippy builds of the host share one (incremental) plugin build.
    let target_dir = out_dir.ancestors().nth(4).unwrap_or(&out_dir).join("wasm-plugins");
    // The resize plugin's WebP encoder (libwebp, C) and HEIC decoder (libheif, C++) are compiled
    // for the guest: say what is missing instead of leaving it to a cc error deep inside the build.
    if Command::new("clang-19").arg("--version").output().is_err() {
        panic!(
            "the default plugins compile libwebp (C) and libheif (C++) for wasm32-wasip2 with clang-19, \
             wasi-libc and libc++, and clang-19 is not on PATH: run scripts/c-toolchain (Debian: apt-get install \
             clang-19 llvm-19 wasi-libc libc++-19-dev-wasm32 libc++abi-19-dev-wasm32)"
        );
    }
    // The HEIC decoder's C++ sources (libheif, libde265) and the JPEG decoder's C sources
    // (libjpeg-turbo) come from Debian, checked and patched by scripts/c-sources; it does nothing
    // when they are there already.
    let sources = Command::new(root.join("scripts/c-sources")).status();
    if !sources.is_ok_and(|status| status.success()) {
        panic!(
            "scripts/c-sources could not fetch libheif, libde265 and libjpeg-turbo into plugins/*/vendor (it needs curl, \
             tar, xz, patch and deb.debian.org): run it by hand to see why"
        );
    }
    println!("cargo:rerun-if-changed={}", plugins.join("heif/vendor/.stamp").display());
    println!("cargo:rerun-if-changed={}", plugins.join("jpeg/vendor/.stamp").display());
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&plugins)
        .args(["build", "--release", "--workspace", "--locked", "--target", "wasm32-wasip2"])
        .arg("--target-dir")
        .arg(&target_dir)
        // The host's own flags and target must not leak into the wasm build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .expect("could not run cargo to build the plugins");
    assert!(
        status.success(),
        "building plugins/ for wasm32-wasip2 failed; is the target installed? (rustup target add wasm32-wasip2)"
    );

    let built = target_dir.join("wasm32-wasip2/release");
    for name in PLUGINS {
        let from = built.join(format!("{name}.wasm"));
        std::fs::copy(&from, out_dir.join(format!("{name}.wasm")))
            .unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
    println!("cargo:rustc-env=PIXBOX_BUILT_PLUGINS={}", out_dir.display());
}

fn watch(dir: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
}
