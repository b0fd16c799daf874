//! Signatures with a provider's key, as dapr/kit makes them (`SignPrivateKey`, `VerifyPublicKey`): RSASSA-PKCS1-v1_5
//! and RSASSA-PSS over a caller-given digest, ECDSA over a digest with DER signatures, Ed25519 over the message.
//! PSS signs with the longest salt and verifies whatever salt length the signature carries, as Go's defaults do.

use rsa::sha2::{Digest, Sha256, Sha384, Sha512};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Pkcs1v15Sign, Pss, RsaPrivateKey, RsaPublicKey};

use super::CryptoError;
use super::keys::{Key, Material, key_type_mismatch};

/// A signature algorithm of dapr/kit, by its JWA name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureAlgorithm {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    Es512,
    EdDsa,
}

const NAMES: [(SignatureAlgorithm, &str); 10] = [
    (SignatureAlgorithm::Rs256, "RS256"),
    (SignatureAlgorithm::Rs384, "RS384"),
    (SignatureAlgorithm::Rs512, "RS512"),
    (SignatureAlgorithm::Ps256, "PS256"),
    (SignatureAlgorithm::Ps384, "PS384"),
    (SignatureAlgorithm::Ps512, "PS512"),
    (SignatureAlgorithm::Es256, "ES256"),
    (SignatureAlgorithm::Es384, "ES384"),
    (SignatureAlgorithm::Es512, "ES512"),
    (SignatureAlgorithm::EdDsa, "EdDSA"),
];

/// The hash an RSA algorithm's digest comes from.
#[derive(Clone, Copy)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn len(self) -> usize {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }
}

impl SignatureAlgorithm {
    /// The algorithm named exactly `name` (case matters, as in Dapr).
    pub fn parse(name: &str) -> Option<SignatureAlgorithm> {
        NAMES.iter().find(|(_, n)| *n == name).map(|(a, _)| *a)
    }

    pub fn name(self) -> &'static str {
        NAMES.iter().find(|(a, _)| *a == self).map(|(_, n)| *n).unwrap_or("")
    }

    fn hash(self) -> Hash {
        match &self.name()[2..] {
            "384" => Hash::Sha384,
            "512" => Hash::Sha512,
            _ => Hash::Sha256,
        }
    }
}

impl Key {
    /// Signs `digest` (for EdDSA, the message itself). The key's restrictions are the caller's to check.
    pub fn sign(&self, alg: SignatureAlgorithm, digest: &[u8]) -> Result<Vec<u8>, CryptoError> {
        use SignatureAlgorithm::*;
        match (alg, &self.material) {
            (Rs256 | Rs384 | Rs512 | Ps256 | Ps384 | Ps512, Material::RsaPrivate(k)) => rsa_sign(alg, k, digest),
            (Es256 | Es384 | Es512, Material::Ec(k)) => k.sign_digest(digest),
            (EdDsa, Material::Ed25519(k)) => k.sign(digest),
            _ => Err(key_type_mismatch()),
        }
    }

    /// Whether `signature` is valid for `digest`. A signature that does not verify is `Ok(false)`; a key that
    /// cannot verify with `alg` is an error.
    pub fn verify(&self, alg: SignatureAlgorithm, digest: &[u8], signature: &[u8]) -> Result<bool, CryptoError> {
        use SignatureAlgorithm::*;
        let rsa_public = match &self.material {
            Material::RsaPrivate(k) => Some(k.to_public_key()),
            Material::RsaPublic(k) => Some(k.clone()),
            _ => None,
        };
        match (alg, &self.material) {
            (Rs256 | Rs384 | Rs512 | Ps256 | Ps384 | Ps512, _) => {
                let key = rsa_public.ok_or_else(key_type_mismatch)?;
                rsa_verify(alg, &key, digest, signature)
            }
            (Es256 | Es384 | Es512, Material::Ec(k)) => Ok(k.verify_digest(digest, signature)),
            (EdDsa, Material::Ed25519(k)) => Ok(k.verify(digest, signature)),
            _ => Err(key_type_mismatch()),
        }
    }
}

fn rsa_sign(alg: SignatureAlgorithm, key: &RsaPrivateKey, digest: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let hash = alg.hash();
    if digest.len() != hash.len() {
        return Err(CryptoError::Unusable(
            "failed to sign message: input must be hashed message".into(),
        ));
    }
    let mut rng = rand_core_06::OsRng;
    let pss = matches!(
        alg,
        SignatureAlgorithm::Ps256 | SignatureAlgorithm::Ps384 | SignatureAlgorithm::Ps512
    );
    // Go's PSSSaltLengthAuto when signing: as long as the key allows.
    let salt = max_salt_len(key.n().bits(), hash.len());
    let result = match (pss, hash) {
        (false, Hash::Sha256) => key.sign(Pkcs1v15Sign::new::<Sha256>(), digest),
        (false, Hash::Sha384) => key.sign(Pkcs1v15Sign::new::<Sha384>(), digest),
        (false, Hash::Sha512) => key.sign(Pkcs1v15Sign::new::<Sha512>(), digest),
        (true, Hash::Sha256) => key.sign_with_rng(&mut rng, Pss::new_with_salt::<Sha256>(salt), digest),
        (true, Hash::Sha384) => key.sign_with_rng(&mut rng, Pss::new_with_salt::<Sha384>(salt), digest),
        (true, Hash::Sha512) => key.sign_with_rng(&mut rng, Pss::new_with_salt::<Sha512>(salt), digest),
    };
    result.map_err(|e| CryptoError::Unusable(format!("failed to sign message: {e}")))
}

/// The longest PSS salt for a key of `bits` bits and a hash of `h_len` bytes.
fn max_salt_len(bits: usize, h_len: usize) -> usize {
    (bits.saturating_sub(1)).div_ceil(8).saturating_sub(2 + h_len)
}

fn rsa_verify(alg: SignatureAlgorithm, key: &RsaPublicKey, digest: &[u8], sig: &[u8]) -> Result<bool, CryptoError> {
    let hash = alg.hash();
    let pss = matches!(
        alg,
        SignatureAlgorithm::Ps256 | SignatureAlgorithm::Ps384 | SignatureAlgorithm::Ps512
    );
    if !pss {
        if digest.len() != hash.len() {
            return Err(CryptoError::Unusable(
                "failed to validate the signature: input must be hashed message".into(),
            ));
        }
        let result = match hash {
            Hash::Sha256 => key.verify(Pkcs1v15Sign::new::<Sha256>(), digest, sig),
            Hash::Sha384 => key.verify(Pkcs1v15Sign::new::<Sha384>(), digest, sig),
            Hash::Sha512 => key.verify(Pkcs1v15Sign::new::<Sha512>(), digest, sig),
        };
        return Ok(result.is_ok());
    }
    if digest.len() != hash.len() || sig.len() != key.size() {
        return Ok(false);
    }
    let salt = match hash {
        Hash::Sha256 => pss_salt_len::<Sha256>(key, sig),
        Hash::Sha384 => pss_salt_len::<Sha384>(key, sig),
        Hash::Sha512 => pss_salt_len::<Sha512>(key, sig),
    };
    let Some(salt) = salt else {
        return Ok(false);
    };
    let result = match hash {
        Hash::Sha256 => key.verify(Pss::new_with_salt::<Sha256>(salt), digest, sig),
        Hash::Sha384 => key.verify(Pss::new_with_salt::<Sha384>(salt), digest, sig),
        Hash::Sha512 => key.verify(Pss::new_with_salt::<Sha512>(salt), digest, sig),
    };
    Ok(result.is_ok())
}

/// The salt length a PSS signature carries (RFC 8017 §9.1.2 steps 7-10, as Go's auto-detection reads it), or
/// `None` when the encoding is malformed. The signature is then verified with it by the rsa crate.
fn pss_salt_len<D: Digest>(key: &RsaPublicKey, sig: &[u8]) -> Option<usize> {
    let s = BigUint::from_bytes_be(sig);
    if &s >= key.n() {
        return None;
    }
    let m = rsa::hazmat::rsa_encrypt(key, &s).ok()?.to_bytes_be();
    let key_len = key.size();
    let em_bits = key.n().bits() - 1;
    let em_len = em_bits.div_ceil(8);
    let h_len = <D as Digest>::output_size();
    if m.len() > key_len || em_len < h_len + 2 {
        return None;
    }
    let mut full = vec![0u8; key_len - m.len()];
    full.extend_from_slice(&m);
    let em = &full[key_len - em_len..];
    if em[em_len - 1] != 0xbc {
        return None;
    }
    let (masked, rest) = em.split_at(em_len - h_len - 1);
    let h = &rest[..h_len];
    // MGF1(H) over the masked data block.
    let mut db = masked.to_vec();
    let mut counter = 0u32;
    let mut pos = 0;
    while pos < db.len() {
        let mut d = D::new();
        d.update(h);
        d.update(counter.to_be_bytes());
        for b in d.finalize().iter() {
            if pos == db.len() {
                break;
            }
            db[pos] ^= b;
            pos += 1;
        }
        counter += 1;
    }
    db[0] &= 0xff >> (8 * em_len - em_bits);
    let one = db.iter().position(|b| *b != 0)?;
    (db[one] == 1).then(|| db.len() - one - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rsa_key() -> RsaPrivateKey {
        RsaPrivateKey::new(&mut rand_core_06::OsRng, 2048).unwrap()
    }

    #[test]
    fn names_are_exact() {
        for (a, n) in NAMES {
            assert_eq!(SignatureAlgorithm::parse(n), Some(a));
            assert_eq!(a.name(), n);
        }
        assert_eq!(SignatureAlgorithm::parse("rs256"), None);
        assert_eq!(
            SignatureAlgorithm::parse("HS256"),
            None,
            "kit signs with asymmetric keys only"
        );
    }

    #[test]
    fn rsa_signatures_round_trip_and_pss_salts_are_detected() {
        let key = Key::of(Material::RsaPrivate(Box::new(rsa_key())));
        let public = key.public().unwrap();
        for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
            let alg = SignatureAlgorithm::parse(alg).unwrap();
            let digest = vec![3u8; alg.hash().len()];
            let sig = key.sign(alg, &digest).unwrap();
            assert!(public.verify(alg, &digest, &sig).unwrap(), "{alg:?}");
            let mut other = digest.clone();
            other[0] ^= 1;
            assert!(!public.verify(alg, &other, &sig).unwrap(), "{alg:?}");
            assert!(public.sign(alg, &digest).is_err(), "a public key cannot sign");
        }
        // A PSS signature with the hash-length salt (what most libraries make) verifies too.
        let Material::RsaPrivate(k) = &key.material else {
            unreachable!()
        };
        let digest = Sha256::digest(b"hello");
        let sig = k
            .sign_with_rng(&mut rand_core_06::OsRng, Pss::new::<Sha256>(), &digest)
            .unwrap();
        assert!(public.verify(SignatureAlgorithm::Ps256, &digest, &sig).unwrap());
        assert!(!public.verify(SignatureAlgorithm::Ps256, &digest, &sig[1..]).unwrap());
        assert!(
            key.sign(SignatureAlgorithm::Rs256, &[1; 20]).is_err(),
            "digest of the wrong size"
        );
        assert!(
            key.sign(SignatureAlgorithm::Es256, &digest).is_err(),
            "RSA key, ECDSA algorithm"
        );
    }
}
