//! The crypto provider kind: key vaults the cryptography API wraps and unwraps file keys with. Backends only
//! retrieve keys ([`CryptoProvider::key`]); wrapping with a retrieved key is done here, once for every backend, as
//! components-contrib's local providers do.

pub mod jwks;
pub mod keys;
pub mod localstorage;

use async_trait::async_trait;

pub use keys::{Key, WrapAlgorithm};

use super::{ComponentKind, Kind};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CryptoError {
    #[error("key not found")]
    KeyNotFound,
    /// The key exists but could not be read or parsed.
    #[error("{0}")]
    Key(String),
    /// The key cannot do what was asked (wrong type, size, algorithm or operation).
    #[error("{0}")]
    Unusable(String),
    #[error("{0}")]
    Backend(String),
}

#[async_trait]
pub trait CryptoProvider: Send + Sync {
    /// Capability names reported by the metadata API (the local providers have none, as in Dapr).
    fn features(&self) -> &'static [&'static str] {
        &[]
    }

    /// The key named `name` (public, private or symmetric).
    async fn key(&self, name: &str) -> Result<Key, CryptoError>;

    /// Wraps `plaintext_key` with the key named `name`.
    async fn wrap_key(
        &self,
        name: &str,
        algorithm: WrapAlgorithm,
        plaintext_key: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let kek = self
            .key(name)
            .await
            .map_err(|e| CryptoError::Key(format!("failed to retrieve the key encryption key: {e}")))?;
        kek.wrap(algorithm, plaintext_key)
    }

    /// Unwraps `wrapped_key` with the key named `name`.
    async fn unwrap_key(
        &self,
        name: &str,
        algorithm: WrapAlgorithm,
        wrapped_key: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let kek = self
            .key(name)
            .await
            .map_err(|e| CryptoError::Key(format!("failed to retrieve the key encryption key: {e}")))?;
        kek.unwrap(algorithm, wrapped_key)
    }
}

impl ComponentKind for dyn CryptoProvider {
    const KIND: Kind = Kind::Crypto;

    fn capabilities(provider: &Self) -> Vec<String> {
        provider.features().iter().map(|f| f.to_string()).collect()
    }
}
