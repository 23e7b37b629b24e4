//! The conformance suite every `BlobStore` adapter must pass: plain async functions taking
//! `&dyn BlobStore`, run by `tests/storage.rs` against each adapter. Each function assumes fresh,
//! empty buckets.

use bytes::Bytes;

use super::{BlobStore, Bucket, ObjectMeta, StoreError};

fn meta(content_type: &str, pairs: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        content_type: content_type.into(),
        metadata: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

/// Put then get and head: bytes, content type and metadata survive.
pub async fn round_trip(store: &dyn BlobStore) {
    let m = meta("image/png", &[("original-name", "cat.png"), ("width", "10")]);
    store.put(Bucket::Temp, "a/b.png", Bytes::from_static(b"png bytes"), &m).await.unwrap();
    let got = store.get(Bucket::Temp, "a/b.png").await.unwrap();
    assert_eq!(got.info.meta, m);
    assert_eq!(got.info.size, 9);
    assert_eq!(got.bytes(1 << 20).await.unwrap(), Bytes::from_static(b"png bytes"));
    let head = store.head(Bucket::Temp, "a/b.png").await.unwrap();
    assert_eq!((head.meta, head.size), (m, 9));
    // The buckets are separate.
    assert!(matches!(store.head(Bucket::Permanent, "a/b.png").await, Err(StoreError::NotFound { .. })));
}

/// A large body streams back intact, and the read limit is enforced.
pub async fn large_body(store: &dyn BlobStore) {
    let body: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    store.put(Bucket::Permanent, "big", Bytes::from(body.clone()), &meta("image/jpeg", &[])).await.unwrap();
    let got = store.get(Bucket::Permanent, "big").await.unwrap();
    assert_eq!(got.bytes(4 << 20).await.unwrap().as_ref(), &body[..]);
    let got = store.get(Bucket::Permanent, "big").await.unwrap();
    assert!(matches!(got.bytes(1 << 20).await, Err(StoreError::TooLarge { .. })));
}

/// Missing objects are `NotFound { key }` from get and head.
pub async fn not_found(store: &dyn BlobStore) {
    match store.get(Bucket::Temp, "missing/key.jpg").await {
        Err(StoreError::NotFound { key }) => assert_eq!(key, "missing/key.jpg"),
        other => panic!("expected NotFound, got {:?}", other.map(|o| o.info)),
    }
    match store.head(Bucket::Permanent, "missing").await {
        Err(StoreError::NotFound { key }) => assert_eq!(key, "missing"),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

/// Put replaces; put_if_absent creates once and then refuses.
pub async fn overwrite_and_create_once(store: &dyn BlobStore) {
    store.put(Bucket::Temp, "k", Bytes::from_static(b"one"), &meta("image/png", &[])).await.unwrap();
    let first = store.head(Bucket::Temp, "k").await.unwrap();
    store.put(Bucket::Temp, "k", Bytes::from_static(b"second"), &meta("image/webp", &[])).await.unwrap();
    let got = store.get(Bucket::Temp, "k").await.unwrap();
    assert_eq!(got.info.meta.content_type, "image/webp");
    assert_ne!(got.info.etag, first.etag, "the tag changes with the content");
    assert_eq!(got.bytes(100).await.unwrap(), Bytes::from_static(b"second"));

    assert!(store.put_if_absent(Bucket::Temp, "once", Bytes::from_static(b"1"), &meta("a/b", &[])).await.unwrap());
    assert!(!store.put_if_absent(Bucket::Temp, "once", Bytes::from_static(b"2"), &meta("a/b", &[])).await.unwrap());
    assert_eq!(store.get(Bucket::Temp, "once").await.unwrap().bytes(10).await.unwrap(), Bytes::from_static(b"1"));
}

/// Deleting is idempotent and really removes.
pub async fn delete_idempotent(store: &dyn BlobStore) {
    store.put(Bucket::Temp, "d/x", Bytes::from_static(b"x"), &meta("image/gif", &[])).await.unwrap();
    store.delete(Bucket::Temp, "d/x").await.unwrap();
    assert!(matches!(store.head(Bucket::Temp, "d/x").await, Err(StoreError::NotFound { .. })));
    store.delete(Bucket::Temp, "d/x").await.unwrap();
    store.delete(Bucket::Temp, "never/existed").await.unwrap();
}

/// List returns exactly the keys under a prefix, sorted, across "directories".
pub async fn list_by_prefix(store: &dyn BlobStore) {
    for key in ["avatars/1.png", "avatars/2.png", "avatars/deep/3.png", "avatarsX.png", "photos/1.jpg", "a"] {
        store.put(Bucket::Permanent, key, Bytes::from_static(b"."), &meta("image/png", &[])).await.unwrap();
    }
    assert_eq!(
        store.list(Bucket::Permanent, "avatars/").await.unwrap(),
        ["avatars/1.png", "avatars/2.png", "avatars/deep/3.png"]
    );
    assert_eq!(store.list(Bucket::Permanent, "avatars").await.unwrap().len(), 4);
    assert_eq!(store.list(Bucket::Permanent, "").await.unwrap().len(), 6);
    assert!(store.list(Bucket::Permanent, "nothing/").await.unwrap().is_empty());
    assert!(store.list(Bucket::Temp, "").await.unwrap().is_empty());
}

/// Keys with spaces, unicode, slashes, and a key that is also a "directory" of another key.
pub async fn unusual_keys(store: &dyn BlobStore) {
    let keys = ["with space.jpg", "ünïcødé/图像.png", "a/b/c/d.webp", "a/b", "percent%20.png", "tilde~.gif", "a/b~"];
    for key in keys {
        store.put(Bucket::Temp, key, Bytes::from(key.as_bytes().to_vec()), &meta("image/png", &[])).await.unwrap();
    }
    for key in keys {
        let got = store.get(Bucket::Temp, key).await.unwrap().bytes(1024).await.unwrap();
        assert_eq!(got.as_ref(), key.as_bytes(), "{key}");
    }
    let mut expected: Vec<&str> = keys.to_vec();
    expected.sort();
    assert_eq!(store.list(Bucket::Temp, "").await.unwrap(), expected);
}

/// Keys that could escape a directory or mean different things on different backends are refused
/// by every adapter, before anything is written.
pub async fn invalid_keys_refused(store: &dyn BlobStore) {
    for key in ["", "../etc/passwd", "a/../../b", "/abs", "a//b", "a/./b", "back\\slash", "nul\0", "a/", "new\nline"] {
        let err = store.put(Bucket::Temp, key, Bytes::from_static(b"x"), &meta("image/png", &[])).await;
        assert!(matches!(err, Err(StoreError::InvalidKey { .. })), "{key:?} gave {err:?}");
        assert!(matches!(store.get(Bucket::Temp, key).await, Err(StoreError::InvalidKey { .. })), "{key:?}");
        assert!(matches!(store.delete(Bucket::Temp, key).await, Err(StoreError::InvalidKey { .. })), "{key:?}");
    }
    let long = "k".repeat(1025);
    assert!(matches!(store.head(Bucket::Temp, &long).await, Err(StoreError::InvalidKey { .. })));
    assert!(matches!(store.list(Bucket::Temp, "../").await, Err(StoreError::InvalidKey { .. })));
    assert!(store.list(Bucket::Temp, "").await.unwrap().is_empty(), "nothing was written");
}

/// Readiness answers for existing buckets.
pub async fn check_answers(store: &dyn BlobStore) {
    store.check().await.unwrap();
}
