//! Dapr's "subtle" cryptography APIs (`Subtle*Alpha1`): single operations with a key held by a crypto provider —
//! get a public key, encrypt, decrypt, wrap, unwrap, sign, verify. As in Dapr, only the public-key lookup says what
//! went wrong; every other failure is one generic error per operation (the detail is logged at debug level), so an
//! answer cannot serve as a padding or decryption oracle.

use crate::components::crypto::{Algorithm, CryptoError, Key, Sealed, SignatureAlgorithm};
use crate::echo::echo;
use crate::sidecar::error::{ApiError, ApiResult};

use super::CryptoApi;

/// The largest key `subtle_wrap_key` reads (a 16384-bit RSA private key in PEM is about 12 KiB).
const MAX_PLAINTEXT_KEY: usize = 64 << 10;

/// How `get_key` writes the public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFormat {
    /// PEM `PUBLIC KEY` (PKIX).
    Pem,
    /// A JSON Web Key.
    Json,
}

impl KeyFormat {
    /// The format of the proto enum value (`PEM` = 0, `JSON` = 1).
    pub fn from_proto(v: i32) -> Option<KeyFormat> {
        match v {
            0 => Some(KeyFormat::Pem),
            1 => Some(KeyFormat::Json),
            _ => None,
        }
    }
}

/// A public key as `SubtleGetKeyAlpha1` answers it.
#[derive(Clone, Debug, PartialEq)]
pub struct PublicKey {
    /// The key's name, as asked for.
    pub name: String,
    pub public_key: String,
}

/// Dapr's generic answer to a failed operation; the cause goes to the debug log only.
fn hidden(store: &str, what: &'static str, e: CryptoError) -> ApiError {
    tracing::debug!(component = %echo(store), error = %e, "{what}");
    ApiError::crypto_operation(what)
}

fn unsupported() -> CryptoError {
    CryptoError::Unusable("unsupported algorithm".into())
}

impl CryptoApi {
    /// The public part of key `name` of provider `store`; `format` is `None` for a format the caller named that
    /// does not exist.
    pub async fn get_key(&self, store: &str, name: &str, format: Option<KeyFormat>) -> ApiResult<PublicKey> {
        let provider = self.provider(store)?;
        let format = format.ok_or_else(|| ApiError::bad_request("invalid key format"))?;
        let key = provider
            .public_key(name)
            .await
            .map_err(|e| ApiError::crypto_key(name, e))?;
        let text = match format {
            KeyFormat::Pem => key.public_pem(),
            KeyFormat::Json => key.public_jwk(),
        }
        .map_err(|e| ApiError::crypto_key(name, e))?;
        Ok(PublicKey {
            name: name.to_owned(),
            public_key: text,
        })
    }

    /// Encrypts `plaintext` with key `key_name` and algorithm `algorithm` (a JWA name: A256GCM, RSA-OAEP-256, ...).
    pub async fn subtle_encrypt(
        &self,
        store: &str,
        key_name: &str,
        algorithm: &str,
        plaintext: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> ApiResult<Sealed> {
        let provider = self.provider(store)?;
        let result = match Algorithm::parse(algorithm) {
            Some(alg) => provider.encrypt(key_name, alg, plaintext, nonce, aad).await,
            None => Err(unsupported()),
        };
        result.map_err(|e| hidden(store, "failed to encrypt", e))
    }

    /// Decrypts a ciphertext (and its tag, for an authenticated cipher).
    pub async fn subtle_decrypt(
        &self,
        store: &str,
        key_name: &str,
        algorithm: &str,
        sealed: &Sealed,
        nonce: &[u8],
        aad: &[u8],
    ) -> ApiResult<Vec<u8>> {
        let provider = self.provider(store)?;
        let (ciphertext, tag) = (&sealed.ciphertext, &sealed.tag);
        let result = match Algorithm::parse(algorithm) {
            Some(alg) => provider.decrypt(key_name, alg, ciphertext, nonce, tag, aad).await,
            None => Err(unsupported()),
        };
        result.map_err(|e| hidden(store, "failed to decrypt", e))
    }

    /// Wraps `plaintext_key` (raw, base64, PEM or JWK, read as Dapr reads key files) with key `key_name`: the key is
    /// wrapped as its raw bytes (symmetric) or DER (PKCS#8 private, PKIX public).
    pub async fn subtle_wrap_key(
        &self,
        store: &str,
        key_name: &str,
        algorithm: &str,
        plaintext_key: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> ApiResult<Sealed> {
        let provider = self.provider(store)?;
        if plaintext_key.len() > MAX_PLAINTEXT_KEY {
            return Err(ApiError::crypto_operation(format!(
                "failed to parse plaintext key: a key is at most {MAX_PLAINTEXT_KEY} bytes"
            )));
        }
        let key = Key::parse(plaintext_key, None)
            .map_err(|e| ApiError::crypto_operation(format!("failed to parse plaintext key: {e}")))?;
        let result = match (Algorithm::parse(algorithm), key.serialize()) {
            (Some(alg), Ok(bytes)) => provider.wrap_key(key_name, alg, &bytes, nonce, aad).await,
            (None, _) => Err(unsupported()),
            (_, Err(e)) => Err(e),
        };
        result.map_err(|e| hidden(store, "failed to wrap key", e))
    }

    /// Unwraps a wrapped key (and its tag, for an authenticated cipher), answering the key's bytes.
    pub async fn subtle_unwrap_key(
        &self,
        store: &str,
        key_name: &str,
        algorithm: &str,
        wrapped: &Sealed,
        nonce: &[u8],
        aad: &[u8],
    ) -> ApiResult<Vec<u8>> {
        let provider = self.provider(store)?;
        let (wrapped_key, tag) = (&wrapped.ciphertext, &wrapped.tag);
        let result = match Algorithm::parse(algorithm) {
            Some(alg) => provider.unwrap_key(key_name, alg, wrapped_key, nonce, tag, aad).await,
            None => Err(unsupported()),
        };
        result.map_err(|e| hidden(store, "failed to unwrap key", e))
    }

    /// Signs `digest` (for EdDSA, the whole message) with key `key_name`.
    pub async fn subtle_sign(&self, store: &str, key_name: &str, algorithm: &str, digest: &[u8]) -> ApiResult<Vec<u8>> {
        let provider = self.provider(store)?;
        let result = match SignatureAlgorithm::parse(algorithm) {
            Some(alg) => provider.sign(key_name, alg, digest).await,
            None => Err(unsupported()),
        };
        result.map_err(|e| hidden(store, "failed to sign", e))
    }

    /// Whether `signature` is valid for `digest` and key `key_name`.
    pub async fn subtle_verify(
        &self,
        store: &str,
        key_name: &str,
        algorithm: &str,
        digest: &[u8],
        signature: &[u8],
    ) -> ApiResult<bool> {
        let provider = self.provider(store)?;
        let result = match SignatureAlgorithm::parse(algorithm) {
            Some(alg) => provider.verify(key_name, alg, digest, signature).await,
            None => Err(unsupported()),
        };
        result.map_err(|e| hidden(store, "failed to verify signature", e))
    }
}
