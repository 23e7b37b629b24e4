//! Shared by the build scripts of the crates that compile C from Debian's sources (heif, jpeg):
//! checks that scripts/c-sources fetched and patched their `vendor/` folder with today's patches.

use std::path::Path;

/// Tells cargo what to watch and stops the build, saying what to run, unless `vendor/` holds what
/// scripts/c-sources makes from the crate's `patches/` (it keeps a copy of the patches it
/// applied). `sources` names what it fetches, for the message.
pub fn check(manifest: &Path, sources: &str) {
    for path in ["csrc", "patches", "vendor/.stamp", "vendor/.patches"] {
        println!("cargo:rerun-if-changed={path}");
    }
    let mut patches: Vec<_> =
        std::fs::read_dir(manifest.join("patches")).unwrap().map(|entry| entry.unwrap().path()).collect();
    patches.sort();
    let today: Vec<u8> = patches.iter().flat_map(|patch| std::fs::read(patch).unwrap()).collect();
    if std::fs::read(manifest.join("vendor/.patches")).ok() != Some(today) {
        panic!(
            "{} is missing or was patched with other patches than patches/: run scripts/c-sources (it fetches \
             {sources} from Debian and patches them; the host's build runs it itself)",
            manifest.join("vendor").display()
        );
    }
}
