//! Keys as crypto providers hold them (JWK, PEM, raw or base64 bytes; parsed as dapr/kit's `ParseKey` does) and the
//! key-wrapping algorithms of the `dapr.io/enc/v1` scheme.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::{BigUint, Oaep, RsaPrivateKey, RsaPublicKey};

use super::CryptoError;

/// A key-wrapping algorithm of the `dapr.io/enc/v1` scheme, with its manifest ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WrapAlgorithm {
    A256Kw,
    A128Cbc,
    A192Cbc,
    A256Cbc,
    RsaOaep256,
}

impl WrapAlgorithm {
    /// The algorithm a user names (`dapr-key-wrap-algorithm`, case-insensitive): Dapr's names and aliases (`AES` is
    /// A256KW, `RSA` is RSA-OAEP-256), plus the `A128CBC` spelling Dapr's documentation uses for `A128CBC-NOPAD`.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_uppercase().as_str() {
            "A256KW" | "AES" => WrapAlgorithm::A256Kw,
            "A128CBC-NOPAD" | "A128CBC" => WrapAlgorithm::A128Cbc,
            "A192CBC-NOPAD" | "A192CBC" => WrapAlgorithm::A192Cbc,
            "A256CBC-NOPAD" | "A256CBC" => WrapAlgorithm::A256Cbc,
            "RSA-OAEP-256" | "RSA" => WrapAlgorithm::RsaOaep256,
            _ => return None,
        })
    }

    /// The ID in the manifest's `kw` field.
    pub fn id(self) -> u8 {
        match self {
            WrapAlgorithm::A256Kw => 1,
            WrapAlgorithm::A128Cbc => 2,
            WrapAlgorithm::A192Cbc => 3,
            WrapAlgorithm::A256Cbc => 4,
            WrapAlgorithm::RsaOaep256 => 5,
        }
    }

    pub fn from_id(id: i64) -> Option<Self> {
        Some(match id {
            1 => WrapAlgorithm::A256Kw,
            2 => WrapAlgorithm::A128Cbc,
            3 => WrapAlgorithm::A192Cbc,
            4 => WrapAlgorithm::A256Cbc,
            5 => WrapAlgorithm::RsaOaep256,
            _ => return None,
        })
    }

    /// The JWA name, as a key's `alg` names it.
    pub fn name(self) -> &'static str {
        match self {
            WrapAlgorithm::A256Kw => "A256KW",
            WrapAlgorithm::A128Cbc => "A128CBC-NOPAD",
            WrapAlgorithm::A192Cbc => "A192CBC-NOPAD",
            WrapAlgorithm::A256Cbc => "A256CBC-NOPAD",
            WrapAlgorithm::RsaOaep256 => "RSA-OAEP-256",
        }
    }
}

/// What a key is made of.
#[derive(Clone)]
enum Material {
    Symmetric(Vec<u8>),
    RsaPrivate(Box<RsaPrivateKey>),
    RsaPublic(RsaPublicKey),
    /// A key tandem can read but not wrap with (EC, OKP): its JWK `kty`.
    Unsupported(&'static str),
}

/// A key of a crypto provider, with its optional JWK `alg` and `key_ops` restrictions.
#[derive(Clone)]
pub struct Key {
    material: Material,
    alg: Option<String>,
    key_ops: Option<Vec<String>>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kty", &self.kty())
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// A symmetric key of these bytes.
    pub fn symmetric(bytes: Vec<u8>) -> Key {
        Key::of(Material::Symmetric(bytes))
    }

    fn of(material: Material) -> Key {
        Key {
            material,
            alg: None,
            key_ops: None,
        }
    }

    /// The JWK key type: `oct`, `RSA`, `EC` or `OKP`.
    pub fn kty(&self) -> &'static str {
        match &self.material {
            Material::Symmetric(_) => "oct",
            Material::RsaPrivate(_) | Material::RsaPublic(_) => "RSA",
            Material::Unsupported(kty) => kty,
        }
    }

    /// Parses a key file: a JWK (`application/json`), PEM (`application/x-pem-file`: PKCS#1, PKCS#8 or PKIX), or,
    /// without a content type, whichever the bytes look like, raw or base64 bytes being a symmetric key.
    pub fn parse(raw: &[u8], content_type: Option<&str>) -> Result<Key, CryptoError> {
        if raw.is_empty() {
            return Err(CryptoError::Key("key is empty".into()));
        }
        match content_type {
            Some("application/json") => return Key::from_jwk_bytes(raw),
            Some("application/x-pem-file") => return Key::from_pem(raw),
            _ => {}
        }
        let l = raw.len();
        if raw[0] == b'{' && l != 16 && l != 24 && l != 32 {
            Key::from_jwk_bytes(raw)
        } else if l > 10 && raw.starts_with(b"-----") {
            Key::from_pem(raw)
        } else {
            Ok(Key::symmetric(symmetric_bytes(raw)))
        }
    }

    fn from_jwk_bytes(raw: &[u8]) -> Result<Key, CryptoError> {
        let jwk: serde_json::Value =
            serde_json::from_slice(raw).map_err(|e| CryptoError::Key(format!("invalid JWK: {e}")))?;
        Key::from_jwk(&jwk)
    }

    /// A key from a JWK object.
    pub fn from_jwk(jwk: &serde_json::Value) -> Result<Key, CryptoError> {
        let field = |name: &str| jwk.get(name).and_then(|v| v.as_str());
        let bytes = |name: &str| -> Result<Vec<u8>, CryptoError> {
            let v = field(name).ok_or_else(|| CryptoError::Key(format!("invalid JWK: missing field {name:?}")))?;
            URL_SAFE_NO_PAD
                .decode(v.trim_end_matches('='))
                .map_err(|e| CryptoError::Key(format!("invalid JWK: field {name:?} is not base64url: {e}")))
        };
        let big = |name: &str| bytes(name).map(|b| BigUint::from_bytes_be(&b));
        let material = match field("kty") {
            Some("oct") => Material::Symmetric(bytes("k")?),
            Some("RSA") => {
                let (n, e) = (big("n")?, big("e")?);
                if jwk.get("d").is_some() {
                    let primes = match (jwk.get("p"), jwk.get("q")) {
                        (Some(_), Some(_)) => vec![big("p")?, big("q")?],
                        _ => vec![],
                    };
                    let key = RsaPrivateKey::from_components(n, e, big("d")?, primes)
                        .map_err(|e| CryptoError::Key(format!("invalid RSA JWK: {e}")))?;
                    Material::RsaPrivate(Box::new(key))
                } else {
                    Material::RsaPublic(
                        RsaPublicKey::new(n, e).map_err(|e| CryptoError::Key(format!("invalid RSA JWK: {e}")))?,
                    )
                }
            }
            Some("EC") => Material::Unsupported("EC"),
            Some("OKP") => Material::Unsupported("OKP"),
            Some(other) => {
                return Err(CryptoError::Key(format!(
                    "invalid key type {:?}",
                    crate::echo::echo(other)
                )));
            }
            None => return Err(CryptoError::Key("invalid JWK: missing field \"kty\"".into())),
        };
        let key_ops = jwk.get("key_ops").and_then(|v| v.as_array()).map(|ops| {
            ops.iter()
                .filter_map(|o| o.as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        });
        Ok(Key {
            material,
            alg: field("alg").filter(|a| !a.is_empty()).map(str::to_owned),
            key_ops,
        })
    }

    fn from_pem(raw: &[u8]) -> Result<Key, CryptoError> {
        let text = std::str::from_utf8(raw).map_err(|_| CryptoError::Key("PEM key is not text".into()))?;
        let label = text
            .trim_start()
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.split_once("-----"))
            .map(|(label, _)| label)
            .ok_or_else(|| CryptoError::Key("failed to parse PEM block".into()))?;
        let bad = |e: &dyn std::fmt::Display| CryptoError::Key(format!("failed to parse PEM key ({label}): {e}"));
        let material = match label {
            "RSA PRIVATE KEY" => {
                Material::RsaPrivate(Box::new(RsaPrivateKey::from_pkcs1_pem(text).map_err(|e| bad(&e))?))
            }
            "RSA PUBLIC KEY" => Material::RsaPublic(RsaPublicKey::from_pkcs1_pem(text).map_err(|e| bad(&e))?),
            "PRIVATE KEY" => match RsaPrivateKey::from_pkcs8_pem(text) {
                Ok(k) => Material::RsaPrivate(Box::new(k)),
                Err(rsa::pkcs8::Error::PublicKey(_)) | Err(rsa::pkcs8::Error::KeyMalformed) => {
                    Material::Unsupported("EC")
                }
                Err(e) => return Err(bad(&e)),
            },
            "PUBLIC KEY" => match RsaPublicKey::from_public_key_pem(text) {
                Ok(k) => Material::RsaPublic(k),
                Err(rsa::pkcs8::spki::Error::OidUnknown { .. }) => Material::Unsupported("EC"),
                Err(e) => return Err(bad(&e)),
            },
            "EC PRIVATE KEY" => Material::Unsupported("EC"),
            other => {
                return Err(CryptoError::Key(format!(
                    "unsupported PEM block {:?}",
                    crate::echo::echo(other)
                )));
            }
        };
        Ok(Key::of(material))
    }

    /// Fails unless the key may do `op` (JWK `key_ops`) with `algorithm` (JWK `alg`); absent means any.
    fn check(&self, op: &str, algorithm: WrapAlgorithm) -> Result<(), CryptoError> {
        if let Some(ops) = &self.key_ops
            && !ops.iter().any(|o| o == op)
        {
            return Err(CryptoError::Unusable(format!(
                "key cannot perform the '{op}' operation"
            )));
        }
        if let Some(alg) = &self.alg
            && alg != algorithm.name()
        {
            return Err(CryptoError::Unusable(format!(
                "key cannot be used with algorithm '{}'",
                algorithm.name()
            )));
        }
        Ok(())
    }

    /// Wraps (encrypts) `plaintext` with this key.
    pub fn wrap(&self, algorithm: WrapAlgorithm, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.check("wrapKey", algorithm)?;
        let failed = |e: &dyn std::fmt::Display| CryptoError::Unusable(format!("failed to encrypt data: {e}"));
        match (algorithm, &self.material) {
            (WrapAlgorithm::A256Kw, Material::Symmetric(k)) => {
                let kek = aes_kw::KekAes256::try_from(k.as_slice()).map_err(|_| key_type_mismatch())?;
                kek.wrap_vec(plaintext).map_err(|e| failed(&e))
            }
            (WrapAlgorithm::A128Cbc | WrapAlgorithm::A192Cbc | WrapAlgorithm::A256Cbc, Material::Symmetric(k)) => {
                cbc_nopad(algorithm, k, plaintext, true)
            }
            (WrapAlgorithm::RsaOaep256, Material::RsaPrivate(k)) => rsa_encrypt(&k.to_public_key(), plaintext),
            (WrapAlgorithm::RsaOaep256, Material::RsaPublic(k)) => rsa_encrypt(k, plaintext),
            _ => Err(key_type_mismatch()),
        }
    }

    /// Unwraps (decrypts) `wrapped` with this key.
    pub fn unwrap(&self, algorithm: WrapAlgorithm, wrapped: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.check("unwrapKey", algorithm)?;
        let failed = |e: &dyn std::fmt::Display| CryptoError::Unusable(format!("failed to decrypt data: {e}"));
        match (algorithm, &self.material) {
            (WrapAlgorithm::A256Kw, Material::Symmetric(k)) => {
                let kek = aes_kw::KekAes256::try_from(k.as_slice()).map_err(|_| key_type_mismatch())?;
                kek.unwrap_vec(wrapped).map_err(|e| failed(&e))
            }
            (WrapAlgorithm::A128Cbc | WrapAlgorithm::A192Cbc | WrapAlgorithm::A256Cbc, Material::Symmetric(k)) => {
                cbc_nopad(algorithm, k, wrapped, false)
            }
            (WrapAlgorithm::RsaOaep256, Material::RsaPrivate(k)) => k
                .decrypt(Oaep::new::<rsa::sha2::Sha256>(), wrapped)
                .map_err(|e| failed(&e)),
            _ => Err(key_type_mismatch()),
        }
    }
}

fn key_type_mismatch() -> CryptoError {
    CryptoError::Unusable("key type mismatch".into())
}

fn rsa_encrypt(key: &RsaPublicKey, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    key.encrypt(&mut rand_core_06::OsRng, Oaep::new::<rsa::sha2::Sha256>(), plaintext)
        .map_err(|e| CryptoError::Unusable(format!("failed to encrypt data: {e}")))
}

/// AES-CBC without padding. The scheme passes no IV when wrapping a file key, so the IV is all zeros: safe here
/// because every file key is random and wrapped once, and the header's MAC authenticates the result.
fn cbc_nopad(algorithm: WrapAlgorithm, key: &[u8], data: &[u8], encrypt: bool) -> Result<Vec<u8>, CryptoError> {
    use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, generic_array::GenericArray};
    let size = match algorithm {
        WrapAlgorithm::A128Cbc => 16,
        WrapAlgorithm::A192Cbc => 24,
        _ => 32,
    };
    if key.len() != size {
        return Err(key_type_mismatch());
    }
    if data.is_empty() || !data.len().is_multiple_of(16) {
        return Err(CryptoError::Unusable(
            "the data's length is not a multiple of the AES block size".into(),
        ));
    }
    let iv = [0u8; 16];
    let mut out = data.to_vec();
    let blocks = out.chunks_exact_mut(16).map(GenericArray::from_mut_slice);
    macro_rules! run {
        ($aes:ty) => {
            if encrypt {
                let mut c = cbc::Encryptor::<$aes>::new_from_slices(key, &iv).map_err(|_| key_type_mismatch())?;
                blocks.for_each(|b| c.encrypt_block_mut(b));
            } else {
                let mut c = cbc::Decryptor::<$aes>::new_from_slices(key, &iv).map_err(|_| key_type_mismatch())?;
                blocks.for_each(|b| c.decrypt_block_mut(b));
            }
        };
    }
    match size {
        16 => run!(aes::Aes128),
        24 => run!(aes::Aes192),
        _ => run!(aes::Aes256),
    }
    Ok(out)
}

/// Symmetric key bytes from a key file: base64 (standard, then URL-safe; padding and trailing newlines
/// ignored), else the bytes as they are.
fn symmetric_bytes(raw: &[u8]) -> Vec<u8> {
    let mut end = raw.len();
    while end > 0 && matches!(raw[end - 1], b'\n' | b'=') {
        end -= 1;
    }
    let trimmed = &raw[..end];
    STANDARD_NO_PAD
        .decode(trimmed)
        .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed))
        .unwrap_or_else(|_| raw.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names_ids_and_aliases() {
        for a in [
            WrapAlgorithm::A256Kw,
            WrapAlgorithm::A128Cbc,
            WrapAlgorithm::A192Cbc,
            WrapAlgorithm::A256Cbc,
            WrapAlgorithm::RsaOaep256,
        ] {
            assert_eq!(WrapAlgorithm::parse(a.name()), Some(a));
            assert_eq!(WrapAlgorithm::from_id(i64::from(a.id())), Some(a));
        }
        assert_eq!(WrapAlgorithm::parse("aes"), Some(WrapAlgorithm::A256Kw));
        assert_eq!(WrapAlgorithm::parse("rsa"), Some(WrapAlgorithm::RsaOaep256));
        assert_eq!(WrapAlgorithm::parse("A128KW"), None, "no manifest ID exists for it");
        assert_eq!(WrapAlgorithm::from_id(0), None);
    }

    #[test]
    fn rfc3394_vector_wraps_and_unwraps() {
        // RFC 3394 §4.6: 256 bits of key data with a 256-bit KEK.
        let kek = hex("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F");
        let data = hex("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F");
        let want = hex("28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21");
        let key = Key::symmetric(kek);
        assert_eq!(key.wrap(WrapAlgorithm::A256Kw, &data).unwrap(), want);
        assert_eq!(key.unwrap(WrapAlgorithm::A256Kw, &want).unwrap(), data);
        let mut bad = want.clone();
        bad[3] ^= 1;
        assert!(key.unwrap(WrapAlgorithm::A256Kw, &bad).is_err());
    }

    #[test]
    fn symmetric_keys_from_base64_or_raw() {
        assert_eq!(symmetric_bytes(b"AAECAw==\n"), vec![0, 1, 2, 3]);
        assert_eq!(symmetric_bytes(b"_-8\n"), vec![0xff, 0xef]);
        assert_eq!(symmetric_bytes(b"\x00\x01not base64"), b"\x00\x01not base64".to_vec());
    }

    #[test]
    fn jwk_restrictions_are_enforced() {
        let jwk = serde_json::json!({"kty":"oct","k":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","alg":"A256KW","key_ops":["wrapKey"]});
        let key = Key::from_jwk(&jwk).unwrap();
        assert_eq!(key.wrap(WrapAlgorithm::A256Kw, &[7; 32]).unwrap().len(), 40);
        let e = key.unwrap(WrapAlgorithm::A256Kw, &[0; 40]).unwrap_err();
        assert_eq!(e.to_string(), "key cannot perform the 'unwrapKey' operation");
        let e = key.wrap(WrapAlgorithm::A256Cbc, &[7; 32]).unwrap_err();
        assert_eq!(e.to_string(), "key cannot be used with algorithm 'A256CBC-NOPAD'");
    }

    #[test]
    fn wrong_key_type_or_size_is_refused() {
        let short = Key::symmetric(vec![1; 16]);
        assert_eq!(
            short.wrap(WrapAlgorithm::A256Kw, &[0; 32]).unwrap_err(),
            key_type_mismatch()
        );
        assert_eq!(
            short.wrap(WrapAlgorithm::RsaOaep256, &[0; 32]).unwrap_err(),
            key_type_mismatch()
        );
        let round = short.wrap(WrapAlgorithm::A128Cbc, &[9; 32]).unwrap();
        assert_ne!(round, vec![9; 32]);
        assert_eq!(short.unwrap(WrapAlgorithm::A128Cbc, &round).unwrap(), vec![9; 32]);
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
