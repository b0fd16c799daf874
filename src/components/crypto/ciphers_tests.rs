//! Tests of the encryption algorithms: known answers (RFC 3394, the GCM paper, RFC 7518), cross-checks against
//! ring, round trips and kit's error cases.

use super::*;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn sym(n: usize) -> Key {
    Key::symmetric((0..n as u8).collect())
}

#[test]
fn names_are_exact_and_wrap_algorithms_map_onto_them() {
    for (a, n) in NAMES {
        assert_eq!(Algorithm::parse(n), Some(a));
        assert_eq!(a.name(), n);
    }
    assert_eq!(Algorithm::parse("a256gcm"), None, "Dapr matches names exactly");
    assert_eq!(Algorithm::parse("A128GCMKW"), None, "kit does not implement it");
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
    // RFC 3394 §4.6: 256 bits of key data with a 256-bit KEK; §4.1: 128 bits with a 128-bit KEK.
    let kek = hex("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F");
    let data = hex("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F");
    let want = hex("28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21");
    let key = Key::symmetric(kek);
    assert_eq!(key.wrap(WrapAlgorithm::A256Kw, &data).unwrap(), want);
    assert_eq!(key.unwrap(WrapAlgorithm::A256Kw, &want).unwrap(), data);
    let mut bad = want.clone();
    bad[3] ^= 1;
    assert!(key.unwrap(WrapAlgorithm::A256Kw, &bad).is_err());
    let k128 = Key::symmetric(hex("000102030405060708090A0B0C0D0E0F"));
    let got = k128
        .encrypt(Algorithm::A128Kw, &hex("00112233445566778899AABBCCDDEEFF"), &[], &[])
        .unwrap();
    assert_eq!(got.ciphertext, hex("1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5"));
    assert!(got.tag.is_empty());
}

#[test]
fn aes_gcm_known_answer_and_agreement_with_ring() {
    // Test case 3 of McGrew and Viega's GCM specification.
    let key = Key::symmetric(hex("feffe9928665731c6d6a8f9467308308"));
    let pt = hex(
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
    );
    let iv = hex("cafebabefacedbaddecaf888");
    let sealed = key.encrypt(Algorithm::A128Gcm, &pt, &iv, &[]).unwrap();
    assert_eq!(
        sealed.ciphertext,
        hex(
            "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985"
        )
    );
    assert_eq!(sealed.tag, hex("4d5c2af327cd64a62cf35abd2ba6fab4"));
    // AES-256-GCM and ChaCha20-Poly1305 with associated data give what ring gives.
    for (alg, ring_alg) in [
        (Algorithm::A256Gcm, &ring::aead::AES_256_GCM),
        (Algorithm::C20p, &ring::aead::CHACHA20_POLY1305),
    ] {
        let k = sym(32);
        let sealed = k.encrypt(alg, b"hello subtle", &[9; 12], b"aad").unwrap();
        let rk =
            ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(ring_alg, &(0..32).collect::<Vec<u8>>()).unwrap());
        let mut buf = b"hello subtle".to_vec();
        let tag = rk
            .seal_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key([9; 12]),
                ring::aead::Aad::from(b"aad"),
                &mut buf,
            )
            .unwrap();
        assert_eq!(sealed.ciphertext, buf, "{alg:?}");
        assert_eq!(sealed.tag, tag.as_ref(), "{alg:?}");
    }
}

#[test]
fn aead_round_trips_and_refuses_tampering() {
    for (alg, klen, nlen) in [
        (Algorithm::A128Gcm, 16, 12),
        (Algorithm::A192Gcm, 24, 12),
        (Algorithm::A256Gcm, 32, 12),
        (Algorithm::C20p, 32, 12),
        (Algorithm::C20pKw, 32, 12),
        (Algorithm::Xc20p, 32, 24),
        (Algorithm::Xc20pKw, 32, 24),
    ] {
        let k = sym(klen);
        let nonce = vec![1u8; nlen];
        let s = k.encrypt(alg, b"secret", &nonce, b"ad").unwrap();
        assert_eq!(s.tag.len(), 16);
        assert_eq!(k.decrypt(alg, &s.ciphertext, &nonce, &s.tag, b"ad").unwrap(), b"secret");
        let mut tag = s.tag.clone();
        tag[0] ^= 1;
        assert!(k.decrypt(alg, &s.ciphertext, &nonce, &tag, b"ad").is_err(), "{alg:?}");
        assert!(
            k.decrypt(alg, &s.ciphertext, &nonce, &s.tag, b"other").is_err(),
            "{alg:?}"
        );
        assert!(
            k.decrypt(alg, &s.ciphertext, &nonce, &s.tag[..15], b"ad").is_err(),
            "{alg:?}"
        );
        assert!(k.encrypt(alg, b"x", &[1; 8], &[]).is_err(), "{alg:?}: wrong nonce size");
        assert!(
            sym(klen + 1).encrypt(alg, b"x", &nonce, &[]).is_err(),
            "{alg:?}: wrong key size"
        );
    }
}

#[test]
fn aes_cbc_with_and_without_padding() {
    let iv = [7u8; 16];
    for (alg, klen) in [
        (Algorithm::A128Cbc, 16),
        (Algorithm::A192Cbc, 24),
        (Algorithm::A256Cbc, 32),
    ] {
        let k = sym(klen);
        for len in [0, 1, 15, 16, 17] {
            let pt = vec![0x42; len];
            let s = k.encrypt(alg, &pt, &iv, &[]).unwrap();
            assert_eq!(
                s.ciphertext.len(),
                (len / 16 + 1) * 16,
                "PKCS#7 always adds a block part"
            );
            assert_eq!(k.decrypt(alg, &s.ciphertext, &iv, &[], &[]).unwrap(), pt);
        }
        assert!(k.encrypt(alg, b"x", &[0; 12], &[]).is_err(), "the IV must be 16 bytes");
    }
    let k = sym(16);
    assert!(k.encrypt(Algorithm::A128CbcNoPad, &[1; 15], &iv, &[]).is_err());
    let s = k.encrypt(Algorithm::A128CbcNoPad, &[0x11; 32], &iv, &[]).unwrap();
    assert_eq!(s.ciphertext.len(), 32);
    assert_eq!(
        k.decrypt(Algorithm::A128CbcNoPad, &s.ciphertext, &iv, &[], &[])
            .unwrap(),
        vec![0x11; 32]
    );
    // Bad padding after decryption (a last byte of 0x11, more than a block) is an error, not garbage.
    assert!(k.decrypt(Algorithm::A128Cbc, &s.ciphertext, &iv, &[], &[]).is_err());
}

#[test]
fn aes_cbc_hmac_rfc7518_vector() {
    // RFC 7518 appendix B.1 (AES_128_CBC_HMAC_SHA_256).
    let key = Key::symmetric((0..32).collect());
    let pt = b"A cipher system must not be required to be secret, and it must be able to fall into the hands of the enemy without inconvenience";
    let iv = hex("1af38c2dc2b96ffdd86694092341bc04");
    let aad = b"The second principle of Auguste Kerckhoffs";
    let s = key.encrypt(Algorithm::A128CbcHs256, pt, &iv, aad).unwrap();
    assert_eq!(s.tag, hex("652c3fa36b0a7c5b3219fab3a30bc1c4"));
    assert_eq!(
        key.decrypt(Algorithm::A128CbcHs256, &s.ciphertext, &iv, &s.tag, aad)
            .unwrap(),
        pt
    );
    assert!(
        key.decrypt(Algorithm::A128CbcHs256, &s.ciphertext, &iv, &s.tag, b"x")
            .is_err()
    );
    for (alg, klen, tlen) in [(Algorithm::A192CbcHs384, 48, 24), (Algorithm::A256CbcHs512, 64, 32)] {
        let k = sym(klen);
        let s = k.encrypt(alg, b"m", &iv, b"").unwrap();
        assert_eq!(s.tag.len(), tlen);
        assert_eq!(k.decrypt(alg, &s.ciphertext, &iv, &s.tag, b"").unwrap(), b"m");
    }
}

#[test]
fn rsa_encryption_round_trips() {
    let private = rsa::RsaPrivateKey::new(&mut rand_core_06::OsRng, 1024).unwrap();
    let key = Key::of(Material::RsaPrivate(Box::new(private)));
    let public = key.public().unwrap();
    for alg in [
        Algorithm::Rsa1_5,
        Algorithm::RsaOaep,
        Algorithm::RsaOaep256,
        Algorithm::RsaOaep384,
    ] {
        let s = public.encrypt(alg, b"key bytes", &[], b"label").unwrap();
        assert!(s.tag.is_empty());
        assert_eq!(
            key.decrypt(alg, &s.ciphertext, &[], &[], b"label").unwrap(),
            b"key bytes",
            "{alg:?}"
        );
        assert!(
            public.decrypt(alg, &s.ciphertext, &[], &[], b"label").is_err(),
            "a public key cannot decrypt"
        );
        if alg != Algorithm::Rsa1_5 {
            assert!(
                key.decrypt(alg, &s.ciphertext, &[], &[], b"other").is_err(),
                "{alg:?}: the label is checked"
            );
        }
    }
    assert!(sym(16).encrypt(Algorithm::RsaOaep, b"x", &[], &[]).is_err());
    assert!(key.encrypt(Algorithm::A128Gcm, b"x", &[0; 12], &[]).is_err());
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
    let sig_only = Key::from_jwk(&serde_json::json!({"kty":"oct","k":"AAAA","use":"sig"})).unwrap();
    assert!(sig_only.check("encrypt", "A128GCM").is_err());
    assert!(sig_only.check("sign", "RS256").is_ok());
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
