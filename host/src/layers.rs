//! The library's layers, lowest first, and the test that keeps every import pointing down: a
//! module may use the modules of lower layers and its own, never one of its layer or above. An
//! import cycle needs an import that points up, so there is none; a new module fails the test
//! until it is given a layer here.

/// Lowest first. A module's layer is its position here.
const LAYERS: &[&[&str]] = &[
    // Knows nothing of the rest: image headers, who may do what, the AWS SDK's setup.
    &["aws", "imaging", "auth"],
    // The two ports and their adapters.
    &["storage", "queue"],
    // What the api and the worker agree on; what pixbox tells its operators.
    &["jobs", "telemetry"],
    // The sandbox and its routes; operators' tools over the ports; telling others a job settled.
    &["sandbox", "operations", "webhooks"],
    // Presets rendered on request, by the sandbox, into the store; an image's life after its
    // upload (delete, duplicates, direct uploads).
    &["render", "lifecycle"],
    // The one configuration tree, made of the lower layers' settings.
    &["config"],
    // What runs: the HTTP api, the worker, the plugin author's commands, the backends' wiring.
    &["api", "worker", "author", "backends"],
    // Both roles started together.
    &["server"],
    // The command line.
    &["cli"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The top-level modules a source text imports through `crate::`, outside comments.
fn imports(source: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in source.lines().filter(|line| !line.trim_start().starts_with("//")) {
        for (at, _) in line.match_indices("crate::") {
            let name: String = line[at + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() && !found.contains(&name) {
                found.push(name);
            }
        }
    }
    found
}

#[test]
fn every_import_points_to_a_lower_layer() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut wrong = vec![];
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let module =
            relative.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        if matches!(module.as_str(), "lib" | "main" | "layers") {
            continue;
        }
        let Some(own) = layer(&module) else {
            wrong.push(format!("{module}: not in LAYERS (src/layers.rs); give it a layer"));
            continue;
        };
        for import in imports(&std::fs::read_to_string(&file).unwrap()) {
            match layer(&import) {
                _ if import == module => {}
                Some(theirs) if theirs < own => {}
                Some(_) => {
                    wrong.push(format!("{}: imports crate::{import}, which is not below {module}", relative.display()))
                }
                None => wrong.push(format!("{}: imports crate::{import}, which has no layer", relative.display())),
            }
        }
    }
    assert!(wrong.is_empty(), "imports that do not point down:\n{}", wrong.join("\n"));
}

#[test]
fn imports_are_read_from_code_not_comments() {
    let source = "use crate::jobs::State;\n/// See [`crate::worker::X`].\nlet a = crate::imaging::probe(x);\n";
    assert_eq!(imports(source), ["jobs", "imaging"]);
}
