//! Compiles libjpeg-turbo's decoder (C, 8-bit samples; colour conversion and IDCTs in simd128)
//! with a small C shim (csrc/pixbox_jpeg.c) into one static library, for the guest and natively
//! alike. The sources are Debian 12's, fetched and patched by scripts/c-sources into vendor/; the
//! headers CMake would generate are written here from their templates.

#[path = "../vendored.rs"]
mod vendored;

use std::path::{Path, PathBuf};

/// libjpeg's decompression side (what `jpeg-static` holds, minus compression), arithmetic
/// decoding included. The SIMD dispatcher is csrc/pixbox_simd.c (jsimd_none.c, and simd128 colour
/// conversion and IDCTs): the guest has none of the x86 or Arm code libjpeg-turbo's SIMD is in.
const SOURCES: &[&str] = &[
    "jaricom", "jcomapi", "jdapimin", "jdapistd", "jdarith", "jdatasrc", "jdcoefct", "jdcolor", "jddctmgr", "jdhuff",
    "jdicc", "jdinput", "jdmainct", "jdmarker", "jdmaster", "jdmerge", "jdphuff", "jdpostct", "jdsample", "jerror",
    "jidctflt", "jidctfst", "jidctint", "jidctred", "jmemmgr", "jmemnobs", "jquant1", "jquant2", "jutils",
];

/// Values for the `@NAME@` placeholders and `#cmakedefine`s of the header templates.
const SETTINGS: &[(&str, &str)] = &[
    ("JPEG_LIB_VERSION", "62"),
    ("VERSION", "2.1.5"),
    ("LIBJPEG_TURBO_VERSION_NUMBER", "2001005"),
    ("BITS_IN_JSAMPLE", "8"),
    ("BUILD", "pixbox"),
    ("INLINE", "__inline__ __attribute__((always_inline))"),
    // One thread per instance: nothing is thread-local.
    ("THREAD_LOCAL", ""),
    ("CMAKE_PROJECT_NAME", "libjpeg-turbo"),
    ("SIZE_T", "4"),
    ("COPYRIGHT_YEAR", "1991-2023"),
    ("C_ARITH_CODING_SUPPORTED", "0"),
    ("D_ARITH_CODING_SUPPORTED", "1"),
    ("MEM_SRCDST_SUPPORTED", "1"),
    ("WITH_SIMD", "0"),
    ("RIGHT_SHIFT_IS_UNSIGNED", "0"),
    ("HAVE_BUILTIN_CTZL", "1"),
    ("HAVE_INTRIN_H", "0"),
];

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let src = manifest.join("vendor/libjpeg-turbo");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    vendored::check(&manifest, "libjpeg-turbo");
    let pointer_width = std::env::var("CARGO_CFG_TARGET_POINTER_WIDTH").unwrap();
    for name in ["jconfig.h", "jconfigint.h", "jversion.h"] {
        configure(&src.join(format!("{name}.in")), &out.join(name), &pointer_width);
    }
    let mut c = cc::Build::new();
    c.include(&out).include(&src).warnings(false);
    if std::env::var("TARGET").unwrap().starts_with("wasm32") {
        // WebAssembly SIMD (wasmtime runs it): turns on csrc/pixbox_simd.c's simd128 paths
        // (`__wasm_simd128__`) and lets clang vectorise the rest where it can.
        c.flag("-msimd128");
    }
    for name in SOURCES {
        c.file(src.join(format!("{name}.c")));
    }
    c.file(manifest.join("csrc/pixbox_jpeg.c")).file(manifest.join("csrc/pixbox_simd.c"));
    c.compile("pixbox_jpeg");
}

/// Writes `template` with its placeholders filled in, as libjpeg-turbo's CMake build does.
fn configure(template: &Path, to: &Path, pointer_width: &str) {
    let text = std::fs::read_to_string(template).unwrap();
    let value = |name: &str| {
        if name == "SIZE_T" {
            return if pointer_width == "64" { "8" } else { "4" };
        }
        SETTINGS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v).unwrap_or_else(|| panic!("{name} not set"))
    };
    let mut lines = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("#cmakedefine ") {
            let name = rest.split_whitespace().next().unwrap();
            lines.push(if value(name) == "0" { format!("/* #undef {name} */") } else { format!("#define {rest}") });
            continue;
        }
        let mut line = line.to_string();
        while let Some(start) = line.find('@') {
            let Some(len) = line[start + 1..].find('@') else { break };
            let name = line[start + 1..start + 1 + len].to_string();
            line.replace_range(start..start + len + 2, value(&name));
        }
        lines.push(line);
    }
    std::fs::write(to, lines.join("\n") + "\n").unwrap();
}
