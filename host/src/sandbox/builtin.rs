//! The plugins built into the binary (compiled from `plugins/` by `build.rs`), so pixbox runs with
//! no plugin files installed.

/// Names usable as `plugin = "..."` in a route without a path.
pub const BUILTIN_NAMES: &[&str] = &["resize", "thumbnail"];

/// Where the build put the sample and test plugin components (`resize.wasm`, `thumbnail.wasm`,
/// `misbehave.wasm`). Only meaningful on the machine that built this binary: tests and benchmarks
/// use it; production uses the embedded bytes.
pub const BUILT_PLUGINS_DIR: &str = env!("PIXBOX_BUILT_PLUGINS");

static RESIZE: &[u8] = include_bytes!(concat!(env!("PIXBOX_BUILT_PLUGINS"), "/resize.wasm"));
static THUMBNAIL: &[u8] = include_bytes!(concat!(env!("PIXBOX_BUILT_PLUGINS"), "/thumbnail.wasm"));

/// The component bytes of a built-in plugin.
pub fn bytes(name: &str) -> Option<&'static [u8]> {
    match name {
        "resize" => Some(RESIZE),
        "thumbnail" => Some(THUMBNAIL),
        _ => None,
    }
}
