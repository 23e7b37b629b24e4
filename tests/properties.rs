//! Property tests (proptest) of the code that reads untrusted input before any sandbox: the header
//! probe, the completeness check, key and prefix validation, and the filesystem store's key
//! encoding. Run longer with `PROPTEST_CASES=100000 cargo test --release --test suite properties::`.

use bytes::Bytes;
use image::{DynamicImage, ImageFormat, RgbImage};
use pixbox::imaging::{self, Format};
use pixbox::storage::{BlobStore, Bucket, FsStore, ObjectMeta, validate_key, validate_prefix};
use proptest::prelude::*;

/// Bytes that start like one of the accepted formats (so the probe gets past sniffing), then
/// anything.
fn image_like() -> impl Strategy<Value = Vec<u8>> {
    let magic = prop_oneof![
        Just(b"\xFF\xD8\xFF".to_vec()),
        Just(b"\x89PNG\r\n\x1a\n".to_vec()),
        Just(b"GIF89a".to_vec()),
        Just(b"RIFF\0\0\0\0WEBPVP8 ".to_vec()),
        Just(b"RIFF\0\0\0\0WEBPVP8L".to_vec()),
        Just(b"RIFF\0\0\0\0WEBPVP8X".to_vec()),
    ];
    (magic, proptest::collection::vec(any::<u8>(), 0..2048)).prop_map(|(mut m, rest)| {
        m.extend(rest);
        m
    })
}

fn encoded(width: u32, height: u32, format: ImageFormat) -> Vec<u8> {
    let image = DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 7])));
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

proptest! {
    /// The probe answers every input, an error at worst, and never claims a format the bytes do
    /// not start with.
    #[test]
    fn probe_never_panics(bytes in prop_oneof![image_like(), proptest::collection::vec(any::<u8>(), 0..512)]) {
        if let Ok(header) = imaging::probe(&bytes) {
            prop_assert_eq!(Some(header.format), imaging::sniff(&bytes));
            let _ = imaging::is_complete(&bytes, header.format);
        }
    }

    /// Real images of any size: the probe reads their exact size, the completeness check passes,
    /// and no proper prefix of a PNG or WebP passes it.
    #[test]
    fn real_images_probe_exactly_and_cuts_are_caught(
        width in 1u32..80,
        height in 1u32..80,
        which in 0usize..4,
        cut in any::<prop::sample::Index>(),
    ) {
        let (format, kind) = [
            (ImageFormat::Png, Format::Png),
            (ImageFormat::Jpeg, Format::Jpeg),
            (ImageFormat::WebP, Format::Webp),
            (ImageFormat::Gif, Format::Gif),
        ][which];
        let bytes = encoded(width, height, format);
        let header = imaging::probe(&bytes).unwrap();
        prop_assert_eq!((header.format, header.width, header.height), (kind, width, height));
        prop_assert!(imaging::is_complete(&bytes, kind));
        if matches!(kind, Format::Png | Format::Webp) {
            let prefix = &bytes[..cut.index(bytes.len())];
            prop_assert!(!imaging::is_complete(prefix, kind), "a {}-byte prefix of {} passed", prefix.len(), bytes.len());
        }
    }

    /// Whatever key validation accepts is relative, bounded, and free of traversal and control
    /// characters; a prefix it accepts joins any valid name into a valid key.
    #[test]
    fn accepted_keys_cannot_escape(key in ".{0,40}|[a-z./\\\\%\\x00-]{0,12}", name in "[a-z0-9]{1,8}\\.jpg") {
        if validate_key(&key).is_ok() {
            prop_assert!(!key.is_empty() && key.len() <= 1024);
            prop_assert!(!key.starts_with('/') && !key.contains('\\') && !key.chars().any(char::is_control));
            prop_assert!(key.split('/').all(|s| !s.is_empty() && s != "." && s != ".."));
        }
        if validate_prefix(&key).is_ok() {
            let joined = if key.is_empty() || key.ends_with('/') { format!("{key}{name}") } else { format!("{key}/{name}") };
            prop_assert!(validate_key(&joined).is_ok(), "{joined:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The filesystem store keeps any valid key (any Unicode, `%`, `~`, spaces) as itself: what
    /// is put is listed and read back under the same key, two keys never share a file, and every
    /// file stays inside the bucket's directory.
    #[test]
    fn fs_store_keys_round_trip(keys in proptest::collection::btree_set("[a-zA-Z0-9 %~._é漢-]{1,10}(/[a-zA-Z0-9 %~._é漢-]{1,10}){0,2}", 1..6)) {
        let keys: Vec<String> = keys.into_iter().filter(|k| validate_key(k).is_ok()).collect();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path(), "temp", "perm", true).unwrap();
        runtime.block_on(async {
            let mut stored = Vec::new();
            for key in &keys {
                // A key may also be a "directory" of another (a and a/b): both must work.
                store.put(Bucket::Temp, key, Bytes::from(key.clone().into_bytes()), &ObjectMeta::default()).await.unwrap();
                stored.push(key.clone());
            }
            let mut listed = store.list(Bucket::Temp, "").await.unwrap();
            listed.sort();
            stored.sort();
            assert_eq!(listed, stored);
            for key in &keys {
                let body = store.get(Bucket::Temp, key).await.unwrap().bytes(1 << 20).await.unwrap();
                assert_eq!(&body[..], key.as_bytes());
            }
        });
        let root = dir.path().canonicalize().unwrap();
        for entry in walk(dir.path()) {
            prop_assert!(entry.canonicalize().unwrap().starts_with(&root));
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}
