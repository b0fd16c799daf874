//! The secret store kind: read-only named secrets, each a map of key to value.

pub mod kubernetes;
pub mod local_env;
pub mod local_file;

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::{ComponentKind, Kind};

/// One secret: its keys and values (most secrets have a single key, the secret's own name).
pub type Secret = BTreeMap<String, String>;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SecretError {
    #[error("secret {0} not found")]
    NotFound(String),
    #[error("{0}")]
    Backend(String),
}

#[async_trait]
pub trait SecretStore: Send + Sync {
    /// Capability names reported by the metadata API (e.g. `MULTIPLE_KEY_VALUES_PER_SECRET`).
    fn features(&self) -> &'static [&'static str] {
        &[]
    }

    async fn get(&self, name: &str, metadata: &BTreeMap<String, String>) -> Result<Secret, SecretError>;

    /// Every secret the store holds.
    async fn bulk_get(&self, metadata: &BTreeMap<String, String>) -> Result<BTreeMap<String, Secret>, SecretError>;
}

impl ComponentKind for dyn SecretStore {
    const KIND: Kind = Kind::SecretStore;

    fn capabilities(store: &Self) -> Vec<String> {
        store.features().iter().map(|f| f.to_string()).collect()
    }
}
