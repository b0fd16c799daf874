//! Loads resource YAML (Components, Subscriptions, HTTPEndpoints, Resiliency, Configuration) from disk.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::api::subscription::SubscriptionV1Alpha1;
use crate::api::{Configuration, in_scope};

/// Every resource that applies to this app, in file order: the same shape the operator serves.
pub use crate::control_plane::SidecarResources as Resources;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("duplicate definition of {kind} name {name} (in {first} and {second})")]
    Duplicate {
        kind: &'static str,
        name: String,
        first: String,
        second: String,
    },
}

/// Reads every `*.yaml`/`*.yml` file in each folder, keeping what is in scope for `app_id`/`namespace`.
pub fn load(paths: &[String], app_id: &str, namespace: &str) -> Result<Resources, LoadError> {
    let mut out = Resources::default();
    let mut sources: Vec<(String, String)> = vec![]; // component name -> file
    for dir in paths {
        let dir = Path::new(dir);
        let entries = std::fs::read_dir(dir).map_err(|e| LoadError::Read {
            path: dir.into(),
            message: e.to_string(),
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect();
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|e| LoadError::Read {
                path: path.clone(),
                message: e.to_string(),
            })?;
            let before = out.components.len();
            parse(&mut out, &text, &path)?;
            for c in &out.components[before..] {
                sources.push((c.name().to_owned(), path.display().to_string()));
            }
        }
    }
    retain_in_scope(&mut out, app_id, namespace);
    for (i, (name, file)) in sources.iter().enumerate() {
        if let Some((_, first)) = sources[..i].iter().find(|(n, _)| n == name)
            && out.components.iter().filter(|c| c.name() == name).count() > 1
        {
            return Err(LoadError::Duplicate {
                kind: "Component",
                name: name.clone(),
                first: first.clone(),
                second: file.clone(),
            });
        }
    }
    Ok(out)
}

/// Parses one file's YAML documents, adding the Dapr resources it holds; other kinds are skipped.
pub fn parse(out: &mut Resources, text: &str, path: &Path) -> Result<(), LoadError> {
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let invalid = |message: String| LoadError::Invalid {
            path: path.into(),
            message: format!("document {}: {message}", i + 1),
        };
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| invalid(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let field = |k: &str| value.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        let (api_version, kind) = (field("apiVersion"), field("kind"));
        if !api_version.starts_with("dapr.io/") {
            continue;
        }
        match (kind.as_str(), api_version.as_str()) {
            ("Component", _) => out.components.push(typed(value, &kind).map_err(invalid)?),
            ("Subscription", "dapr.io/v1alpha1") => {
                let v1: SubscriptionV1Alpha1 = typed(value, &kind).map_err(invalid)?;
                out.subscriptions.push(v1.into());
            }
            ("Subscription", _) => out.subscriptions.push(typed(value, &kind).map_err(invalid)?),
            ("HTTPEndpoint", _) => out.http_endpoints.push(typed(value, &kind).map_err(invalid)?),
            ("Resiliency", _) => out.resiliencies.push(typed(value, &kind).map_err(invalid)?),
            _ => tracing::debug!(path = %path.display(), kind, "skipping resource kind"),
        }
    }
    Ok(())
}

fn retain_in_scope(out: &mut Resources, app_id: &str, namespace: &str) {
    let ns_ok =
        |ns: &Option<String>| namespace.is_empty() || ns.as_deref().is_none_or(|n| n.is_empty() || n == namespace);
    out.components.retain(|c| {
        let keep = in_scope(&c.scopes, app_id) && ns_ok(&c.metadata.namespace);
        if !keep {
            tracing::info!(
                component = c.name(),
                "component is scoped to other apps or namespaces; not loading it"
            );
        }
        keep
    });
    out.subscriptions
        .retain(|s| in_scope(&s.scopes, app_id) && ns_ok(&s.metadata.namespace));
    out.http_endpoints
        .retain(|e| in_scope(&e.scopes, app_id) && ns_ok(&e.metadata.namespace));
    out.resiliencies
        .retain(|r| in_scope(&r.scopes, app_id) && ns_ok(&r.metadata.namespace));
}

fn typed<T: DeserializeOwned>(value: serde_yaml::Value, kind: &str) -> Result<T, String> {
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .map(|n| format!(" {n:?}"))
        .unwrap_or_default();
    serde_yaml::from_value(value).map_err(|e| format!("invalid {kind}{name}: {e}"))
}

/// Reads the Configuration in `path` (the first Configuration document of the file).
pub fn load_configuration(path: &str) -> Result<Configuration, LoadError> {
    let path = Path::new(path);
    let text = std::fs::read_to_string(path).map_err(|e| LoadError::Read {
        path: path.into(),
        message: e.to_string(),
    })?;
    parse_configuration(&text, path)
}

/// Parses and validates the first Configuration document of `text` (read from `path`).
pub fn parse_configuration(text: &str, path: &Path) -> Result<Configuration, LoadError> {
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let invalid = |message: String| LoadError::Invalid {
            path: path.into(),
            message: format!("document {}: {message}", i + 1),
        };
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| invalid(e.to_string()))?;
        if value.get("kind").and_then(|k| k.as_str()) == Some("Configuration") {
            let config: Configuration = typed(value, "Configuration").map_err(invalid)?;
            config.validate().map_err(|m| LoadError::Invalid {
                path: path.into(),
                message: m,
            })?;
            return Ok(config);
        }
    }
    Err(LoadError::Invalid {
        path: path.into(),
        message: "no Configuration document (kind: Configuration) found".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MULTI: &str = r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: statestore
spec:
  type: state.redis
  version: v1
  metadata:
  - name: redisHost
    value: localhost:6379
  - name: redisPassword
    secretKeyRef:
      name: redis-pass
      key: pass
auth:
  secretStore: local
---
apiVersion: dapr.io/v1alpha1
kind: Subscription
metadata:
  name: orders
spec:
  topic: orders
  route: /orders
  pubsubname: pubsub
scopes: [app1]
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: ignored
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: other
spec:
  type: state.in-memory
  version: v1
  metadata: []
scopes: [someone-else]
"#;

    #[test]
    fn parses_multi_document_files_and_applies_scopes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), MULTI).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not yaml: [").unwrap();
        let r = load(&[dir.path().display().to_string()], "app1", "").unwrap();
        assert_eq!(r.components.len(), 1);
        let c = &r.components[0];
        assert_eq!((c.name(), c.spec.type_.as_str()), ("statestore", "state.redis"));
        assert_eq!(
            c.spec.metadata[1].secret_key_ref.as_ref().unwrap().key.as_deref(),
            Some("pass")
        );
        assert_eq!(c.auth.as_ref().unwrap().secret_store, "local");
        assert_eq!(r.subscriptions.len(), 1);
        assert_eq!(r.subscriptions[0].spec.routes.default, "/orders");

        let other = load(&[dir.path().display().to_string()], "app2", "").unwrap();
        assert!(other.subscriptions.is_empty());
    }

    #[test]
    fn malformed_files_name_the_file_and_problem() {
        let dir = tempfile::tempdir().unwrap();
        let bad = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: x\nspec:\n  version: v1\n";
        std::fs::write(dir.path().join("bad.yaml"), bad).unwrap();
        let err = load(&[dir.path().display().to_string()], "a", "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.yaml") && err.contains("type"), "{err}");
    }

    #[test]
    fn duplicate_component_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let one = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: s\nspec:\n  type: state.in-memory\n  version: v1\n";
        std::fs::write(dir.path().join("a.yaml"), one).unwrap();
        std::fs::write(dir.path().join("b.yml"), one).unwrap();
        let err = load(&[dir.path().display().to_string()], "a", "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("duplicate definition of Component name s"), "{err}");
    }

    #[test]
    fn configuration_secret_scopes_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.yaml");
        std::fs::write(&p, "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: c\nspec:\n  secrets:\n    scopes:\n    - storeName: s\n      defaultAccess: maybe\n").unwrap();
        let err = load_configuration(p.to_str().unwrap()).unwrap_err().to_string();
        assert!(err.contains("defaultAccess maybe can be either allow or deny"), "{err}");
    }
}
