//! `tandem crds`: prints every CRD as multi-document YAML, or refreshes the checked-in copies under `crds/` and
//! `charts/tandem/crds/` (one file per kind). A test fails when those copies no longer match the Rust types.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

use crate::api::all_crds;

/// Directories, relative to the repository root, that hold a generated copy of every CRD.
pub const OUTPUT_DIRS: &[&str] = &["crds", "charts/tandem/crds"];

/// The command that refreshes the generated copies (run from the repository root).
pub const REFRESH_COMMAND: &str = "cargo run -- crds --write";

/// First line of every generated file; `--write` only ever deletes files that start with it.
const HEADER: &str = "# Generated from src/api by `tandem crds --write`; do not edit.\n";

#[derive(Debug, clap::Args)]
pub struct CrdsArgs {
    /// Write one file per kind into crds/ and charts/tandem/crds/ under --root instead of printing to stdout.
    #[arg(long)]
    pub write: bool,
    /// Repository root the files are written under (with --write).
    #[arg(long, default_value = ".")]
    pub root: PathBuf,
}

pub fn run(args: CrdsArgs) -> anyhow::Result<()> {
    if !args.write {
        print!("{}", all_documents());
        return Ok(());
    }
    for path in write(&args.root)? {
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// One YAML document (starting with `---`) for `crd`.
pub fn to_yaml(crd: &CustomResourceDefinition) -> String {
    let body = serde_yaml::to_string(crd).expect("a CustomResourceDefinition serialises to YAML");
    format!("---\n{body}")
}

/// Every CRD as one multi-document YAML stream, as `tandem crds` prints it.
pub fn all_documents() -> String {
    all_crds().iter().map(to_yaml).collect()
}

/// The generated files: (path relative to the repository root, content).
pub fn files() -> Vec<(PathBuf, String)> {
    let crds = all_crds();
    OUTPUT_DIRS
        .iter()
        .flat_map(|dir| {
            crds.iter().map(move |crd| {
                let path = Path::new(dir).join(format!("{}.yaml", crd.spec.names.plural));
                (path, format!("{HEADER}{}", to_yaml(crd)))
            })
        })
        .collect()
}

/// Writes every generated file under `root` and deletes generated files no kind produces any more.
pub fn write(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let files = files();
    for dir in OUTPUT_DIRS {
        for old in yaml_files(&root.join(dir)) {
            let generated = fs::read_to_string(&old).is_ok_and(|text| text.starts_with(HEADER));
            if generated && !files.iter().any(|(path, _)| root.join(path) == old) {
                fs::remove_file(&old).with_context(|| format!("removing {}", old.display()))?;
            }
        }
    }
    let mut written = Vec::new();
    for (path, content) in files {
        let path = root.join(path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Checked-in files (relative to `root`) that differ from what the Rust types generate: missing, changed, or left over.
pub fn stale(root: &Path) -> Vec<PathBuf> {
    let files = files();
    let mut stale: Vec<PathBuf> = files
        .iter()
        .filter(|(path, content)| fs::read_to_string(root.join(path)).ok().as_deref() != Some(content.as_str()))
        .map(|(path, _)| path.clone())
        .collect();
    for dir in OUTPUT_DIRS {
        for found in yaml_files(&root.join(dir)) {
            if !files.iter().any(|(path, _)| root.join(path) == found) {
                stale.push(found.strip_prefix(root).unwrap_or(&found).to_path_buf());
            }
        }
    }
    stale
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_crds_match_the_rust_types() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let stale = stale(root);
        assert!(
            stale.is_empty(),
            "these generated CRD files are out of date: {stale:?}\n\
             refresh them with `{REFRESH_COMMAND}` from the repository root and commit the result"
        );
    }

    #[test]
    fn write_then_check_round_trips_and_removes_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            stale(dir.path()).len(),
            files().len(),
            "an empty tree is entirely stale"
        );
        let leftover = dir.path().join("crds/mcpservers.yaml");
        fs::create_dir_all(leftover.parent().unwrap()).unwrap();
        fs::write(&leftover, format!("{HEADER}---\n")).unwrap();
        let handwritten = dir.path().join("crds/notes.yaml");
        fs::write(&handwritten, "# mine\n").unwrap();

        write(dir.path()).unwrap();

        assert!(!leftover.exists(), "a generated file no kind produces is deleted");
        assert_eq!(
            stale(dir.path()),
            vec![PathBuf::from("crds/notes.yaml")],
            "a hand-written file is reported, not deleted"
        );
        fs::remove_file(handwritten).unwrap();
        assert!(stale(dir.path()).is_empty());
        fs::write(dir.path().join("charts/tandem/crds/components.yaml"), "edited").unwrap();
        assert_eq!(
            stale(dir.path()),
            vec![PathBuf::from("charts/tandem/crds/components.yaml")]
        );
    }

    #[test]
    fn prints_one_document_per_kind() {
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&all_documents())
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        let names: Vec<&str> = docs.iter().map(|d| d["metadata"]["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "components.dapr.io",
                "configurations.dapr.io",
                "httpendpoints.dapr.io",
                "resiliencies.dapr.io",
                "subscriptions.dapr.io"
            ]
        );
        assert!(docs.iter().all(|d| d["kind"] == "CustomResourceDefinition"));
    }
}
