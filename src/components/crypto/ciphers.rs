//! Encryption and key wrapping with a provider's key, with dapr/kit's algorithm set and rules (`EncryptSymmetric`,
//! `EncryptPublicKey` and their inverses): AES-CBC with and without padding, AES-GCM, AES-CBC-HMAC, AES key wrap,
//! (X)ChaCha20-Poly1305 and RSA (PKCS#1 v1.5, OAEP). One piece of code serves the Subtle APIs and the key wrapping
//! of the `dapr.io/enc/v1` scheme ([`WrapAlgorithm`] maps onto an [`Algorithm`]).

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, generic_array::GenericArray};
use aes_gcm::aead::{AeadInPlace, KeyInit};
use rsa::{Oaep, Pkcs1v15Encrypt, RsaPublicKey};

use super::CryptoError;
use super::keys::{Key, Material, key_type_mismatch};

/// An encryption algorithm of dapr/kit, by its JWA name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    A128Cbc,
    A192Cbc,
    A256Cbc,
    A128CbcNoPad,
    A192CbcNoPad,
    A256CbcNoPad,
    A128Gcm,
    A192Gcm,
    A256Gcm,
    A128CbcHs256,
    A192CbcHs384,
    A256CbcHs512,
    A128Kw,
    A192Kw,
    A256Kw,
    C20p,
    C20pKw,
    Xc20p,
    Xc20pKw,
    Rsa1_5,
    RsaOaep,
    RsaOaep256,
    RsaOaep384,
    RsaOaep512,
}

const NAMES: [(Algorithm, &str); 24] = [
    (Algorithm::A128Cbc, "A128CBC"),
    (Algorithm::A192Cbc, "A192CBC"),
    (Algorithm::A256Cbc, "A256CBC"),
    (Algorithm::A128CbcNoPad, "A128CBC-NOPAD"),
    (Algorithm::A192CbcNoPad, "A192CBC-NOPAD"),
    (Algorithm::A256CbcNoPad, "A256CBC-NOPAD"),
    (Algorithm::A128Gcm, "A128GCM"),
    (Algorithm::A192Gcm, "A192GCM"),
    (Algorithm::A256Gcm, "A256GCM"),
    (Algorithm::A128CbcHs256, "A128CBC-HS256"),
    (Algorithm::A192CbcHs384, "A192CBC-HS384"),
    (Algorithm::A256CbcHs512, "A256CBC-HS512"),
    (Algorithm::A128Kw, "A128KW"),
    (Algorithm::A192Kw, "A192KW"),
    (Algorithm::A256Kw, "A256KW"),
    (Algorithm::C20p, "C20P"),
    (Algorithm::C20pKw, "C20PKW"),
    (Algorithm::Xc20p, "XC20P"),
    (Algorithm::Xc20pKw, "XC20PKW"),
    (Algorithm::Rsa1_5, "RSA1_5"),
    (Algorithm::RsaOaep, "RSA-OAEP"),
    (Algorithm::RsaOaep256, "RSA-OAEP-256"),
    (Algorithm::RsaOaep384, "RSA-OAEP-384"),
    (Algorithm::RsaOaep512, "RSA-OAEP-512"),
];

impl Algorithm {
    /// The algorithm named exactly `name` (case matters, as in Dapr).
    pub fn parse(name: &str) -> Option<Algorithm> {
        NAMES.iter().find(|(_, n)| *n == name).map(|(a, _)| *a)
    }

    pub fn name(self) -> &'static str {
        NAMES.iter().find(|(a, _)| *a == self).map(|(_, n)| *n).unwrap_or("")
    }

    /// The AES key size in bytes the name carries (A128... is 16).
    fn aes_key_len(self) -> usize {
        match &self.name()[1..4] {
            "128" => 16,
            "192" => 24,
            _ => 32,
        }
    }
}

/// Output of an encryption: the ciphertext and, for an authenticated cipher, its tag (empty otherwise).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sealed {
    pub ciphertext: Vec<u8>,
    pub tag: Vec<u8>,
}

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

    /// The encryption algorithm doing the wrapping.
    pub fn algorithm(self) -> Algorithm {
        match self {
            WrapAlgorithm::A256Kw => Algorithm::A256Kw,
            WrapAlgorithm::A128Cbc => Algorithm::A128CbcNoPad,
            WrapAlgorithm::A192Cbc => Algorithm::A192CbcNoPad,
            WrapAlgorithm::A256Cbc => Algorithm::A256CbcNoPad,
            WrapAlgorithm::RsaOaep256 => Algorithm::RsaOaep256,
        }
    }

    /// The IV the scheme wraps with: none, so all zeros for AES-CBC. Safe here because every file key is random
    /// and wrapped once, and the header's MAC authenticates the result.
    pub fn iv(self) -> &'static [u8] {
        match self {
            WrapAlgorithm::A128Cbc | WrapAlgorithm::A192Cbc | WrapAlgorithm::A256Cbc => &[0; 16],
            _ => &[],
        }
    }

    /// The JWA name, as a key's `alg` names it.
    pub fn name(self) -> &'static str {
        self.algorithm().name()
    }
}

fn invalid_nonce() -> CryptoError {
    CryptoError::Unusable("invalid nonce".into())
}

fn invalid_tag() -> CryptoError {
    CryptoError::Unusable("invalid tag".into())
}

impl Key {
    /// Wraps `plaintext` for the `dapr.io/enc/v1` scheme (checking the key's restrictions).
    pub fn wrap(&self, algorithm: WrapAlgorithm, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.check("wrapKey", algorithm.name())?;
        Ok(self
            .encrypt(algorithm.algorithm(), plaintext, algorithm.iv(), &[])?
            .ciphertext)
    }

    /// Unwraps a file key of the `dapr.io/enc/v1` scheme (checking the key's restrictions).
    pub fn unwrap(&self, algorithm: WrapAlgorithm, wrapped: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.check("unwrapKey", algorithm.name())?;
        self.decrypt(algorithm.algorithm(), wrapped, algorithm.iv(), &[], &[])
    }

    /// Encrypts `plaintext`; `nonce` is the IV or nonce of a symmetric cipher, `aad` the associated data of an
    /// AEAD or the label of RSA-OAEP. The key's restrictions are the caller's to check ([`Key::check`]).
    pub fn encrypt(&self, alg: Algorithm, plaintext: &[u8], nonce: &[u8], aad: &[u8]) -> Result<Sealed, CryptoError> {
        use Algorithm::*;
        let public = match &self.material {
            Material::RsaPrivate(k) => Some(k.to_public_key()),
            Material::RsaPublic(k) => Some(k.clone()),
            _ => None,
        };
        let sym = || match &self.material {
            Material::Symmetric(k) => Ok(k.as_slice()),
            _ => Err(key_type_mismatch()),
        };
        let plain = |ciphertext| Sealed {
            ciphertext,
            tag: vec![],
        };
        match alg {
            A128Cbc | A192Cbc | A256Cbc | A128CbcNoPad | A192CbcNoPad | A256CbcNoPad => {
                let k = sym()?;
                check_len(k, alg.aes_key_len())?;
                let padded = matches!(alg, A128Cbc | A192Cbc | A256Cbc);
                let mut data = plaintext.to_vec();
                if padded {
                    pad_pkcs7(&mut data);
                } else if !data.len().is_multiple_of(16) {
                    return Err(CryptoError::Unusable("invalid plaintext length".into()));
                }
                aes_cbc(k, nonce, &mut data, true)?;
                Ok(plain(data))
            }
            A128Gcm | A192Gcm | A256Gcm => {
                let k = sym()?;
                check_len(k, alg.aes_key_len())?;
                seal_aead(alg, k, nonce, plaintext, aad)
            }
            C20p | C20pKw | Xc20p | Xc20pKw => seal_aead(alg, check_len(sym()?, 32)?, nonce, plaintext, aad),
            A128CbcHs256 | A192CbcHs384 | A256CbcHs512 => cbc_hmac_seal(alg, sym()?, nonce, plaintext, aad),
            A128Kw | A192Kw | A256Kw => {
                let k = check_len(sym()?, alg.aes_key_len())?;
                let wrapped = match k.len() {
                    16 => aes_kw::KekAes128::try_from(k)
                        .map_err(|_| key_type_mismatch())?
                        .wrap_vec(plaintext),
                    24 => aes_kw::KekAes192::try_from(k)
                        .map_err(|_| key_type_mismatch())?
                        .wrap_vec(plaintext),
                    _ => aes_kw::KekAes256::try_from(k)
                        .map_err(|_| key_type_mismatch())?
                        .wrap_vec(plaintext),
                };
                wrapped
                    .map(plain)
                    .map_err(|e| CryptoError::Unusable(format!("failed to encrypt data: {e}")))
            }
            Rsa1_5 | RsaOaep | RsaOaep256 | RsaOaep384 | RsaOaep512 => {
                let key = public.ok_or_else(key_type_mismatch)?;
                rsa_encrypt(alg, &key, plaintext, aad).map(plain)
            }
        }
    }

    /// Decrypts `ciphertext` (`tag` is the authentication tag of an AEAD, ignored otherwise).
    pub fn decrypt(
        &self,
        alg: Algorithm,
        ciphertext: &[u8],
        nonce: &[u8],
        tag: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        use Algorithm::*;
        let sym = || match &self.material {
            Material::Symmetric(k) => Ok(k.as_slice()),
            _ => Err(key_type_mismatch()),
        };
        let failed = |e: &dyn std::fmt::Display| CryptoError::Unusable(format!("failed to decrypt data: {e}"));
        match alg {
            A128Cbc | A192Cbc | A256Cbc | A128CbcNoPad | A192CbcNoPad | A256CbcNoPad => {
                let k = check_len(sym()?, alg.aes_key_len())?;
                if !ciphertext.len().is_multiple_of(16) {
                    return Err(CryptoError::Unusable("invalid ciphertext length".into()));
                }
                let mut data = ciphertext.to_vec();
                aes_cbc(k, nonce, &mut data, false)?;
                if matches!(alg, A128Cbc | A192Cbc | A256Cbc) {
                    unpad_pkcs7(&mut data)?;
                }
                Ok(data)
            }
            A128Gcm | A192Gcm | A256Gcm => {
                let k = check_len(sym()?, alg.aes_key_len())?;
                open_aead(alg, k, nonce, ciphertext, tag, aad)
            }
            C20p | C20pKw | Xc20p | Xc20pKw => open_aead(alg, check_len(sym()?, 32)?, nonce, ciphertext, tag, aad),
            A128CbcHs256 | A192CbcHs384 | A256CbcHs512 => cbc_hmac_open(alg, sym()?, nonce, ciphertext, tag, aad),
            A128Kw | A192Kw | A256Kw => {
                let k = check_len(sym()?, alg.aes_key_len())?;
                match k.len() {
                    16 => aes_kw::KekAes128::try_from(k)
                        .map_err(|_| key_type_mismatch())?
                        .unwrap_vec(ciphertext),
                    24 => aes_kw::KekAes192::try_from(k)
                        .map_err(|_| key_type_mismatch())?
                        .unwrap_vec(ciphertext),
                    _ => aes_kw::KekAes256::try_from(k)
                        .map_err(|_| key_type_mismatch())?
                        .unwrap_vec(ciphertext),
                }
                .map_err(|e| failed(&e))
            }
            Rsa1_5 | RsaOaep | RsaOaep256 | RsaOaep384 | RsaOaep512 => {
                let Material::RsaPrivate(k) = &self.material else {
                    return Err(key_type_mismatch());
                };
                let result = match alg {
                    Rsa1_5 => k.decrypt(Pkcs1v15Encrypt, ciphertext),
                    _ => k.decrypt(oaep(alg, aad)?, ciphertext),
                };
                result.map_err(|e| failed(&e))
            }
        }
    }
}

fn check_len(key: &[u8], len: usize) -> Result<&[u8], CryptoError> {
    if key.len() == len {
        Ok(key)
    } else {
        Err(key_type_mismatch())
    }
}

/// OAEP padding for `alg` with `label` (the rsa crate takes text labels only).
fn oaep(alg: Algorithm, label: &[u8]) -> Result<Oaep, CryptoError> {
    use rsa::sha2::{Sha256, Sha384, Sha512};
    let label = std::str::from_utf8(label)
        .map_err(|_| CryptoError::Unusable("an RSA-OAEP label (associated data) must be UTF-8 text".into()))?;
    let with = |p: fn(String) -> Oaep| Ok(p(label.to_owned()));
    if label.is_empty() {
        return Ok(match alg {
            Algorithm::RsaOaep => Oaep::new::<sha1::Sha1>(),
            Algorithm::RsaOaep384 => Oaep::new::<Sha384>(),
            Algorithm::RsaOaep512 => Oaep::new::<Sha512>(),
            _ => Oaep::new::<Sha256>(),
        });
    }
    match alg {
        Algorithm::RsaOaep => with(Oaep::new_with_label::<sha1::Sha1, String>),
        Algorithm::RsaOaep384 => with(Oaep::new_with_label::<Sha384, String>),
        Algorithm::RsaOaep512 => with(Oaep::new_with_label::<Sha512, String>),
        _ => with(Oaep::new_with_label::<Sha256, String>),
    }
}

fn rsa_encrypt(alg: Algorithm, key: &RsaPublicKey, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut rng = rand_core_06::OsRng;
    let result = match alg {
        Algorithm::Rsa1_5 => key.encrypt(&mut rng, Pkcs1v15Encrypt, plaintext),
        _ => key.encrypt(&mut rng, oaep(alg, aad)?, plaintext),
    };
    result.map_err(|e| CryptoError::Unusable(format!("failed to encrypt data: {e}")))
}

/// AES-CBC over whole blocks of `data`, in place, with the 16-byte IV `iv`.
fn aes_cbc(key: &[u8], iv: &[u8], data: &mut [u8], encrypt: bool) -> Result<(), CryptoError> {
    if iv.len() != 16 {
        return Err(invalid_nonce());
    }
    let blocks = data.chunks_exact_mut(16).map(GenericArray::from_mut_slice);
    macro_rules! run {
        ($aes:ty) => {
            if encrypt {
                let mut c = cbc::Encryptor::<$aes>::new_from_slices(key, iv).map_err(|_| key_type_mismatch())?;
                blocks.for_each(|b| c.encrypt_block_mut(b));
            } else {
                let mut c = cbc::Decryptor::<$aes>::new_from_slices(key, iv).map_err(|_| key_type_mismatch())?;
                blocks.for_each(|b| c.decrypt_block_mut(b));
            }
        };
    }
    match key.len() {
        16 => run!(aes::Aes128),
        24 => run!(aes::Aes192),
        32 => run!(aes::Aes256),
        _ => return Err(key_type_mismatch()),
    }
    Ok(())
}

fn pad_pkcs7(data: &mut Vec<u8>) {
    let n = 16 - data.len() % 16;
    data.extend(std::iter::repeat_n(n as u8, n));
}

/// Removes PKCS#7 padding as kit does (an empty message stays empty).
fn unpad_pkcs7(data: &mut Vec<u8>) -> Result<(), CryptoError> {
    let Some(&last) = data.last() else {
        return Ok(());
    };
    let n = usize::from(last);
    if n == 0 || n > 16 || n > data.len() || !data[data.len() - n..].iter().all(|b| *b == last) {
        return Err(CryptoError::Unusable("pkcs7: incorrect padding".into()));
    }
    data.truncate(data.len() - n);
    Ok(())
}

type Aes192Gcm = aes_gcm::AesGcm<aes::Aes192, aes_gcm::aead::consts::U12>;

/// Seals `data` in place with AEAD `C`, returning the tag.
fn seal_with<C: KeyInit + AeadInPlace>(
    key: &[u8],
    nonce: &[u8],
    data: &mut [u8],
    aad: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    use aes_gcm::aead::generic_array::typenum::Unsigned;
    let c = C::new_from_slice(key).map_err(|_| key_type_mismatch())?;
    if nonce.len() != C::NonceSize::USIZE {
        return Err(invalid_nonce());
    }
    let tag = c
        .encrypt_in_place_detached(GenericArray::from_slice(nonce), aad, data)
        .map_err(|_| CryptoError::Unusable("failed to encrypt data".into()))?;
    Ok(tag.to_vec())
}

/// Opens `data` in place with AEAD `C`.
fn open_with<C: KeyInit + AeadInPlace>(
    key: &[u8],
    nonce: &[u8],
    data: &mut [u8],
    tag: &[u8],
    aad: &[u8],
) -> Result<(), CryptoError> {
    use aes_gcm::aead::generic_array::typenum::Unsigned;
    let c = C::new_from_slice(key).map_err(|_| key_type_mismatch())?;
    if nonce.len() != C::NonceSize::USIZE {
        return Err(invalid_nonce());
    }
    if tag.len() != C::TagSize::USIZE {
        return Err(invalid_tag());
    }
    c.decrypt_in_place_detached(
        GenericArray::from_slice(nonce),
        aad,
        data,
        GenericArray::from_slice(tag),
    )
    .map_err(|_| CryptoError::Unusable("failed to decrypt data: message authentication failed".into()))
}

fn seal_aead(alg: Algorithm, key: &[u8], nonce: &[u8], plaintext: &[u8], aad: &[u8]) -> Result<Sealed, CryptoError> {
    let mut data = plaintext.to_vec();
    let tag = match alg {
        Algorithm::A128Gcm => seal_with::<aes_gcm::Aes128Gcm>(key, nonce, &mut data, aad),
        Algorithm::A192Gcm => seal_with::<Aes192Gcm>(key, nonce, &mut data, aad),
        Algorithm::A256Gcm => seal_with::<aes_gcm::Aes256Gcm>(key, nonce, &mut data, aad),
        Algorithm::C20p | Algorithm::C20pKw => {
            seal_with::<chacha20poly1305::ChaCha20Poly1305>(key, nonce, &mut data, aad)
        }
        _ => seal_with::<chacha20poly1305::XChaCha20Poly1305>(key, nonce, &mut data, aad),
    }?;
    Ok(Sealed { ciphertext: data, tag })
}

fn open_aead(
    alg: Algorithm,
    key: &[u8],
    nonce: &[u8],
    ciphertext: &[u8],
    tag: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut data = ciphertext.to_vec();
    match alg {
        Algorithm::A128Gcm => open_with::<aes_gcm::Aes128Gcm>(key, nonce, &mut data, tag, aad),
        Algorithm::A192Gcm => open_with::<Aes192Gcm>(key, nonce, &mut data, tag, aad),
        Algorithm::A256Gcm => open_with::<aes_gcm::Aes256Gcm>(key, nonce, &mut data, tag, aad),
        Algorithm::C20p | Algorithm::C20pKw => {
            open_with::<chacha20poly1305::ChaCha20Poly1305>(key, nonce, &mut data, tag, aad)
        }
        _ => open_with::<chacha20poly1305::XChaCha20Poly1305>(key, nonce, &mut data, tag, aad),
    }?;
    Ok(data)
}

/// AES-CBC-HMAC-SHA2 (RFC 7518 §5.2) as kit's `aescbcaead`: the key is the MAC key then the AES key, the tag the
/// first half of HMAC(AAD || IV || ciphertext || AAD bit length).
fn cbc_hmac_parts(alg: Algorithm, key: &[u8]) -> Result<(ring::hmac::Key, &[u8], usize), CryptoError> {
    let (half, hash) = match alg {
        Algorithm::A128CbcHs256 => (16, ring::hmac::HMAC_SHA256),
        Algorithm::A192CbcHs384 => (24, ring::hmac::HMAC_SHA384),
        _ => (32, ring::hmac::HMAC_SHA512),
    };
    check_len(key, 2 * half)?;
    Ok((ring::hmac::Key::new(hash, &key[..half]), &key[half..], half))
}

fn cbc_hmac_tag(mac: &ring::hmac::Key, aad: &[u8], iv: &[u8], ciphertext: &[u8], len: usize) -> Vec<u8> {
    let mut ctx = ring::hmac::Context::with_key(mac);
    ctx.update(aad);
    ctx.update(iv);
    ctx.update(ciphertext);
    ctx.update(&((aad.len() as u64) << 3).to_be_bytes());
    ctx.sign().as_ref()[..len].to_vec()
}

fn cbc_hmac_seal(alg: Algorithm, key: &[u8], iv: &[u8], plaintext: &[u8], aad: &[u8]) -> Result<Sealed, CryptoError> {
    let (mac, enc, tag_len) = cbc_hmac_parts(alg, key)?;
    let mut data = plaintext.to_vec();
    pad_pkcs7(&mut data);
    aes_cbc(enc, iv, &mut data, true)?;
    let tag = cbc_hmac_tag(&mac, aad, iv, &data, tag_len);
    Ok(Sealed { ciphertext: data, tag })
}

fn cbc_hmac_open(
    alg: Algorithm,
    key: &[u8],
    iv: &[u8],
    ciphertext: &[u8],
    tag: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let (mac, enc, tag_len) = cbc_hmac_parts(alg, key)?;
    if iv.len() != 16 {
        return Err(invalid_nonce());
    }
    if tag.len() != tag_len {
        return Err(invalid_tag());
    }
    let want = cbc_hmac_tag(&mac, aad, iv, ciphertext, tag_len);
    // Constant-time comparison: every byte is looked at whatever differs.
    if want.iter().zip(tag).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0 {
        return Err(CryptoError::Unusable("message authentication failed".into()));
    }
    if !ciphertext.len().is_multiple_of(16) {
        return Err(CryptoError::Unusable("invalid ciphertext length".into()));
    }
    let mut data = ciphertext.to_vec();
    aes_cbc(enc, iv, &mut data, false)?;
    unpad_pkcs7(&mut data)?;
    Ok(data)
}

#[cfg(test)]
#[path = "ciphers_tests.rs"]
mod tests;
