//! Filesystem adapter: each bucket is a directory under the data dir.
//!
//! Layout: `<root>/buckets/<bucket>/<seg>/<seg>/<last>~`. Every key segment is percent-encoded
//! (anything but `A-Za-z0-9._-`), and object files end in `~`, which encoding never produces, so
//! `a` and `a/b` can both exist (a file `a~` and a directory `a`). A file holds one JSON line of
//! metadata, then the body. Writes go to `<root>/tmp` first, are fsynced, then renamed into place,
//! so a crash never leaves a torn object; what a crash leaves in `<root>/tmp` is removed when a
//! store is opened, once it is older than any write can take.

use std::io::{BufRead, Read, Seek};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::Digest;

use super::{BlobStore, Bucket, GetObject, ObjectInfo, ObjectMeta, StoreError, validate_key, validate_prefix};

/// Longest metadata line read back; anything longer is a corrupt file.
const MAX_META_LINE: u64 = 64 * 1024;
/// A file in `<root>/tmp` this old is left by a crashed write (a write takes at most one upload's
/// time, `limits.request_timeout_secs`, far less than this): removed when a store is opened.
pub const STALE_TMP_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);
/// Longest encoded path segment most filesystems accept.
const MAX_SEGMENT_BYTES: usize = 255;

#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
    temp: String,
    permanent: String,
}

impl FsStore {
    /// A store under `root` with the two bucket directories named `temp` and `permanent`.
    /// With `create`, missing directories are created; otherwise they must exist.
    pub fn open(root: &Path, temp: &str, permanent: &str, create: bool) -> Result<Self, StoreError> {
        let store = FsStore { root: root.to_path_buf(), temp: temp.into(), permanent: permanent.into() };
        for dir in [store.bucket_dir(Bucket::Temp), store.bucket_dir(Bucket::Permanent), store.tmp_dir()] {
            if create {
                std::fs::create_dir_all(&dir).map_err(io_error)?;
            } else if !dir.is_dir() {
                return Err(StoreError::MissingBucket { bucket: dir.display().to_string() });
            }
        }
        store.sweep_tmp(STALE_TMP_AFTER);
        Ok(store)
    }

    /// Removes files in `<root>/tmp` older than `age` (torn writes of a crashed process); returns
    /// how many. Failures only cost disk space, so they are logged, not returned.
    pub fn sweep_tmp(&self, age: std::time::Duration) -> usize {
        let Ok(entries) = std::fs::read_dir(self.tmp_dir()) else { return 0 };
        let mut removed = 0;
        for entry in entries.flatten() {
            let stale = entry.metadata().ok().and_then(|m| m.modified().ok()).and_then(|m| m.elapsed().ok());
            if stale.is_some_and(|elapsed| elapsed >= age) {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(e) => {
                        tracing::warn!(path = %entry.path().display(), "cannot remove a stale temporary file: {e}")
                    }
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed temporary files left by an interrupted write");
        }
        removed
    }

    fn bucket_dir(&self, bucket: Bucket) -> PathBuf {
        let name = match bucket {
            Bucket::Temp => &self.temp,
            Bucket::Permanent => &self.permanent,
        };
        self.root.join("buckets").join(name)
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn object_path(&self, bucket: Bucket, key: &str) -> Result<PathBuf, StoreError> {
        validate_key(key)?;
        let mut path = self.bucket_dir(bucket);
        let segments: Vec<&str> = key.split('/').collect();
        for (i, segment) in segments.iter().enumerate() {
            let mut encoded = encode_segment(segment);
            if i + 1 == segments.len() {
                encoded.push('~');
            }
            if encoded.len() > MAX_SEGMENT_BYTES {
                return Err(StoreError::InvalidKey {
                    key: key.into(),
                    reason: "a segment is too long for the filesystem store",
                });
            }
            path.push(encoded);
        }
        Ok(path)
    }

    fn write(&self, path: &Path, body: &[u8], meta: &ObjectMeta, create_only: bool) -> Result<bool, StoreError> {
        let mut tmp = tempfile::NamedTempFile::new_in(self.tmp_dir()).map_err(io_error)?;
        let mut line = serde_json::to_vec(meta).expect("metadata serializes");
        line.push(b'\n');
        std::io::Write::write_all(&mut tmp, &line).map_err(io_error)?;
        std::io::Write::write_all(&mut tmp, body).map_err(io_error)?;
        tmp.as_file().sync_all().map_err(io_error)?;
        let parent = path.parent().expect("object paths have a parent");
        std::fs::create_dir_all(parent).map_err(io_error)?;
        if create_only {
            // persist_noclobber is an atomic link-then-unlink: it fails if the key exists.
            match tmp.persist_noclobber(path) {
                Ok(_) => {}
                Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
                Err(e) => return Err(io_error(e.error)),
            }
        } else {
            tmp.persist(path).map_err(|e| io_error(e.error))?;
        }
        // Make the rename itself durable.
        std::fs::File::open(parent).and_then(|d| d.sync_all()).map_err(io_error)?;
        Ok(true)
    }
}

/// Reads the metadata line and leaves the file positioned at the body.
fn open_object(path: &Path, key: &str) -> Result<(std::fs::File, ObjectInfo), StoreError> {
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => StoreError::NotFound { key: key.into() },
        _ => io_error(e),
    })?;
    let file_len = file.metadata().map_err(io_error)?.len();
    let modified = file.metadata().and_then(|m| m.modified()).map_err(io_error)?;
    let mut reader = std::io::BufReader::new(file).take(MAX_META_LINE);
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).map_err(io_error)?;
    let meta: ObjectMeta = serde_json::from_slice(&line)
        .map_err(|e| StoreError::Unavailable(format!("corrupt object file {}: {e}", path.display())))?;
    let mut file = reader.into_inner().into_inner();
    file.seek(std::io::SeekFrom::Start(line.len() as u64)).map_err(io_error)?;
    let size = file_len - line.len() as u64;
    let stamp = modified.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let etag = hex::encode(&sha2::Sha256::digest(format!("{key}\0{size}\0{stamp}"))[..8]);
    Ok((file, ObjectInfo { meta, size, etag, modified: Some(modified) }))
}

/// Percent-encodes everything outside `A-Za-z0-9._-` (so also `~` and `%`).
fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn io_error(e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("filesystem: {e}"))
}

/// Runs blocking filesystem work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StoreError::Unavailable(format!("filesystem task: {e}")))?
}

fn walk(dir: &Path, prefix_segments: &mut Vec<String>, out: &mut Vec<String>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if entry.file_type()?.is_dir() {
            let Some(segment) = super::percent_decode(name) else { continue };
            prefix_segments.push(segment);
            walk(&entry.path(), prefix_segments, out)?;
            prefix_segments.pop();
        } else if let Some(last) = name.strip_suffix('~').and_then(super::percent_decode) {
            let mut key = prefix_segments.join("/");
            if !key.is_empty() {
                key.push('/');
            }
            key.push_str(&last);
            out.push(key);
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl BlobStore for FsStore {
    async fn put(&self, bucket: Bucket, key: &str, body: Bytes, meta: &ObjectMeta) -> Result<(), StoreError> {
        let path = self.object_path(bucket, key)?;
        let (store, meta) = (self.clone(), meta.clone());
        blocking(move || store.write(&path, &body, &meta, false).map(drop)).await
    }

    async fn put_if_absent(
        &self,
        bucket: Bucket,
        key: &str,
        body: Bytes,
        meta: &ObjectMeta,
    ) -> Result<bool, StoreError> {
        let path = self.object_path(bucket, key)?;
        let (store, meta) = (self.clone(), meta.clone());
        blocking(move || store.write(&path, &body, &meta, true)).await
    }

    async fn get(&self, bucket: Bucket, key: &str) -> Result<GetObject, StoreError> {
        let path = self.object_path(bucket, key)?;
        let key = key.to_string();
        let (file, info) = blocking(move || open_object(&path, &key)).await?;
        let body =
            tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), super::read_chunk(info.size));
        Ok(GetObject { info, body: Box::pin(body) })
    }

    async fn head(&self, bucket: Bucket, key: &str) -> Result<ObjectInfo, StoreError> {
        let path = self.object_path(bucket, key)?;
        let key = key.to_string();
        blocking(move || open_object(&path, &key).map(|(_, info)| info)).await
    }

    async fn delete(&self, bucket: Bucket, key: &str) -> Result<(), StoreError> {
        let path = self.object_path(bucket, key)?;
        blocking(move || match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error(e)),
            _ => Ok(()),
        })
        .await
    }

    async fn list(&self, bucket: Bucket, prefix: &str) -> Result<Vec<String>, StoreError> {
        validate_prefix(prefix)?;
        let (dir, prefix) = (self.bucket_dir(bucket), prefix.to_string());
        blocking(move || {
            let mut keys = Vec::new();
            walk(&dir, &mut Vec::new(), &mut keys).map_err(io_error)?;
            keys.retain(|k| k.starts_with(&prefix));
            keys.sort();
            Ok(keys)
        })
        .await
    }

    async fn check(&self) -> Result<(), StoreError> {
        for bucket in [Bucket::Temp, Bucket::Permanent] {
            let dir = self.bucket_dir(bucket);
            if !dir.is_dir() {
                return Err(StoreError::MissingBucket { bucket: dir.display().to_string() });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_crashed_write_left_in_tmp_is_removed_when_the_store_opens() {
        let dir = tempfile::tempdir().unwrap();
        FsStore::open(dir.path(), "temp", "permanent", true).unwrap();
        let (stale, fresh) = (dir.path().join("tmp/.tmpSTALE"), dir.path().join("tmp/.tmpFRESH"));
        std::fs::write(&stale, b"half an object").unwrap();
        std::fs::write(&fresh, b"a write in progress").unwrap();
        let long_ago = std::time::SystemTime::now() - STALE_TMP_AFTER - std::time::Duration::from_secs(60);
        std::fs::File::options().write(true).open(&stale).unwrap().set_modified(long_ago).unwrap();
        FsStore::open(dir.path(), "temp", "permanent", true).unwrap();
        assert!(!stale.exists(), "the stale file was kept");
        assert!(fresh.exists(), "a write in progress was removed");
    }
}
