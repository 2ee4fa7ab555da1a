//! Reading the repository's packaging: `manifests/` files and their YAML documents (for
//! tests/tests/manifests.rs and tests/tests/monitoring.rs).

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `manifests/` of the repository.
pub fn dir() -> PathBuf {
    repo().join("manifests")
}

/// The file's text; panics naming it when it cannot be read.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every YAML document of a file, as JSON values (empty documents skipped); panics naming
/// the file on invalid YAML.
pub fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = read(path);
    let mut out = Vec::new();
    for de in serde_norway::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(de)
            .unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", path.display()));
        if !v.is_null() {
            out.push(v);
        }
    }
    out
}
