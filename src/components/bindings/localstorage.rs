//! `bindings.localstorage`: files under a root folder (`rootPath`). Operations as Dapr's: `create` (answers
//! `{"fileName": ...}`; a JSON string is unquoted and, when it is base64, decoded), `get`, `list` (every file
//! below, recursively, as absolute paths) and `delete`, each naming its file with the `fileName` metadata. A file
//! name can never leave the root: `..` stops at the root and symbolic links are not followed out of it.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;

use super::{Binding, BindingError, Directions, InvokeRequest, InvokeResponse};
use crate::components::{ComponentError, Metadata};

pub async fn build(md: Metadata) -> Result<Arc<dyn Binding>, ComponentError> {
    let root = md
        .string("rootPath")
        .ok_or_else(|| ComponentError::invalid("rootPath", "property rootPath must not be empty"))?;
    let root = absolute(Path::new(&root))
        .map_err(|e| ComponentError::invalid("rootPath", format!("cannot resolve {root}: {e}")))?;
    for denied in ["/proc", "/sys", "/boot", "/var/run/secrets", "/run/secrets"] {
        if root.starts_with(denied) {
            return Err(ComponentError::invalid(
                "rootPath",
                "property rootPath points to a disallowed location",
            ));
        }
    }
    if root.is_file() {
        return Err(ComponentError::invalid(
            "rootPath",
            "property rootPath represents a file and not a directory",
        ));
    }
    tokio::fs::create_dir_all(&root).await.map_err(|e| {
        ComponentError::invalid(
            "rootPath",
            format!(
                "unable to create directory specified by 'rootPath' {}: {e}",
                root.display()
            ),
        )
    })?;
    let root = tokio::fs::canonicalize(&root)
        .await
        .map_err(|e| ComponentError::invalid("rootPath", e.to_string()))?;
    super::directed(&md, Arc::new(LocalStorage { root }))
}

fn absolute(p: &Path) -> std::io::Result<PathBuf> {
    let p = if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()?.join(p)
    };
    Ok(lexical(&p))
}

/// `p` with `.` and `..` resolved without touching the file system; `..` never climbs above `/`.
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    /// Where `name` is inside the root: `..` stops at the root, and a symbolic link on the way that points out
    /// of the root is refused.
    fn resolve(&self, name: &str) -> Result<PathBuf, BindingError> {
        let inside = lexical(Path::new(&format!("/{name}")));
        let path = self.root.join(inside.strip_prefix("/").unwrap_or(&inside));
        // Every existing part of the path must stay under the root once links are followed.
        let mut probe = path.clone();
        loop {
            if let Ok(real) = std::fs::canonicalize(&probe) {
                if !real.starts_with(&self.root) {
                    return Err(BindingError::new(format!(
                        "the path {} leads out of rootPath through a symbolic link",
                        path.display()
                    )));
                }
                break;
            }
            if !probe.pop() {
                break;
            }
        }
        Ok(path)
    }

    fn file_name(req: &InvokeRequest) -> &str {
        req.metadata.get("fileName").map(String::as_str).unwrap_or("")
    }
}

/// The bytes `create` writes: a JSON string (as the HTTP API passes `"data":"..."`) unquoted, then base64-decoded
/// when it is valid padded base64 — Dapr's rule, so files match what Dapr writes.
fn content(data: &[u8]) -> Vec<u8> {
    let unquoted = match serde_json::from_slice::<String>(data) {
        Ok(s) if data.first() == Some(&b'"') => s.into_bytes(),
        _ => data.to_vec(),
    };
    match base64::engine::general_purpose::STANDARD.decode(&unquoted) {
        Ok(decoded) if !unquoted.is_empty() => decoded,
        _ => unquoted,
    }
}

#[async_trait]
impl Binding for LocalStorage {
    fn directions(&self) -> Directions {
        Directions::OUTPUT
    }

    fn operations(&self) -> &[&'static str] {
        &["create", "get", "list", "delete"]
    }

    async fn invoke(&self, req: InvokeRequest) -> Result<Option<InvokeResponse>, BindingError> {
        match req.operation.as_str() {
            "create" => {
                let name = match Self::file_name(&req) {
                    "" => uuid::Uuid::new_v4().to_string(),
                    n => n.to_owned(),
                };
                let path = self.resolve(&name)?;
                if let Some(dir) = path.parent() {
                    tokio::fs::create_dir_all(dir)
                        .await
                        .map_err(|e| BindingError::new(format!("error creating directory {}: {e}", dir.display())))?;
                }
                tokio::fs::write(&path, content(&req.data))
                    .await
                    .map_err(|e| BindingError::new(format!("error creating file {}: {e}", path.display())))?;
                let relative = path
                    .strip_prefix(&self.root)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned();
                Ok(Some(InvokeResponse {
                    data: Bytes::from(serde_json::json!({ "fileName": relative }).to_string()),
                    ..Default::default()
                }))
            }
            "get" => {
                let path = self.resolve(Self::file_name(&req))?;
                match tokio::fs::read(&path).await {
                    Ok(data) => Ok(Some(InvokeResponse {
                        data: data.into(),
                        ..Default::default()
                    })),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        Err(BindingError::new(format!("file not found: {}", path.display())))
                    }
                    Err(e) => Err(BindingError::new(format!("error reading file {}: {e}", path.display()))),
                }
            }
            "list" => {
                let dir = self.resolve(Self::file_name(&req))?;
                let meta = tokio::fs::metadata(&dir)
                    .await
                    .map_err(|e| BindingError::new(format!("error getting stats for path {}: {e}", dir.display())))?;
                if !meta.is_dir() {
                    return Err(BindingError::new(format!(
                        "unable to list files as the file specified is not a directory: {}",
                        dir.display()
                    )));
                }
                let files = tokio::task::spawn_blocking(move || walk(&dir))
                    .await
                    .map_err(|e| BindingError::new(e.to_string()))??;
                // An empty folder lists as `null`, as in Dapr.
                let body = if files.is_empty() {
                    "null".to_owned()
                } else {
                    serde_json::to_string(&files).unwrap_or_default()
                };
                Ok(Some(InvokeResponse {
                    data: body.into(),
                    ..Default::default()
                }))
            }
            "delete" => {
                let path = self.resolve(Self::file_name(&req))?;
                if path == self.root {
                    return Err(BindingError::new("delete needs the fileName of a file under rootPath"));
                }
                let removed = match tokio::fs::metadata(&path).await {
                    Ok(m) if m.is_dir() => tokio::fs::remove_dir(&path).await,
                    _ => tokio::fs::remove_file(&path).await,
                };
                removed.map_err(|e| BindingError::new(format!("error deleting file {}: {e}", path.display())))?;
                Ok(None)
            }
            other => Err(BindingError::new(format!("unsupported operation {other}"))),
        }
    }
}

/// Every regular file under `dir`, sorted, as absolute paths; links are not followed.
fn walk(dir: &Path) -> Result<Vec<String>, BindingError> {
    let mut out = vec![];
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries =
            std::fs::read_dir(&d).map_err(|e| BindingError::new(format!("error listing {}: {e}", d.display())))?;
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_unquotes_and_decodes_as_dapr_does() {
        assert_eq!(content(br#""hello world""#), b"hello world");
        assert_eq!(content(br#""aGVsbG8=""#), b"hello");
        assert_eq!(content(br#"{"a":1}"#), br#"{"a":1}"#);
        assert_eq!(content(b"raw bytes"), b"raw bytes");
    }

    #[tokio::test]
    async fn file_names_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let md = Metadata::new(
            "files",
            "app",
            "",
            [("rootPath".to_owned(), dir.path().to_string_lossy().into_owned())],
        );
        let b = build(md).await.unwrap();
        let req = |op: &str, name: &str| InvokeRequest {
            operation: op.into(),
            data: Bytes::from_static(b"\"secret\""),
            metadata: [("fileName".to_owned(), name.to_owned())].into(),
        };
        let created = b.invoke(req("create", "../../etc/passwd")).await.unwrap().unwrap();
        assert_eq!(&created.data[..], br#"{"fileName":"etc/passwd"}"#);
        assert!(dir.path().join("etc/passwd").exists());
        std::os::unix::fs::symlink("/etc", dir.path().join("out")).unwrap();
        let err = b.invoke(req("get", "out/hostname")).await.unwrap_err();
        assert!(err.message.contains("symbolic link"), "{err}");
        let err = b.invoke(req("get", "missing")).await.unwrap_err();
        assert!(err.message.starts_with("file not found: "), "{err}");
    }
}
