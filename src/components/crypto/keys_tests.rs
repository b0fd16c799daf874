//! Tests of key parsing and export: PEM keys and signatures made by the `openssl` command line
//! (tests/fixtures/subtle), RFC 8037's Ed25519 JWK, and the JWK/PEM forms `SubtleGetKeyAlpha1` answers.

use super::*;
use crate::components::crypto::SignatureAlgorithm;
use rsa::sha2::{Digest, Sha256, Sha384};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/subtle/");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{DIR}{name}")).unwrap()
}

fn pem(name: &str) -> Key {
    Key::parse(&fixture(name), Some("application/x-pem-file")).unwrap()
}

#[test]
fn symmetric_keys_from_base64_or_raw() {
    assert_eq!(symmetric_bytes(b"AAECAw==\n"), vec![0, 1, 2, 3]);
    assert_eq!(symmetric_bytes(b"_-8\n"), vec![0xff, 0xef]);
    assert_eq!(symmetric_bytes(b"\x00\x01not base64"), b"\x00\x01not base64".to_vec());
}

#[test]
fn openssl_signatures_verify() {
    let msg = fixture("msg");
    let sha256 = Sha256::digest(&msg).to_vec();
    let sha384 = Sha384::digest(&msg).to_vec();
    let cases = [
        ("ec256.pem", "ec256.sig", SignatureAlgorithm::Es256, &sha256),
        ("ec256.pub", "ec256.sig", SignatureAlgorithm::Es256, &sha256),
        ("ec384.pem", "ec384.sig", SignatureAlgorithm::Es384, &sha384),
        ("rsa.pem", "rsa.sig", SignatureAlgorithm::Rs256, &sha256),
        ("rsa.pub", "rsa-pss.sig", SignatureAlgorithm::Ps256, &sha256),
        ("ed.pub", "ed.sig", SignatureAlgorithm::EdDsa, &msg),
        ("ed.pem", "ed.sig", SignatureAlgorithm::EdDsa, &msg),
    ];
    for (key, sig, alg, digest) in cases {
        let k = pem(key);
        let sig = fixture(sig);
        assert!(k.verify(alg, digest, &sig).unwrap(), "{key} {alg:?}");
        let mut bad = sig.clone();
        let n = bad.len();
        bad[n - 3] ^= 0x10;
        assert!(
            !k.verify(alg, digest, &bad).unwrap(),
            "{key} {alg:?}: a changed signature"
        );
    }
    assert_eq!(pem("ec256.pem").kty(), "EC");
    assert_eq!(pem("ed.pem").kty(), "OKP");
    assert!(pem("ec256.pub").sign(SignatureAlgorithm::Es256, &sha256).is_err());
}

#[test]
fn public_pem_matches_openssl() {
    for (private, public) in [("rsa.pem", "rsa.pub"), ("ec256.pem", "ec256.pub"), ("ed.pem", "ed.pub")] {
        let k = pem(private).public().unwrap();
        assert_eq!(
            k.public_pem().unwrap(),
            String::from_utf8(fixture(public)).unwrap(),
            "{private}"
        );
    }
}

#[test]
fn rfc8037_ed25519_jwk_signs_and_exports_its_public_part() {
    let jwk = serde_json::json!({
        "kty": "OKP", "crv": "Ed25519", "kid": "k1",
        "d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    });
    let key = Key::from_jwk(&jwk).unwrap();
    let sig = key
        .sign(
            SignatureAlgorithm::EdDsa,
            b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc",
        )
        .unwrap();
    assert_eq!(
        URL_SAFE_NO_PAD.encode(sig),
        "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
    );
    assert_eq!(
        key.public().unwrap().public_jwk().unwrap(),
        r#"{"crv":"Ed25519","kid":"k1","kty":"OKP","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#
    );
    assert!(key.public_jwk().is_err(), "private material is never written");
}

#[test]
fn ec_and_rsa_jwks_round_trip_through_their_public_jwk() {
    for name in ["ec256.pem", "ec384.pem", "rsa.pem"] {
        let public = pem(name).public().unwrap();
        let jwk: serde_json::Value = serde_json::from_str(&public.public_jwk().unwrap()).unwrap();
        assert!(jwk.get("d").is_none(), "{name}");
        let again = Key::from_jwk(&jwk).unwrap();
        assert_eq!(again.public_pem().unwrap(), public.public_pem().unwrap(), "{name}");
    }
    let jwk: serde_json::Value = serde_json::from_str(&pem("rsa.pub").public_jwk().unwrap()).unwrap();
    assert_eq!(jwk["e"], "AQAB");
    assert_eq!(jwk["kty"], "RSA");
}

#[test]
fn symmetric_keys_have_no_public_part_and_serialize_raw() {
    let k = Key::parse(b"AAECAwQFBgcICQoLDA0ODw==", None).unwrap();
    assert!(k.public().is_none());
    assert_eq!(k.serialize().unwrap(), (0..16).collect::<Vec<u8>>());
    let der = pem("ec256.pem").serialize().unwrap();
    assert_eq!(der[0], 0x30, "PKCS#8 DER");
    assert!(Key::parse(b"", None).is_err());
    assert!(Key::parse(b"-----BEGIN NOTHING-----\nAA==\n-----END NOTHING-----\n", None).is_err());
}

#[test]
fn oversized_rsa_jwk_is_refused() {
    let n = URL_SAFE_NO_PAD.encode(vec![0xffu8; 4096]);
    let e = Key::from_jwk(&serde_json::json!({"kty": "RSA", "n": n, "e": "AQAB"})).unwrap_err();
    assert!(e.to_string().contains("more than 16384 bits"), "{e}");
}
