//! `crypto.dapr.localstorage`: keys read from files in a folder (metadata `path`), one key per file: `.json` a
//! JWK, `.pem` a PEM key, anything else whichever it looks like (raw or base64 bytes being a symmetric key).
//! Key names are file names inside the folder and cannot leave it.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::{CryptoError, CryptoProvider, Key};
use crate::components::{ComponentError, Metadata};
use crate::echo::echo;

pub struct LocalStorage {
    /// The folder, canonical (symlinks resolved), so a key's resolved path can be checked to be inside it.
    root: PathBuf,
}

pub async fn build(md: Metadata) -> Result<Arc<dyn CryptoProvider>, ComponentError> {
    let path = md
        .string("path")
        .ok_or_else(|| ComponentError::invalid("path", "metadata property 'path' is required"))?;
    let root = tokio::fs::canonicalize(&path)
        .await
        .map_err(|e| ComponentError::invalid("path", format!("could not stat path '{path}': {e}")))?;
    if !root.is_dir() {
        return Err(ComponentError::invalid(
            "path",
            format!("path '{path}' is not a directory"),
        ));
    }
    Ok(Arc::new(LocalStorage { root }))
}

impl LocalStorage {
    pub fn new(root: impl AsRef<Path>) -> std::io::Result<Self> {
        Ok(LocalStorage {
            root: std::fs::canonicalize(root)?,
        })
    }

    /// The file holding key `name`, refusing names that would leave the folder.
    async fn file(&self, name: &str) -> Result<PathBuf, CryptoError> {
        if name.contains("..") {
            return Err(CryptoError::Key("invalid key path: cannot contain '..'".into()));
        }
        let relative = Path::new(name);
        if name.is_empty()
            || name.contains('\0')
            || !relative
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(CryptoError::Key(format!(
                "invalid key path {:?}: must name a file inside the folder",
                echo(name)
            )));
        }
        let not_found = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::NotFound {
                CryptoError::Key(format!("failed to load key '{}': key not found", echo(name)))
            } else {
                CryptoError::Key(format!("failed to load key '{}': {e}", echo(name)))
            }
        };
        let resolved = tokio::fs::canonicalize(self.root.join(relative))
            .await
            .map_err(not_found)?;
        if !resolved.starts_with(&self.root) {
            return Err(CryptoError::Key(format!(
                "invalid key path {:?}: it resolves outside the folder",
                echo(name)
            )));
        }
        Ok(resolved)
    }
}

/// Key files larger than this are not keys.
const MAX_KEY_FILE: u64 = 1 << 20;

#[async_trait]
impl CryptoProvider for LocalStorage {
    async fn key(&self, name: &str) -> Result<Key, CryptoError> {
        let path = self.file(name).await?;
        let len = tokio::fs::metadata(&path)
            .await
            .map_err(|e| CryptoError::Key(format!("failed to load key '{}': {e}", echo(name))))?
            .len();
        if len > MAX_KEY_FILE {
            return Err(CryptoError::Key(format!(
                "failed to load key '{}': the file is larger than {MAX_KEY_FILE} bytes",
                echo(name)
            )));
        }
        let data = tokio::fs::read(&path)
            .await
            .map_err(|e| CryptoError::Key(format!("failed to load key '{}': {e}", echo(name))))?;
        let content_type = match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase) {
            Some(e) if e == "json" => Some("application/json"),
            Some(e) if e == "pem" => Some("application/x-pem-file"),
            _ => None,
        };
        Key::parse(&data, content_type).map_err(|e| CryptoError::Key(format!("failed to parse key from secret: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn key_names_cannot_leave_the_folder() {
        let outer = tempfile::tempdir().unwrap();
        let dir = outer.path().join("keys");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(outer.path().join("secret"), [1u8; 32]).unwrap();
        std::fs::write(dir.join("k"), [2u8; 32]).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(outer.path().join("secret"), dir.join("link")).unwrap();
        let store = LocalStorage::new(&dir).unwrap();
        assert_eq!(store.key("k").await.unwrap().kty(), "oct");
        for bad in ["../secret", "/etc/passwd", "", "a/../../secret"] {
            assert!(store.key(bad).await.is_err(), "{bad}");
        }
        #[cfg(unix)]
        assert!(
            store.key("link").await.unwrap_err().to_string().contains("outside"),
            "a symlink out of the folder is refused"
        );
        assert!(
            store
                .key("missing")
                .await
                .unwrap_err()
                .to_string()
                .contains("key not found")
        );
    }
}
