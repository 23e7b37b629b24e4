//! Compiles libde265 (HEVC) and libheif (the HEIF container, colour conversion) with a small C
//! shim (csrc/pixbox_heif.c) into one static library for the guest, and links libc++ for it.
//! The sources are Debian 12's, fetched and patched by scripts/c-sources into vendor/.

#[path = "../vendored.rs"]
mod vendored;

use std::path::{Path, PathBuf};

/// libde265's decoder (its encoder, SSE and ARM code left out).
const LIBDE265: &[&str] = &[
    "alloc_pool",
    "bitstream",
    "cabac",
    "configparam",
    "contextmodel",
    "de265",
    "deblock",
    "decctx",
    "dpb",
    "fallback-dct",
    "fallback-motion",
    "fallback",
    "image",
    "image-io",
    "intrapred",
    "md5",
    "motion",
    "nal-parser",
    "nal",
    "pps",
    "quality",
    "refpic",
    "sao",
    "scan",
    "sei",
    "slice",
    "sps",
    "threads",
    "transform",
    "util",
    "visualize",
    "vps",
    "vui",
];

/// libheif's decoding side with its libde265 plugin (no encoders, no AV1, no plugin loading).
const LIBHEIF: &[&str] = &[
    "bitstream",
    "box",
    "common_utils",
    "error",
    "exif",
    "heif",
    "heif_avif",
    "heif_colorconversion",
    "heif_context",
    "heif_file",
    "heif_hevc",
    "heif_image",
    "heif_init",
    "heif_plugin",
    "heif_plugin_registry",
    "metadata_compression",
    "nclx",
    "plugins/heif_decoder_libde265",
];

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let vendor = manifest.join("vendor");
    let de265 = vendor.join("libde265");
    let heif = vendor.join("libheif");
    vendored::check(&manifest, "libheif and libde265");
    let target = std::env::var("TARGET").unwrap();
    let wasm = target.starts_with("wasm32");

    let mut cpp = cc::Build::new();
    cpp.cpp(true)
        .std("c++17")
        .flag_if_supported("-fno-exceptions")
        .include(&de265)
        .include(de265.join("libde265"))
        .include(&heif)
        .include(heif.join("libheif"))
        .define("LIBDE265_STATIC_BUILD", None)
        .define("LIBHEIF_STATIC_BUILD", None)
        .define("HAVE_LIBDE265", "1")
        .define("HAVE_POSIX_MEMALIGN", None)
        // Damaged data in grid tiles, alpha planes and derived images is an error too (libheif
        // decodes those without the caller's options; see patches/libheif-sandbox.patch).
        .define("LIBHEIF_STRICT_DECODING_DEFAULT", "true")
        // Only the header is wanted (libde265 includes <signal.h> and calls nothing in it).
        .define("_WASI_EMULATED_SIGNAL", None)
        .warnings(false);
    if wasm {
        // libc++ for wasm32-wasi (Debian: libc++-19-dev-wasm32) and a pthread.h that does nothing:
        // the guest has one thread and libde265 is given no workers.
        // libc++'s headers must come before wasi-libc's (its <cstdlib> wraps <stdlib.h>).
        cpp.flag("-isystem").flag("/usr/lib/llvm-19/include/wasm32-wasi/c++/v1");
        cpp.flag("-isystem").flag("/usr/include/wasm32-wasi");
        cpp.include(manifest.join("csrc/compat"));
        // Linked below, statically; natively cc links the system's C++ library.
        cpp.cpp_link_stdlib(None);
    }
    for name in LIBDE265 {
        cpp.file(de265.join("libde265").join(format!("{name}.cc")));
    }
    for name in LIBHEIF {
        cpp.file(heif.join("libheif").join(format!("{name}.cc")));
    }
    cpp.compile("pixbox_heif_cpp");

    let mut c = cc::Build::new();
    c.file(manifest.join("csrc/pixbox_heif.c")).include(&heif).define("LIBHEIF_STATIC_BUILD", None);
    c.compile("pixbox_heif_shim");

    if wasm {
        link_libcxx(Path::new("/usr/lib/llvm-19/lib/wasm32-wasi"));
    }
}

/// libc++ and libc++abi for wasm32-wasi, statically.
fn link_libcxx(dir: &Path) {
    for lib in ["libc++.a", "libc++abi.a"] {
        if !dir.join(lib).exists() {
            panic!(
                "{} is missing: the HEIC decoder is C++ (Debian: apt-get install libc++-19-dev-wasm32 \
                 libc++abi-19-dev-wasm32, or run scripts/c-toolchain)",
                dir.join(lib).display()
            );
        }
    }
    println!("cargo:rustc-link-search=native={}", dir.display());
    println!("cargo:rustc-link-lib=static=c++");
    println!("cargo:rustc-link-lib=static=c++abi");
}
