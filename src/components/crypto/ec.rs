//! Elliptic-curve keys of a crypto provider (NIST P-256, P-384, P-521 and Ed25519): parsed from JWK members or
//! DER (SEC1, PKCS#8, PKIX), exported as JWK members or DER, and signing as dapr/kit does: ECDSA over a caller-given
//! digest with ASN.1 DER signatures (Go's `ecdsa.SignASN1`/`VerifyASN1`), Ed25519 over the whole message.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rsa::pkcs8::der::Decode;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};

use super::CryptoError;

/// An ECDSA key on one of the NIST curves: the public point and, for a private key, the scalar.
#[derive(Clone)]
pub enum EcKey {
    P256(p256::PublicKey, Option<p256::SecretKey>),
    P384(p384::PublicKey, Option<p384::SecretKey>),
    P521(p521::PublicKey, Option<p521::SecretKey>),
}

/// Runs `$body` with `$c` naming the curve's crate, `$public` and `$secret` bound to the key's parts.
macro_rules! per_curve {
    ($key:expr, $c:ident, $public:ident, $secret:ident => $body:expr) => {
        match $key {
            EcKey::P256($public, $secret) => {
                #[allow(unused_imports)]
                use p256 as $c;
                $body
            }
            EcKey::P384($public, $secret) => {
                #[allow(unused_imports)]
                use p384 as $c;
                $body
            }
            EcKey::P521($public, $secret) => {
                #[allow(unused_imports)]
                use p521 as $c;
                $body
            }
        }
    };
}

/// Builds an [`EcKey`] for curve `$variant` (crate `$c`) from a secret key, deriving its public point.
macro_rules! from_secret {
    ($variant:ident, $c:ident, $secret:expr) => {{
        let secret: $c::SecretKey = $secret;
        EcKey::$variant(secret.public_key(), Some(secret))
    }};
}

impl EcKey {
    /// The JWK `crv` name.
    pub fn curve(&self) -> &'static str {
        match self {
            EcKey::P256(..) => "P-256",
            EcKey::P384(..) => "P-384",
            EcKey::P521(..) => "P-521",
        }
    }

    pub fn is_private(&self) -> bool {
        per_curve!(self, _c, _p, secret => secret.is_some())
    }

    /// The public half only.
    pub fn public(&self) -> EcKey {
        match self {
            EcKey::P256(p, _) => EcKey::P256(*p, None),
            EcKey::P384(p, _) => EcKey::P384(*p, None),
            EcKey::P521(p, _) => EcKey::P521(*p, None),
        }
    }

    /// A key from JWK members: `crv`, the coordinates `x` and `y`, and for a private key `d`.
    pub fn from_jwk(crv: &str, x: &[u8], y: &[u8], d: Option<&[u8]>) -> Result<EcKey, CryptoError> {
        let bad = |e: &dyn std::fmt::Display| CryptoError::Key(format!("invalid EC JWK: {e}"));
        macro_rules! build {
            ($variant:ident, $c:ident, $len:expr) => {{
                if let Some(d) = d {
                    from_secret!($variant, $c, $c::SecretKey::from_slice(d).map_err(|e| bad(&e))?)
                } else {
                    if x.len() != $len || y.len() != $len {
                        return Err(bad(&"coordinates have the wrong length for the curve"));
                    }
                    let mut point = vec![4u8];
                    point.extend_from_slice(x);
                    point.extend_from_slice(y);
                    EcKey::$variant($c::PublicKey::from_sec1_bytes(&point).map_err(|e| bad(&e))?, None)
                }
            }};
        }
        Ok(match crv {
            "P-256" => build!(P256, p256, 32),
            "P-384" => build!(P384, p384, 48),
            "P-521" => build!(P521, p521, 66),
            other => {
                return Err(CryptoError::Key(format!(
                    "unsupported EC curve {:?}",
                    crate::echo::echo(other)
                )));
            }
        })
    }

    /// A private key from SEC1 DER (`EC PRIVATE KEY`).
    pub fn from_sec1_der(der: &[u8]) -> Result<EcKey, CryptoError> {
        if let Ok(k) = p256::SecretKey::from_sec1_der(der) {
            return Ok(from_secret!(P256, p256, k));
        }
        if let Ok(k) = p384::SecretKey::from_sec1_der(der) {
            return Ok(from_secret!(P384, p384, k));
        }
        p521::SecretKey::from_sec1_der(der)
            .map(|k| from_secret!(P521, p521, k))
            .map_err(|e| CryptoError::Key(format!("invalid EC private key: {e}")))
    }

    /// A private key from PKCS#8 DER whose algorithm is `id-ecPublicKey`.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<EcKey, CryptoError> {
        if let Ok(k) = p256::SecretKey::from_pkcs8_der(der) {
            return Ok(from_secret!(P256, p256, k));
        }
        if let Ok(k) = p384::SecretKey::from_pkcs8_der(der) {
            return Ok(from_secret!(P384, p384, k));
        }
        p521::SecretKey::from_pkcs8_der(der)
            .map(|k| from_secret!(P521, p521, k))
            .map_err(|e| CryptoError::Key(format!("invalid or unsupported EC private key: {e}")))
    }

    /// A public key from PKIX DER whose algorithm is `id-ecPublicKey`.
    pub fn from_spki_der(der: &[u8]) -> Result<EcKey, CryptoError> {
        if let Ok(k) = p256::PublicKey::from_public_key_der(der) {
            return Ok(EcKey::P256(k, None));
        }
        if let Ok(k) = p384::PublicKey::from_public_key_der(der) {
            return Ok(EcKey::P384(k, None));
        }
        p521::PublicKey::from_public_key_der(der)
            .map(|k| EcKey::P521(k, None))
            .map_err(|e| CryptoError::Key(format!("invalid or unsupported EC public key: {e}")))
    }

    /// The public JWK members `crv`, `x`, `y`.
    pub fn public_jwk(&self) -> [(&'static str, String); 3] {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        let (x, y) = per_curve!(self, _c, public, _s => {
            let point = public.to_encoded_point(false);
            (
                URL_SAFE_NO_PAD.encode(point.x().map(|x| x.as_slice()).unwrap_or_default()),
                URL_SAFE_NO_PAD.encode(point.y().map(|y| y.as_slice()).unwrap_or_default()),
            )
        });
        [("crv", self.curve().to_owned()), ("x", x), ("y", y)]
    }

    /// The public key as PKIX DER.
    pub fn spki_der(&self) -> Result<Vec<u8>, CryptoError> {
        per_curve!(self, _c, public, _s => public
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .map_err(|e| CryptoError::Key(format!("failed to encode the public key: {e}"))))
    }

    /// The private key as PKCS#8 DER (the public key's PKIX DER for a public key).
    pub fn pkcs8_der(&self) -> Result<Vec<u8>, CryptoError> {
        per_curve!(self, _c, _p, secret => match secret {
            Some(s) => s
                .to_pkcs8_der()
                .map(|d| d.as_bytes().to_vec())
                .map_err(|e| CryptoError::Key(format!("failed to encode the private key: {e}"))),
            None => self.spki_der(),
        })
    }

    /// An ASN.1 DER ECDSA signature of `digest` (on the key's curve, whatever the algorithm's hash size, as Go
    /// does), with a random nonce as Go's.
    pub fn sign_digest(&self, digest: &[u8]) -> Result<Vec<u8>, CryptoError> {
        use p256::ecdsa::signature::hazmat::RandomizedPrehashSigner;
        per_curve!(self, c, _p, secret => {
            let secret = secret.as_ref().ok_or_else(super::keys::key_type_mismatch)?;
            let key = c::ecdsa::SigningKey::from_slice(&secret.to_bytes())
                .map_err(|e| CryptoError::Unusable(format!("failed to sign message: {e}")))?;
            let prehash = go_digest(digest, field_len(self));
            let sig: c::ecdsa::Signature = key
                .sign_prehash_with_rng(&mut rand_core_06::OsRng, &prehash)
                .map_err(|e| CryptoError::Unusable(format!("failed to sign message: {e}")))?;
            Ok(sig.to_der().as_bytes().to_vec())
        })
    }

    /// Whether `signature` (ASN.1 DER) is a valid ECDSA signature of `digest`; a malformed signature is not.
    pub fn verify_digest(&self, digest: &[u8], signature: &[u8]) -> bool {
        use p256::ecdsa::signature::hazmat::PrehashVerifier;
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        per_curve!(self, c, public, _s => {
            let Ok(sig) = c::ecdsa::Signature::from_der(signature) else {
                return false;
            };
            let Ok(key) = c::ecdsa::VerifyingKey::from_sec1_bytes(public.to_encoded_point(false).as_bytes()) else {
                return false;
            };
            key.verify_prehash(&go_digest(digest, field_len(self)), &sig).is_ok()
        })
    }
}

fn field_len(key: &EcKey) -> usize {
    match key {
        EcKey::P256(..) => 32,
        EcKey::P384(..) => 48,
        EcKey::P521(..) => 66,
    }
}

/// The digest as the field-sized integer Go's ECDSA signs (`hashToInt`): cut to the group order's byte length,
/// shifted right by the bits in excess of the order's bit length, left-padded with zeros.
fn go_digest(digest: &[u8], len: usize) -> Vec<u8> {
    let order_bits = if len == 66 { 521 } else { len * 8 };
    let mut h = digest[..digest.len().min(len)].to_vec();
    let excess = (h.len() * 8).saturating_sub(order_bits);
    if excess > 0 {
        let mut carry = 0u8;
        for b in h.iter_mut() {
            let next = *b << (8 - excess);
            *b = (*b >> excess) | carry;
            carry = next;
        }
    }
    let mut out = vec![0u8; len - h.len()];
    out.extend_from_slice(&h);
    out
}

/// An Ed25519 key: the public key and, for a private key, the 32-byte seed.
#[derive(Clone)]
pub struct Ed25519 {
    pub public: [u8; 32],
    pub seed: Option<[u8; 32]>,
}

/// The PKCS#8 prefix of an Ed25519 private key (RFC 8410), before the 32-byte seed.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// The PKIX prefix of an Ed25519 public key, before the 32-byte key.
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
/// The Ed25519 algorithm OID, 1.3.101.112.
pub const ED25519_OID: &str = "1.3.101.112";

impl Ed25519 {
    /// A private key from its seed.
    pub fn from_seed(seed: &[u8]) -> Result<Ed25519, CryptoError> {
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| CryptoError::Key("invalid Ed25519 key: the private key must be 32 bytes".into()))?;
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|e| CryptoError::Key(format!("invalid Ed25519 key: {e}")))?;
        let public = ring::signature::KeyPair::public_key(&pair)
            .as_ref()
            .try_into()
            .map_err(|_| CryptoError::Key("invalid Ed25519 key".into()))?;
        Ok(Ed25519 {
            public,
            seed: Some(seed),
        })
    }

    pub fn from_public(public: &[u8]) -> Result<Ed25519, CryptoError> {
        Ok(Ed25519 {
            public: public
                .try_into()
                .map_err(|_| CryptoError::Key("invalid Ed25519 key: the public key must be 32 bytes".into()))?,
            seed: None,
        })
    }

    /// A private key from the `privateKey` field of its PKCS#8 structure (an OCTET STRING holding the seed).
    pub fn from_pkcs8_private_key(field: &[u8]) -> Result<Ed25519, CryptoError> {
        let seed = rsa::pkcs8::der::asn1::OctetStringRef::from_der(field)
            .map_err(|e| CryptoError::Key(format!("invalid Ed25519 private key: {e}")))?;
        Ed25519::from_seed(seed.as_bytes())
    }

    pub fn spki_der(&self) -> Vec<u8> {
        [&ED25519_SPKI_PREFIX[..], &self.public].concat()
    }

    /// PKCS#8 DER of the private key (PKIX DER of the public key for a public key).
    pub fn pkcs8_der(&self) -> Vec<u8> {
        match &self.seed {
            Some(seed) => [&ED25519_PKCS8_PREFIX[..], seed].concat(),
            None => self.spki_der(),
        }
    }

    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let seed = self.seed.as_ref().ok_or_else(super::keys::key_type_mismatch)?;
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|e| CryptoError::Unusable(format!("failed to sign message: {e}")))?;
        Ok(pair.sign(message).as_ref().to_vec())
    }

    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.public)
            .verify(message, signature)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_digest_pads_and_truncates_like_go() {
        assert_eq!(go_digest(&[1, 2], 4), vec![0, 0, 1, 2]);
        assert_eq!(go_digest(&[1, 2, 3, 4, 5], 4), vec![1, 2, 3, 4]);
        // P-521: 66 bytes hold 528 bits, 7 more than the order's 521, so a long digest is shifted right by 7.
        let long = vec![0xffu8; 70];
        let got = go_digest(&long, 66);
        assert_eq!(got[0], 0x01);
        assert!(got[1..].iter().all(|b| *b == 0xff));
    }

    #[test]
    fn ecdsa_round_trips_on_every_curve() {
        let digest = [7u8; 32];
        for crv in ["P-256", "P-384", "P-521"] {
            let len = match crv {
                "P-256" => 32,
                "P-384" => 48,
                _ => 66,
            };
            let mut d = vec![0u8; len];
            d[len - 1] = 5;
            let key = EcKey::from_jwk(crv, &[], &[], Some(&d)).unwrap();
            assert!(key.is_private());
            let sig = key.sign_digest(&digest).unwrap();
            assert!(key.public().verify_digest(&digest, &sig), "{crv}");
            assert!(!key.public().verify_digest(&[8u8; 32], &sig), "{crv}");
            assert!(!key.verify_digest(&digest, b"not DER"), "{crv}");
            assert!(key.public().sign_digest(&digest).is_err(), "a public key cannot sign");
            let der = key.public().spki_der().unwrap();
            assert_eq!(EcKey::from_spki_der(&der).unwrap().curve(), crv);
            let der = key.pkcs8_der().unwrap();
            assert!(EcKey::from_pkcs8_der(&der).unwrap().is_private());
        }
    }

    #[test]
    fn ed25519_rfc8032_test_vector_1() {
        let seed = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let key = Ed25519::from_seed(&seed).unwrap();
        assert_eq!(
            key.public.to_vec(),
            hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        );
        let sig = key.sign(b"").unwrap();
        assert_eq!(
            sig,
            hex(
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
            )
        );
        assert!(Ed25519::from_public(&key.public).unwrap().verify(b"", &sig));
        assert!(!key.verify(b"x", &sig));
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
