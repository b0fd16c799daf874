//! Keys as crypto providers hold them: JWK (RSA, EC, OKP, oct), PEM (PKCS#1, PKCS#8, SEC1, PKIX) or raw/base64
//! bytes, parsed as dapr/kit's `ParseKey` does; their public part as PEM or JWK (`SubtleGetKeyAlpha1`), and their
//! serialization as kit's `SerializeKey` does it (raw bytes, PKCS#8 or PKIX DER).

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::der::Decode;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPrivateKey, RsaPublicKey};

use super::CryptoError;
use super::ec::{ED25519_OID, EcKey, Ed25519};

/// The `rsaEncryption` and `id-ecPublicKey` algorithm OIDs.
const RSA_OID: &str = "1.2.840.113549.1.1.1";
const EC_OID: &str = "1.2.840.10045.2.1";

/// What a key is made of.
#[derive(Clone)]
pub(super) enum Material {
    Symmetric(Vec<u8>),
    RsaPrivate(Box<RsaPrivateKey>),
    RsaPublic(RsaPublicKey),
    Ec(EcKey),
    Ed25519(Ed25519),
    /// A key tandem can read but not use (an OKP key on another curve): its JWK `kty`.
    Unsupported(&'static str),
}

/// A key of a crypto provider, with its optional JWK `alg`, `key_ops` and `use` restrictions.
#[derive(Clone)]
pub struct Key {
    pub(super) material: Material,
    alg: Option<String>,
    key_ops: Option<Vec<String>>,
    key_use: Option<String>,
    /// The JWK's other members (`kid`, `alg`, `use`, ...), given back with the public key.
    params: BTreeMap<String, serde_json::Value>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kty", &self.kty())
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// The largest RSA modulus a JWK may carry (parsing a larger one would cost time for nothing).
const MAX_RSA_BITS: usize = 16384;

/// JWK members that hold key material, never copied as plain parameters.
const MATERIAL_MEMBERS: [&str; 14] = [
    "kty", "n", "e", "d", "p", "q", "dp", "dq", "qi", "oth", "k", "crv", "x", "y",
];

pub(super) fn key_type_mismatch() -> CryptoError {
    CryptoError::Unusable("key type mismatch".into())
}

impl Key {
    /// A symmetric key of these bytes.
    pub fn symmetric(bytes: Vec<u8>) -> Key {
        Key::of(Material::Symmetric(bytes))
    }

    pub(super) fn of(material: Material) -> Key {
        Key {
            material,
            alg: None,
            key_ops: None,
            key_use: None,
            params: BTreeMap::new(),
        }
    }

    /// The JWK key type: `oct`, `RSA`, `EC` or `OKP`.
    pub fn kty(&self) -> &'static str {
        match &self.material {
            Material::Symmetric(_) => "oct",
            Material::RsaPrivate(_) | Material::RsaPublic(_) => "RSA",
            Material::Ec(_) => "EC",
            Material::Ed25519(_) => "OKP",
            Material::Unsupported(kty) => kty,
        }
    }

    /// Parses a key file: a JWK (`application/json`), PEM (`application/x-pem-file`: PKCS#1, PKCS#8, SEC1 or
    /// PKIX), or, without a content type, whichever the bytes look like, raw or base64 bytes being a symmetric key.
    pub fn parse(raw: &[u8], content_type: Option<&str>) -> Result<Key, CryptoError> {
        if raw.is_empty() {
            return Err(CryptoError::Key("key is empty".into()));
        }
        match content_type {
            Some("application/json") => return Key::from_jwk_bytes(raw),
            Some("application/x-pem-file") | Some("application/pkcs8") => return Key::from_pem(raw),
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
                if n.bits() > MAX_RSA_BITS {
                    return Err(CryptoError::Key(format!(
                        "invalid RSA JWK: keys of more than {MAX_RSA_BITS} bits are not supported"
                    )));
                }
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
            Some("EC") => {
                let d = if jwk.get("d").is_some() {
                    Some(bytes("d")?)
                } else {
                    None
                };
                let crv = field("crv").unwrap_or_default();
                let (x, y) = if d.is_some() {
                    (vec![], vec![])
                } else {
                    (bytes("x")?, bytes("y")?)
                };
                Material::Ec(EcKey::from_jwk(crv, &x, &y, d.as_deref())?)
            }
            Some("OKP") if field("crv") == Some("Ed25519") => Material::Ed25519(if jwk.get("d").is_some() {
                Ed25519::from_seed(&bytes("d")?)?
            } else {
                Ed25519::from_public(&bytes("x")?)?
            }),
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
        let params = jwk
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(k, _)| !MATERIAL_MEMBERS.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Key {
            material,
            alg: field("alg").filter(|a| !a.is_empty()).map(str::to_owned),
            key_ops,
            key_use: field("use").filter(|u| !u.is_empty()).map(str::to_owned),
            params,
        })
    }

    fn from_pem(raw: &[u8]) -> Result<Key, CryptoError> {
        let text = std::str::from_utf8(raw).map_err(|_| CryptoError::Key("PEM key is not text".into()))?;
        let mut text = text.trim_start();
        // `openssl ecparam -genkey` writes the curve's parameters before the key.
        if text.starts_with("-----BEGIN EC PARAMETERS-----")
            && let Some(next) = text[5..].find("-----BEGIN ")
        {
            text = &text[5 + next..];
        }
        let (label, der) = rsa::pkcs8::der::pem::decode_vec(text.as_bytes())
            .map_err(|e| CryptoError::Key(format!("failed to parse PEM block: {e}")))?;
        let bad = |e: &dyn std::fmt::Display| CryptoError::Key(format!("failed to parse PEM key ({label}): {e}"));
        let material = match label {
            "RSA PRIVATE KEY" => {
                Material::RsaPrivate(Box::new(RsaPrivateKey::from_pkcs1_der(&der).map_err(|e| bad(&e))?))
            }
            "RSA PUBLIC KEY" => Material::RsaPublic(RsaPublicKey::from_pkcs1_der(&der).map_err(|e| bad(&e))?),
            "EC PRIVATE KEY" => Material::Ec(EcKey::from_sec1_der(&der)?),
            "PRIVATE KEY" => {
                let info = rsa::pkcs8::PrivateKeyInfo::from_der(&der).map_err(|e| bad(&e))?;
                match info.algorithm.oid.to_string().as_str() {
                    RSA_OID => {
                        Material::RsaPrivate(Box::new(RsaPrivateKey::from_pkcs8_der(&der).map_err(|e| bad(&e))?))
                    }
                    EC_OID => Material::Ec(EcKey::from_pkcs8_der(&der)?),
                    ED25519_OID => Material::Ed25519(Ed25519::from_pkcs8_private_key(info.private_key)?),
                    other => return Err(bad(&format!("unsupported key algorithm {other}"))),
                }
            }
            "PUBLIC KEY" => {
                let info = rsa::pkcs8::spki::SubjectPublicKeyInfoRef::from_der(&der).map_err(|e| bad(&e))?;
                match info.algorithm.oid.to_string().as_str() {
                    RSA_OID => Material::RsaPublic(RsaPublicKey::from_public_key_der(&der).map_err(|e| bad(&e))?),
                    EC_OID => Material::Ec(EcKey::from_spki_der(&der)?),
                    ED25519_OID => Material::Ed25519(Ed25519::from_public(info.subject_public_key.raw_bytes())?),
                    other => return Err(bad(&format!("unsupported key algorithm {other}"))),
                }
            }
            other => {
                return Err(CryptoError::Key(format!(
                    "unsupported PEM block {:?}",
                    crate::echo::echo(other)
                )));
            }
        };
        Ok(Key::of(material))
    }

    /// Fails unless the key may do `op` (JWK `key_ops`, and `use`: `enc` for the cipher operations, `sig` for
    /// signing) with algorithm `algorithm` (JWK `alg`); absent means any, as components-contrib checks.
    pub fn check(&self, op: &str, algorithm: &str) -> Result<(), CryptoError> {
        let op_allowed = self.key_ops.as_ref().is_none_or(|ops| ops.iter().any(|o| o == op))
            && match self.key_use.as_deref() {
                None => true,
                Some(u) => match op {
                    "encrypt" | "decrypt" | "wrapKey" | "unwrapKey" => u == "enc",
                    "sign" | "verify" => u == "sig",
                    _ => true,
                },
            };
        if !op_allowed {
            return Err(CryptoError::Unusable(format!(
                "key cannot perform the '{op}' operation"
            )));
        }
        if let Some(alg) = &self.alg
            && alg != algorithm
        {
            return Err(CryptoError::Unusable(format!(
                "key cannot be used with algorithm '{}'",
                crate::echo::echo(algorithm)
            )));
        }
        Ok(())
    }

    /// The public part of an asymmetric key (itself for a public key); `None` for a symmetric key.
    pub fn public(&self) -> Option<Key> {
        let material = match &self.material {
            Material::Symmetric(_) | Material::Unsupported(_) => return None,
            Material::RsaPrivate(k) => Material::RsaPublic(k.to_public_key()),
            Material::RsaPublic(k) => Material::RsaPublic(k.clone()),
            Material::Ec(k) => Material::Ec(k.public()),
            Material::Ed25519(k) => Material::Ed25519(Ed25519 {
                public: k.public,
                seed: None,
            }),
        };
        Some(Key {
            material,
            ..self.clone()
        })
    }

    /// The key as a JWK with members in alphabetical order, as Dapr (jwx) writes it. Only public material is
    /// written: call on [`Key::public`].
    pub fn public_jwk(&self) -> Result<String, CryptoError> {
        let mut jwk: BTreeMap<String, serde_json::Value> = self.params.clone();
        let mut put = |k: &str, v: String| {
            jwk.insert(k.to_owned(), serde_json::Value::String(v));
        };
        put("kty", self.kty().to_owned());
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        match &self.material {
            Material::RsaPublic(k) => {
                put("n", b64(&k.n().to_bytes_be()));
                put("e", b64(&k.e().to_bytes_be()));
            }
            Material::Ec(k) if !k.is_private() => {
                for (name, v) in k.public_jwk() {
                    put(name, v);
                }
            }
            Material::Ed25519(k) if k.seed.is_none() => {
                put("crv", "Ed25519".into());
                put("x", b64(&k.public));
            }
            _ => return Err(key_type_mismatch()),
        }
        serde_json::to_string(&jwk).map_err(|e| CryptoError::Key(format!("failed to marshal the key: {e}")))
    }

    /// The public key as a PEM `PUBLIC KEY` block (PKIX), as Dapr writes it.
    pub fn public_pem(&self) -> Result<String, CryptoError> {
        let der = match &self.material {
            Material::RsaPublic(k) => k
                .to_public_key_der()
                .map(|d| d.as_bytes().to_vec())
                .map_err(|e| CryptoError::Key(format!("failed to marshal public key as PKIX: {e}")))?,
            Material::RsaPrivate(k) => {
                return Key::of(Material::RsaPublic(k.to_public_key())).public_pem();
            }
            Material::Ec(k) => k.spki_der()?,
            Material::Ed25519(k) => k.spki_der(),
            _ => return Err(key_type_mismatch()),
        };
        rsa::pkcs8::der::pem::encode_string("PUBLIC KEY", rsa::pkcs8::LineEnding::LF, &der)
            .map_err(|e| CryptoError::Key(format!("failed to marshal public key as PKIX: {e}")))
    }

    /// The key's bytes as kit's `SerializeKey` writes them before wrapping: raw bytes for a symmetric key, PKCS#8
    /// DER for a private key, PKIX DER for a public key.
    pub fn serialize(&self) -> Result<Vec<u8>, CryptoError> {
        let failed = |e: &dyn std::fmt::Display| CryptoError::Key(format!("cannot serialize key: {e}"));
        match &self.material {
            Material::Symmetric(k) => Ok(k.clone()),
            Material::RsaPrivate(k) => k.to_pkcs8_der().map(|d| d.as_bytes().to_vec()).map_err(|e| failed(&e)),
            Material::RsaPublic(k) => k
                .to_public_key_der()
                .map(|d| d.as_bytes().to_vec())
                .map_err(|e| failed(&e)),
            Material::Ec(k) => k.pkcs8_der(),
            Material::Ed25519(k) => Ok(k.pkcs8_der()),
            Material::Unsupported(_) => Err(failed(&"unsupported key type")),
        }
    }
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
#[path = "keys_tests.rs"]
mod tests;
