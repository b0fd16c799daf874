//! Subtle cryptography conformance (`Subtle*Alpha1`): every crypto provider through the runtime's subtle API —
//! public keys as PEM and JWK, encryption families, key wrapping, signatures with RSA, EC and Ed25519 keys
//! (including signatures made by the `openssl` command line, tests/fixtures/subtle), and Dapr's error codes.

use rsa::sha2::{Digest, Sha256};
use tandem::sidecar::crypto::subtle::KeyFormat;
use tonic::Code;

use super::crypto::{Ctx, ctx};

pub(crate) const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/subtle");

/// tests/fixtures/subtle/ec256.pem as a JWK, `kid` its file name.
pub(crate) fn ec_jwk() -> serde_json::Value {
    serde_json::json!({"kty": "EC", "kid": "ec256.pem", "crv": "P-256",
        "d": "QwInfok57r29xcrsnMjTyAKBX7BU9KGLTWIN2s27vhE",
        "x": "W6kh2fCbjf46TMI7QP1_zJ0AEnv2Ex0mlI7Wi_xmHxs",
        "y": "Kt6xGK4FdbvRtb_aKdaSsdGbytqTXD7v-mHr3fNri8Q"})
}

/// tests/fixtures/subtle/ed.pem as a JWK, `kid` its file name.
pub(crate) fn ed_jwk() -> serde_json::Value {
    serde_json::json!({"kty": "OKP", "kid": "ed.pem", "crv": "Ed25519",
        "d": "ycClbfo9JQtiy6lIrYzAPoF5MKviW3QMT8fUwfX87fA",
        "x": "0MN60o8qdlAzV2BLc-iOQkn6tI2Md9bFFeEJvIA4ORs"})
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
}

async fn public_keys_as_pem_and_jwk(c: Ctx) {
    let key = c.api.get_key("c", "ec256.pem", Some(KeyFormat::Pem)).await.unwrap();
    assert_eq!(key.name, "ec256.pem");
    assert_eq!(key.public_key.as_bytes(), fixture("ec256.pub"), "{}", c.backend);
    let key = c.api.get_key("c", "ed.pem", Some(KeyFormat::Json)).await.unwrap();
    let jwk: serde_json::Value = serde_json::from_str(&key.public_key).unwrap();
    assert_eq!(jwk["kty"], "OKP");
    assert_eq!(jwk["x"], ed_jwk()["x"]);
    assert!(jwk.get("d").is_none(), "{}: never the private part", c.backend);
    let rsa = c.api.get_key("c", "rsa.pem", Some(KeyFormat::Json)).await.unwrap();
    assert!(rsa.public_key.contains("\"e\":\"AQAB\""), "{}", rsa.public_key);
    let e = c.api.get_key("c", "sym256", Some(KeyFormat::Pem)).await.unwrap_err();
    assert_eq!((e.grpc, e.code), (Code::Internal, "ERR_CRYPTO_KEY"));
    assert_eq!(
        e.message, "failed to retrieve key sym256: key not found",
        "a symmetric key has no public part"
    );
    let e = c.api.get_key("c", "ec256.pem", None).await.unwrap_err();
    assert_eq!((e.grpc, e.code), (Code::InvalidArgument, "ERR_BAD_REQUEST"));
    let e = c.api.get_key("c", "absent", Some(KeyFormat::Pem)).await.unwrap_err();
    assert_eq!(e.code, "ERR_CRYPTO_KEY");
}

async fn encryption_families_round_trip(c: Ctx) {
    let cases: [(&str, &str, usize); 8] = [
        ("A256GCM", "sym256", 12),
        ("A128GCM", "sym128", 12),
        ("A192GCM", "sym192.json", 12),
        ("A256CBC", "sym256", 16),
        ("A128CBC-NOPAD", "sym128", 16),
        ("XC20P", "sym256", 24),
        ("RSA-OAEP-256", "rsa.pem", 0),
        ("RSA-OAEP", "rsa.pem", 0),
    ];
    for (alg, key, nonce_len) in cases {
        let nonce = vec![5u8; nonce_len];
        let plaintext = [0x61u8; 32];
        let sealed = c
            .api
            .subtle_encrypt("c", key, alg, &plaintext, &nonce, b"ad")
            .await
            .unwrap_or_else(|e| panic!("{} {alg}: {e}", c.backend));
        let back = c
            .api
            .subtle_decrypt("c", key, alg, &sealed, &nonce, b"ad")
            .await
            .unwrap_or_else(|e| panic!("{} {alg}: {e}", c.backend));
        assert_eq!(back, plaintext, "{} {alg}", c.backend);
        if !sealed.tag.is_empty() {
            let e = c
                .api
                .subtle_decrypt("c", key, alg, &sealed, &nonce, b"other")
                .await
                .unwrap_err();
            assert_eq!(e.message, "failed to perform operation: failed to decrypt");
        }
    }
    // The public key encrypts for the private one.
    let sealed = c
        .api
        .subtle_encrypt("c", "rsa-public.pem", "RSA-OAEP-256", b"k", &[], &[])
        .await
        .unwrap();
    let back = c
        .api
        .subtle_decrypt("c", "rsa.pem", "RSA-OAEP-256", &sealed, &[], &[])
        .await
        .unwrap();
    assert_eq!(back, b"k");
}

async fn keys_wrap_and_unwrap(c: Ctx) {
    let cek = [9u8; 32];
    for (alg, key, nonce) in [
        ("A256KW", "sym256", &[][..]),
        ("A128KW", "sym128", &[][..]),
        ("A256GCM", "sym256", &[1u8; 12][..]),
        ("RSA-OAEP-256", "rsa.pem", &[][..]),
    ] {
        let wrapped = c.api.subtle_wrap_key("c", key, alg, &cek, nonce, &[]).await.unwrap();
        let back = c
            .api
            .subtle_unwrap_key("c", key, alg, &wrapped, nonce, &[])
            .await
            .unwrap();
        assert_eq!(back, cek, "{} {alg}", c.backend);
    }
    // A PEM private key is wrapped as its PKCS#8 DER.
    let pem = fixture("ed.pem");
    let wrapped = c
        .api
        .subtle_wrap_key("c", "sym256", "A256KW", &pem, &[], &[])
        .await
        .unwrap();
    let der = c
        .api
        .subtle_unwrap_key("c", "sym256", "A256KW", &wrapped, &[], &[])
        .await
        .unwrap();
    assert_eq!(der.len(), 48, "Ed25519 PKCS#8 DER");
    let e = c
        .api
        .subtle_wrap_key("c", "sym256", "A256KW", b"", &[], &[])
        .await
        .unwrap_err();
    assert_eq!(
        e.message,
        "failed to perform operation: failed to parse plaintext key: key is empty"
    );
}

async fn signatures_made_and_checked(c: Ctx) {
    let msg = fixture("msg");
    let digest = Sha256::digest(&msg).to_vec();
    for (key, alg, data) in [
        ("ec256.pem", "ES256", &digest),
        ("rsa.pem", "RS256", &digest),
        ("rsa.pem", "PS256", &digest),
        ("ed.pem", "EdDSA", &msg),
    ] {
        let sig = c.api.subtle_sign("c", key, alg, data).await.unwrap();
        assert!(
            c.api.subtle_verify("c", key, alg, data, &sig).await.unwrap(),
            "{} {alg}",
            c.backend
        );
        let mut bad = sig.clone();
        bad[10] ^= 1;
        assert!(
            !c.api.subtle_verify("c", key, alg, data, &bad).await.unwrap(),
            "{} {alg}",
            c.backend
        );
    }
    // Signatures made by openssl verify with the same keys.
    let openssl = [
        ("ec256.pem", "ES256", "ec256.sig", &digest),
        ("ed.pem", "EdDSA", "ed.sig", &msg),
    ];
    for (key, alg, sig, data) in openssl {
        assert!(
            c.api.subtle_verify("c", key, alg, data, &fixture(sig)).await.unwrap(),
            "{} {alg}",
            c.backend
        );
    }
    for (key, alg) in [
        ("sym256", "ES256"),
        ("ec256.pem", "HS256"),
        ("ec256.pem", "RS256"),
        ("absent", "ES256"),
    ] {
        let e = c.api.subtle_sign("c", key, alg, &digest).await.unwrap_err();
        assert_eq!((e.grpc, e.code), (Code::Internal, "ERR_CRYPTO"), "{key} {alg}");
        assert_eq!(e.message, "failed to perform operation: failed to sign");
    }
    let e = c
        .api
        .subtle_verify("c", "sym256", "ES256", &digest, &[0; 8])
        .await
        .unwrap_err();
    assert_eq!(e.message, "failed to perform operation: failed to verify signature");
}

async fn unknown_component_and_missing_name(c: Ctx) {
    let e = c
        .api
        .subtle_sign("nope", "ec256.pem", "ES256", &[0; 32])
        .await
        .unwrap_err();
    assert_eq!(
        (e.grpc, e.code),
        (Code::InvalidArgument, "ERR_CRYPTO_PROVIDER_NOT_FOUND")
    );
    let e = c
        .api
        .subtle_encrypt("", "sym256", "A256GCM", b"", &[0; 12], &[])
        .await
        .unwrap_err();
    assert_eq!((e.grpc, e.code), (Code::InvalidArgument, "ERR_BAD_REQUEST"));
}

macro_rules! suite {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::ctx(stringify!($backend)).await).await;
                }
            )*
        }
    };
}

suite!(localstorage: public_keys_as_pem_and_jwk, encryption_families_round_trip, keys_wrap_and_unwrap,
    signatures_made_and_checked, unknown_component_and_missing_name);
suite!(jwks: public_keys_as_pem_and_jwk, encryption_families_round_trip, keys_wrap_and_unwrap,
    signatures_made_and_checked, unknown_component_and_missing_name);
