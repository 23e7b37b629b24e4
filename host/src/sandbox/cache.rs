//! On-disk cache of compiled plugins (`.cwasm`), so a restart does not recompile every plugin.
//!
//! The file name holds a hash of the component bytes and of the engine's compatibility hash
//! (wasmtime version, engine settings, host features), so a changed plugin or engine never loads a
//! stale artifact. Only files this module wrote are ever deserialized.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Returns the compiled component, from `dir` when a matching artifact is there.
pub fn load_or_compile(engine: &Engine, bytes: &[u8], dir: &Path, label: &str) -> wasmtime::Result<Component> {
    let path = artifact_path(engine, bytes, dir);
    if path.exists() {
        // SAFETY: the file is in pixbox's own cache directory, written by `store` below from a
        // component this engine compiled, and named after this engine's compatibility hash.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => return Ok(component),
            Err(e) => tracing::warn!(path = %path.display(), "ignoring unusable cached plugin: {e:#}"),
        }
    }
    // Seconds for a large plugin on a small machine: said, so a first start is not silent.
    tracing::info!(plugin = label, "compiling plugin (first use of this build; cached in {})", dir.display());
    let started = std::time::Instant::now();
    let component = Component::new(engine, bytes)?;
    tracing::info!(plugin = label, took_ms = started.elapsed().as_millis() as u64, "compiled plugin");
    if let Err(e) = store(&component, &path) {
        // A read-only or full disk only costs a recompile next time.
        tracing::warn!(path = %path.display(), "cannot cache compiled plugin: {e:#}");
    }
    Ok(component)
}

fn artifact_path(engine: &Engine, bytes: &[u8], dir: &Path) -> PathBuf {
    let content = hex::encode(&Sha256::digest(bytes)[..16]);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    dir.join(format!("{content}-{:016x}.cwasm", hasher.finish()))
}

/// Writes atomically (temporary file, then rename) so a crash never leaves a torn artifact.
fn store(component: &Component, path: &Path) -> anyhow::Result<()> {
    let dir = path.parent().expect("artifact path has a parent");
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, &component.serialize()?)?;
    tmp.persist(path)?;
    Ok(())
}
