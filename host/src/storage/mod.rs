//! The blob store port: the "temp" and "permanent" buckets, with a filesystem adapter (the embedded
//! default) and an S3 adapter. Handlers and the worker only ever see `Arc<dyn BlobStore>`.

#[cfg(feature = "conformance-suites")]
pub mod conformance;
mod fs;
#[cfg(feature = "aws")]
mod s3;

use std::collections::BTreeMap;
use std::pin::Pin;

use bytes::Bytes;
use futures::{Stream, StreamExt};

pub use fs::FsStore;
#[cfg(feature = "aws")]
pub use s3::S3Store;

/// Which of the two buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// Originals waiting to be processed (and originals kept after a permanent failure).
    Temp,
    /// Results, and failure records.
    Permanent,
}

/// What is stored alongside an object's bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectMeta {
    pub content_type: String,
    /// Small user metadata (ASCII keys and values; S3 limits the total to 2 KiB).
    pub metadata: BTreeMap<String, String>,
}

/// A stored object's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub meta: ObjectMeta,
    pub size: u64,
    /// An opaque version tag (changes when the object is overwritten).
    pub etag: String,
    /// When the object was last written, when the backend says (for the orphan sweep).
    pub modified: Option<std::time::SystemTime>,
}

/// Bytes a body stream reads at a time. Each chunk of a file is one round trip to a blocking
/// thread and back through the runtime, whose threads may be busy running plugin calls (which
/// yield every epoch tick): at the reader's default 4 KiB, a 16 MB original took about 4,000 such
/// turns and over a second to read while two calls ran.
pub(crate) const READ_CHUNK: usize = 256 * 1024;

/// The chunk size for a body of `size` bytes: [`READ_CHUNK`], or the body's own size when smaller
/// (at least 8 KiB), so serving a small thumbnail does not set aside 256 KiB per download.
pub(crate) fn read_chunk(size: u64) -> usize {
    usize::try_from(size).unwrap_or(READ_CHUNK).clamp(8 * 1024, READ_CHUNK)
}

/// A body read as a stream of chunks, so large objects are never held in memory whole.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// An object being read.
pub struct GetObject {
    pub info: ObjectInfo,
    pub body: ByteStream,
}

impl GetObject {
    /// Reads the whole body, refusing more than `limit` bytes.
    pub async fn bytes(mut self, limit: usize) -> Result<Bytes, StoreError> {
        let mut out = bytes::BytesMut::with_capacity(usize::try_from(self.info.size).unwrap_or(0).min(limit));
        while let Some(chunk) = self.body.next().await {
            let chunk = chunk.map_err(|e| StoreError::Unavailable(format!("reading object: {e}")))?;
            if out.len() + chunk.len() > limit {
                return Err(StoreError::TooLarge { limit });
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    }
}

/// Errors every adapter reports the same way.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("no object {key:?}")]
    NotFound { key: String },
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("object is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("bucket {bucket:?} does not exist (create it, or set create_resources = true)")]
    MissingBucket { bucket: String },
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// The blob store port.
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    /// Stores `body` under `key`, replacing what was there. Atomic: readers see the old object or
    /// the new one, never a mix.
    async fn put(&self, bucket: Bucket, key: &str, body: Bytes, meta: &ObjectMeta) -> Result<(), StoreError>;
    /// Stores `body` only if `key` does not exist yet; returns whether it was created.
    async fn put_if_absent(
        &self,
        bucket: Bucket,
        key: &str,
        body: Bytes,
        meta: &ObjectMeta,
    ) -> Result<bool, StoreError>;
    async fn get(&self, bucket: Bucket, key: &str) -> Result<GetObject, StoreError>;
    async fn head(&self, bucket: Bucket, key: &str) -> Result<ObjectInfo, StoreError>;
    /// Removes `key`; removing a missing key succeeds.
    async fn delete(&self, bucket: Bucket, key: &str) -> Result<(), StoreError>;
    /// Every key that starts with `prefix`, sorted.
    async fn list(&self, bucket: Bucket, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// Checks both buckets answer (for readiness).
    async fn check(&self) -> Result<(), StoreError>;
    /// A form that lets a client POST one object of 1 to `max_bytes` bytes straight to `key` for
    /// `ttl`, when the backend can sign one (S3's POST policy); `None` otherwise.
    async fn presigned_post(
        &self,
        _bucket: Bucket,
        _key: &str,
        _max_bytes: u64,
        _ttl: std::time::Duration,
    ) -> Result<Option<PresignedPost>, StoreError> {
        Ok(None)
    }
}

/// An HTML-form upload straight to the bucket: POST `url` as multipart/form-data with `fields`
/// in this order, then the object as a part named `file`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct PresignedPost {
    pub url: String,
    pub fields: BTreeMap<String, String>,
}

/// Longest key accepted (S3's limit).
pub const MAX_KEY_BYTES: usize = 1024;

/// The key rules every adapter enforces, so a key valid on one backend is valid on all: relative,
/// `/`-separated, no empty, `.` or `..` segment, no backslash, NUL or other control character.
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    let bad = |reason| Err(StoreError::InvalidKey { key: key.into(), reason });
    if key.is_empty() {
        return bad("empty");
    }
    if key.len() > MAX_KEY_BYTES {
        return bad("longer than 1024 bytes");
    }
    if key.chars().any(char::is_control) {
        return bad("contains a control character");
    }
    if key.contains('\\') {
        return bad("contains a backslash");
    }
    if key.starts_with('/') {
        return bad("absolute");
    }
    if key.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return bad("has an empty, '.' or '..' segment");
    }
    Ok(())
}

/// Prefixes follow the same rules as keys, except that they may be empty or end with `/`.
pub fn validate_prefix(prefix: &str) -> Result<(), StoreError> {
    match prefix.strip_suffix('/').unwrap_or(prefix) {
        "" if prefix.len() <= 1 && prefix != "/" => Ok(()),
        trimmed => validate_key(trimmed)
            .map_err(|_| StoreError::InvalidKey { key: prefix.into(), reason: "not a valid key prefix" }),
    }
}

/// `%XX` escapes decoded; `None` for a broken escape or bytes that are not UTF-8.
pub fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
