//! On-disk cache of compiled plugins (`.cwasm`), so a restart does not recompile every plugin.
//!
//! The file name holds a hash of the component bytes and of the engine's compatibility hash
//! (wasmtime version, engine settings, host features), so a changed plugin or engine never loads a
//! stale artifact. A cached file is native code loaded without checks, so only files this module
//! could have written are deserialized: the directory is created `0700`, and a file not owned by
//! the service's user, or writable by others, is compiled again instead of loaded.

// Loading compiled code is unsafe by nature (and so is asking the OS for the user id); both
// calls say why they are sound.
#![allow(unsafe_code)]

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Returns the compiled component, from `dir` when a matching artifact is there.
pub fn load_or_compile(engine: &Engine, bytes: &[u8], dir: &Path, label: &str) -> wasmtime::Result<Component> {
    let path = artifact_path(engine, bytes, dir);
    let trusted = match private_dir(dir).and_then(|()| trusted_file(&path)) {
        Ok(trusted) => trusted,
        Err(reason) => {
            tracing::warn!(path = %path.display(), "not loading the cached plugin: {reason}; compiling it");
            false
        }
    };
    if trusted {
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

/// Creates `dir` (and its parents) readable by this user only; an existing one must be this
/// user's, and is made `0700` if it was more open.
fn private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| format!("creating {e}"))?;
    let meta = std::fs::metadata(dir).map_err(|e| e.to_string())?;
    if meta.uid() != effective_uid() {
        return Err(format!("the cache directory belongs to uid {}, not to this user", meta.uid()));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Whether `path` is a cached artifact that may be loaded: present, a regular file of this
/// user, writable by nobody else. `Ok(false)` when absent; `Err` says why a present one is not.
fn trusted_file(path: &Path) -> Result<bool, String> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e.to_string()),
    };
    if !meta.is_file() {
        return Err("it is not a regular file".into());
    }
    if meta.uid() != effective_uid() {
        return Err(format!("it belongs to uid {}, not to this user", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!("others may write it (mode {:o})", meta.mode() & 0o777));
    }
    Ok(true)
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
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
