//! The benchmarks' real photos: `scripts/fetch-photos` fetches them (Debian packages) into a cache
//! outside the repository and prints where.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The corpus folder, fetched first when it is not there yet.
pub fn cache() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let fetched = Command::new(root.join("scripts/fetch-photos")).output().expect("run scripts/fetch-photos");
    assert!(fetched.status.success(), "scripts/fetch-photos failed: {}", String::from_utf8_lossy(&fetched.stderr));
    PathBuf::from(String::from_utf8(fetched.stdout).unwrap().trim())
}

/// The JPEG photos of these folders of the corpus, in name order.
#[allow(dead_code)] // not every benchmark lists photos this way
pub fn jpegs(dirs: &[&str]) -> Vec<PathBuf> {
    let cache = cache();
    let mut photos: Vec<PathBuf> = dirs
        .iter()
        .flat_map(|dir| std::fs::read_dir(cache.join(dir)).unwrap().map(|entry| entry.unwrap().path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "jpg"))
        .collect();
    photos.sort();
    photos
}
