//! The crypto provider kind: key vaults the cryptography APIs use. Backends only retrieve keys
//! ([`CryptoProvider::key`]); every operation with a retrieved key (wrap, encrypt, sign, ...) is done here, once for
//! every backend, after checking the key's `key_ops`/`use`/`alg` restrictions, as components-contrib's local
//! providers do.

pub mod ciphers;
pub mod ec;
pub mod jwks;
pub mod keys;
pub mod localstorage;
pub mod signing;

use async_trait::async_trait;

pub use ciphers::{Algorithm, Sealed, WrapAlgorithm};
pub use keys::Key;
pub use signing::SignatureAlgorithm;

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

    /// The public part of key `name`; a symmetric key has none, which Dapr reports as the key not being found.
    async fn public_key(&self, name: &str) -> Result<Key, CryptoError> {
        self.key(name).await?.public().ok_or(CryptoError::KeyNotFound)
    }

    /// Wraps `plaintext_key` with the key named `name` (the key encryption key).
    async fn wrap_key(
        &self,
        name: &str,
        algorithm: Algorithm,
        plaintext_key: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Sealed, CryptoError> {
        let kek = usable(
            self.key(name).await,
            "the key encryption key",
            "wrapKey",
            algorithm.name(),
        )?;
        kek.encrypt(algorithm, plaintext_key, nonce, aad)
    }

    /// Unwraps `wrapped_key` with the key named `name`.
    async fn unwrap_key(
        &self,
        name: &str,
        algorithm: Algorithm,
        wrapped_key: &[u8],
        nonce: &[u8],
        tag: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let kek = usable(
            self.key(name).await,
            "the key encryption key",
            "unwrapKey",
            algorithm.name(),
        )?;
        kek.decrypt(algorithm, wrapped_key, nonce, tag, aad)
    }

    /// Encrypts a small message with the key named `name`.
    async fn encrypt(
        &self,
        name: &str,
        algorithm: Algorithm,
        plaintext: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Sealed, CryptoError> {
        let key = usable(self.key(name).await, "the key", "encrypt", algorithm.name())?;
        key.encrypt(algorithm, plaintext, nonce, aad)
    }

    /// Decrypts a small message with the key named `name`.
    async fn decrypt(
        &self,
        name: &str,
        algorithm: Algorithm,
        ciphertext: &[u8],
        nonce: &[u8],
        tag: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let key = usable(self.key(name).await, "the key", "decrypt", algorithm.name())?;
        key.decrypt(algorithm, ciphertext, nonce, tag, aad)
    }

    /// Signs `digest` with the key named `name`.
    async fn sign(&self, name: &str, algorithm: SignatureAlgorithm, digest: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let key = usable(self.key(name).await, "the key", "sign", algorithm.name())?;
        key.sign(algorithm, digest)
    }

    /// Whether `signature` of `digest` is valid for the key named `name`.
    async fn verify(
        &self,
        name: &str,
        algorithm: SignatureAlgorithm,
        digest: &[u8],
        signature: &[u8],
    ) -> Result<bool, CryptoError> {
        let key = usable(self.key(name).await, "the key", "verify", algorithm.name())?;
        key.verify(algorithm, digest, signature)
    }
}

/// The retrieved key, once it may do `op` with `algorithm`.
fn usable(key: Result<Key, CryptoError>, what: &str, op: &str, algorithm: &str) -> Result<Key, CryptoError> {
    let key = key.map_err(|e| CryptoError::Key(format!("failed to retrieve {what}: {e}")))?;
    key.check(op, algorithm)?;
    Ok(key)
}

impl ComponentKind for dyn CryptoProvider {
    const KIND: Kind = Kind::Crypto;

    fn capabilities(provider: &Self) -> Vec<String> {
        provider.features().iter().map(|f| f.to_string()).collect()
    }
}
