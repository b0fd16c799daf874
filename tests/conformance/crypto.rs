//! Cryptography conformance: every crypto provider (`crypto.dapr.localstorage`, `crypto.dapr.jwks`) through the
//! runtime's crypto API — round trips over each cipher and key-wrap algorithm, wrong keys, tampered and cut-short
//! messages, a large multi-segment payload fed in small chunks — and the `dapr.io/enc/v1` format checked against
//! ciphertexts written by Dapr's own Go code (tests/fixtures/crypto/dapr-enc-v1) in both directions.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use futures::StreamExt;
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use tandem::api::Component;
use tandem::components::Registry;
use tandem::sidecar::Mode;
use tandem::sidecar::components::{ComponentLoader, ComponentTable, References};
use tandem::sidecar::crypto::scheme::{self, Cipher, FileKey, Manifest, SEGMENT_SIZE, TAG_SIZE};
use tandem::sidecar::crypto::{CryptoApi, EncryptOptions};
use tandem::sidecar::error::ApiError;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/crypto");

const SYM256: [u8; 32] = [0x11; 32];
const SYM128: [u8; 16] = [0x22; 16];
const SYM192: [u8; 24] = [0x33; 24];
const OTHER256: [u8; 32] = [0x44; 32];

fn b64url(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

pub(crate) fn rsa_pem() -> String {
    std::fs::read_to_string(format!("{FIXTURES}/rsa-private.pem")).unwrap()
}

/// The test keys as a JWKS, each `kid` the file name the local storage uses.
fn jwks() -> String {
    let rsa = rsa::RsaPrivateKey::from_pkcs8_pem(&rsa_pem()).unwrap();
    let big = |n: &rsa::BigUint| b64url(&n.to_bytes_be());
    let primes = rsa.primes();
    serde_json::json!({"keys": [
        {"kty": "oct", "kid": "sym256", "k": b64url(&SYM256)},
        {"kty": "oct", "kid": "sym128", "k": b64url(&SYM128)},
        {"kty": "oct", "kid": "sym192.json", "k": b64url(&SYM192)},
        {"kty": "oct", "kid": "other256", "k": b64url(&OTHER256)},
        {"kty": "RSA", "kid": "rsa.pem", "n": big(rsa.n()), "e": big(rsa.e()), "d": big(rsa.d()),
         "p": big(&primes[0]), "q": big(&primes[1])},
        {"kty": "RSA", "kid": "rsa-public.pem", "n": big(rsa.n()), "e": big(rsa.e())},
        super::subtle_crypto::ec_jwk(),
        super::subtle_crypto::ed_jwk(),
    ]})
    .to_string()
}

/// The same keys as files, in every format the local storage reads: raw bytes, base64, JWK, PKCS#8 / PKCS#1 / PKIX PEM.
fn key_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("sym256"), SYM256).unwrap();
    std::fs::write(p.join("sym128"), format!("{}\n", STANDARD.encode(SYM128))).unwrap();
    let jwk = serde_json::json!({"kty": "oct", "k": b64url(&SYM192)});
    std::fs::write(p.join("sym192.json"), jwk.to_string()).unwrap();
    std::fs::write(p.join("other256"), OTHER256).unwrap();
    std::fs::write(p.join("rsa.pem"), rsa_pem()).unwrap();
    std::fs::copy(format!("{FIXTURES}/rsa-private-pkcs1.pem"), p.join("rsa-pkcs1.pem")).unwrap();
    std::fs::copy(format!("{FIXTURES}/rsa-public.pem"), p.join("rsa-public.pem")).unwrap();
    for name in ["ec256.pem", "ed.pem"] {
        std::fs::copy(format!("{}/{name}", super::subtle_crypto::FIXTURES), p.join(name)).unwrap();
    }
    dir
}

pub(crate) struct Ctx {
    pub(crate) api: CryptoApi,
    pub(crate) backend: &'static str,
    _dir: tempfile::TempDir,
}

/// The crypto API over `components`, or why they failed to load.
async fn load(components: &[Component]) -> Result<CryptoApi, String> {
    let table = Arc::new(ComponentTable::default());
    let references = References::new(table.clone(), "conf", "", Mode::Standalone);
    ComponentLoader::new(
        Registry::builtin(),
        table.clone(),
        references,
        Arc::default(),
        "conf",
        "",
    )
    .load_all(components)
    .await?;
    Ok(CryptoApi::new(table))
}

async fn api_with(components: &[Component]) -> CryptoApi {
    load(components)
        .await
        .unwrap_or_else(|e| panic!("the crypto provider failed to start: {e}"))
}

pub(crate) async fn ctx(backend: &'static str) -> Ctx {
    let dir = key_folder();
    let component = match backend {
        "localstorage" => Component::new(
            "c",
            "crypto.dapr.localstorage",
            &[("path", dir.path().to_str().unwrap())],
        ),
        "jwks" => Component::new("c", "crypto.dapr.jwks", &[("jwks", &jwks())]),
        other => panic!("unknown backend {other}"),
    };
    Ctx {
        api: api_with(&[component]).await,
        backend,
        _dir: dir,
    }
}

fn opts(key: &str, alg: &str, cipher: &str) -> EncryptOptions {
    EncryptOptions {
        key_name: key.into(),
        key_wrap_algorithm: alg.into(),
        data_encryption_cipher: cipher.into(),
        ..Default::default()
    }
}

/// `data` as an input stream of `chunk`-byte pieces.
fn chunks(data: &[u8], chunk: usize) -> impl futures::Stream<Item = Result<Bytes, ApiError>> + Send + Unpin + 'static {
    let pieces: Vec<Result<Bytes, ApiError>> = data
        .chunks(chunk.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(pieces)
}

/// Every output chunk, or the error the output ended with.
async fn collect(mut out: tandem::sidecar::crypto::Output) -> (Vec<Bytes>, Option<ApiError>) {
    let mut got = vec![];
    while let Some(item) = out.next().await {
        match item {
            Ok(b) => got.push(b),
            Err(e) => return (got, Some(e)),
        }
    }
    (got, None)
}

impl Ctx {
    async fn encrypt(&self, o: EncryptOptions, data: &[u8]) -> Result<Vec<u8>, ApiError> {
        let out = self.api.encrypt("c", o, chunks(data, 1000)).await?;
        let (got, err) = collect(out).await;
        err.map_or(Ok(got.concat()), Err)
    }

    async fn decrypt(&self, key: &str, message: &[u8]) -> Result<Vec<u8>, ApiError> {
        let out = self.api.decrypt("c", key, chunks(message, 999)).await?;
        let (got, err) = collect(out).await;
        err.map_or(Ok(got.concat()), Err)
    }
}

fn manifest_of(message: &[u8]) -> serde_json::Value {
    let line = message.split(|b| *b == b'\n').nth(1).unwrap();
    serde_json::from_slice(line).unwrap()
}

/// The header's length: up to and including its third newline.
fn header_len(message: &[u8]) -> usize {
    message
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(2)
        .unwrap()
        .0
        + 1
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 256) as u8).collect()
}

async fn round_trips_every_cipher_and_wrap_algorithm(c: Ctx) {
    let data = payload(5000);
    let cases = [
        ("sym256", "A256KW", 1),
        ("sym256", "aes", 1),
        ("sym128", "A128CBC-NOPAD", 2),
        ("sym192.json", "A192CBC", 3),
        ("sym256", "A256CBC-NOPAD", 4),
        ("rsa.pem", "RSA-OAEP-256", 5),
        ("rsa-public.pem", "rsa", 5),
    ];
    for (cipher, cph) in [
        ("", 1),
        ("aes-gcm", 1),
        ("chacha20-poly1305", 2),
        ("ChaCha20-Poly1305", 2),
    ] {
        for (key, alg, kw) in cases {
            let what = format!("{}: {key} {alg} {cipher:?}", c.backend);
            let enc = c
                .encrypt(opts(key, alg, cipher), &data)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(enc.starts_with(b"dapr.io/enc/v1\n"), "{what}");
            let m = manifest_of(&enc);
            assert_eq!(
                (m["kw"].as_i64(), m["cph"].as_i64()),
                (Some(kw), Some(cph)),
                "{what}: {m}"
            );
            assert_eq!(m["k"], key, "{what}");
            // A public key wraps, but only its private key unwraps.
            let decrypt_with = if key == "rsa-public.pem" { "rsa.pem" } else { "" };
            let dec = c
                .decrypt(decrypt_with, &enc)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(dec, data, "{what}");
        }
    }
    if c.backend == "localstorage" {
        let enc = c.encrypt(opts("rsa.pem", "RSA-OAEP-256", ""), &data).await.unwrap();
        assert_eq!(
            c.decrypt("rsa-pkcs1.pem", &enc).await.unwrap(),
            data,
            "a PKCS#1 PEM of the same key"
        );
    }
}

async fn wrong_key_fails(c: Ctx) {
    let enc = c.encrypt(opts("sym256", "A256KW", ""), b"secret").await.unwrap();
    for wrong in ["other256", "sym128", "rsa.pem", "missing-key"] {
        let err = c.decrypt(wrong, &enc).await.unwrap_err();
        assert_eq!((err.status, err.code), (500, "ERR_CRYPTO"), "{}: {wrong}", c.backend);
        assert_eq!(
            err.message, "failed to perform operation: failed to validate the document's signature",
            "{}: {wrong}",
            c.backend
        );
    }
    let enc = c
        .encrypt(opts("rsa-public.pem", "RSA-OAEP-256", ""), b"secret")
        .await
        .unwrap();
    let err = c.decrypt("", &enc).await.unwrap_err();
    assert!(
        err.message.contains("signature"),
        "{}: a public key cannot unwrap: {err}",
        c.backend
    );
}

async fn tampered_or_cut_messages_fail(c: Ctx) {
    let small = c.encrypt(opts("sym256", "A256KW", ""), b"hello world").await.unwrap();
    let header_len = small.len() - 11 - TAG_SIZE;
    // Tamper with the manifest (the nonce prefix), the MAC, the payload.
    let np_at = small.windows(6).position(|w| w == b"\"np\":\"").unwrap() + 6;
    for (at, what) in [
        (np_at, "manifest"),
        (header_len - 3, "mac"),
        (header_len + 2, "payload"),
        (small.len() - 1, "tag"),
    ] {
        let mut t = small.clone();
        t[at] = if t[at] == b'A' { b'B' } else { b'A' };
        let err = c.decrypt("", &t).await.unwrap_err();
        assert_eq!(
            (err.status, err.code),
            (500, "ERR_CRYPTO"),
            "{}: {what}: {err}",
            c.backend
        );
    }
    let err = c.decrypt("", &small[..header_len - 10]).await.unwrap_err();
    assert_eq!(
        err.message,
        "failed to perform operation: invalid header: message authentication code not found"
    );
    let err = c.decrypt("", b"not a dapr message\n").await.unwrap_err();
    assert_eq!(
        err.message,
        "failed to perform operation: invalid header: unsupported scheme"
    );

    // Three segments: a tampered second segment stops the output after the first one, which was authentic.
    let data = payload(2 * SEGMENT_SIZE + 100);
    let enc = c
        .encrypt(opts("sym256", "A256KW", "chacha20-poly1305"), &data)
        .await
        .unwrap();
    let header_len = enc.len() - data.len() - 3 * TAG_SIZE;
    let mut t = enc.clone();
    t[header_len + SEGMENT_SIZE + TAG_SIZE + 5] ^= 0x80;
    let out = c.api.decrypt("c", "", chunks(&t, 4096)).await.unwrap();
    let (got, err) = collect(out).await;
    assert_eq!(got.concat(), data[..SEGMENT_SIZE], "{}", c.backend);
    let err = err.expect("the tampered segment fails");
    assert_eq!(
        err.message,
        "failed to perform operation: error processing segment 1: failed to decrypt segment"
    );
    // Dropping the last segment, or everything after a segment boundary, is caught too.
    for cut in [enc.len() - 100 - TAG_SIZE, header_len + SEGMENT_SIZE + TAG_SIZE] {
        assert!(c.decrypt("", &enc[..cut]).await.is_err(), "{}: cut at {cut}", c.backend);
    }
}

async fn large_payload_streams_in_segments(c: Ctx) {
    let data = payload(5 * SEGMENT_SIZE + 12345);
    let out = c
        .api
        .encrypt("c", opts("sym256", "A256KW", ""), chunks(&data, 7001))
        .await
        .unwrap();
    let (pieces, err) = collect(out).await;
    assert!(err.is_none());
    assert!(
        pieces.len() >= 6,
        "{}: the output comes out as it goes, not at the end",
        c.backend
    );
    assert!(
        pieces.iter().all(|p| p.len() <= 2 * (SEGMENT_SIZE + TAG_SIZE)),
        "{}",
        c.backend
    );
    let enc = pieces.concat();
    assert_eq!(
        enc.len() - data.len() - 6 * TAG_SIZE,
        enc.iter().position(|b| *b == b'\n').map(|_| header_len(&enc)).unwrap()
    );
    let out = c.api.decrypt("c", "", chunks(&enc, 3333)).await.unwrap();
    let (pieces, err) = collect(out).await;
    assert!(err.is_none());
    assert!(pieces.len() >= 6, "{}", c.backend);
    assert_eq!(pieces.concat(), data, "{}", c.backend);
    // Exactly two segments' worth: the second is the last one.
    let data = payload(2 * SEGMENT_SIZE);
    let enc = c.encrypt(opts("sym256", "A256KW", ""), &data).await.unwrap();
    assert_eq!(c.decrypt("", &enc).await.unwrap(), data);
    let empty = c.encrypt(opts("sym256", "A256KW", ""), b"").await.unwrap();
    assert_eq!(c.decrypt("", &empty).await.unwrap(), b"");
}

async fn key_names_in_the_message(c: Ctx) {
    let mut o = opts("sym256", "A256KW", "");
    o.omit_decryption_key_name = true;
    o.decryption_key_name = "ignored".into();
    let enc = c.encrypt(o, b"x").await.unwrap();
    assert!(manifest_of(&enc).get("k").is_none(), "{}", c.backend);
    let err = c.decrypt("", &enc).await.unwrap_err();
    assert_eq!(
        err.message,
        "failed to perform operation: document's manifest does not contain a key name, and no key name was provided"
    );
    assert_eq!(c.decrypt("sym256", &enc).await.unwrap(), b"x");
    let mut o = opts("rsa-public.pem", "RSA-OAEP-256", "");
    o.decryption_key_name = "rsa.pem".into();
    let enc = c.encrypt(o, b"y").await.unwrap();
    assert_eq!(manifest_of(&enc)["k"], "rsa.pem");
    assert_eq!(c.decrypt("", &enc).await.unwrap(), b"y", "{}", c.backend);
}

async fn bad_requests_get_daprs_errors(c: Ctx) {
    let err = c.encrypt(opts("sym256", "A128KW", ""), b"x").await.unwrap_err();
    assert_eq!((err.status, err.code), (500, "ERR_CRYPTO"));
    assert_eq!(
        err.message,
        "failed to perform operation: option Algorithm is not valid: algorithm A128KW is not supported"
    );
    let err = c.encrypt(opts("sym256", "A256KW", "aes-cbc"), b"x").await.unwrap_err();
    assert_eq!(
        err.message,
        "failed to perform operation: option Cipher is not valid: cipher AES-CBC is not supported"
    );
    let err = c.encrypt(opts("nope", "A256KW", ""), b"x").await.unwrap_err();
    assert_eq!((err.status, err.code), (500, "ERR_CRYPTO"), "{}: {err}", c.backend);
    assert!(
        err.message.starts_with(
            "failed to perform operation: failed to wrap the file key: failed to retrieve the key encryption key"
        ),
        "{}: {err}",
        c.backend
    );
    let err = c.encrypt(opts("sym128", "A256KW", ""), b"x").await.unwrap_err();
    assert!(err.message.ends_with("key type mismatch"), "{}: {err}", c.backend);
    let err = c.encrypt(opts("sym256", "RSA-OAEP-256", ""), b"x").await.unwrap_err();
    assert!(err.message.ends_with("key type mismatch"), "{}: {err}", c.backend);
    if c.backend == "localstorage" {
        let err = c.encrypt(opts("../sym256", "A256KW", ""), b"x").await.unwrap_err();
        assert!(err.message.contains("cannot contain '..'"), "{err}");
    }
    let err = c
        .api
        .encrypt("nope", opts("sym256", "A256KW", ""), chunks(b"x", 1))
        .await
        .err()
        .unwrap();
    assert_eq!(
        (err.status, err.code, err.message.as_str()),
        (400, "ERR_CRYPTO_PROVIDER_NOT_FOUND", "crypto provider nope not found")
    );
}

/// Both directions against Dapr's Go implementation: its ciphertexts decrypt here, and encrypting the same
/// plaintext with the same file key and nonce prefix reproduces them byte for byte (the Go files were made with an
/// identity wrap, so the manifest's `wfk` is the file key itself).
#[test]
fn interop_with_daprs_own_ciphertexts() {
    let rep = |pattern: &[u8], n: usize| pattern.repeat(n);
    let cases: [(&str, Vec<u8>); 6] = [
        ("single-segment", b"hello world".to_vec()),
        ("single-segment-no-key-name", b"hello world".to_vec()),
        ("empty-message", vec![]),
        ("one-full-segment", rep(&[1, 2, 3, 4, 5, 6, 7, 8], 8 << 10)),
        ("two-full-segments", rep(&[1, 2, 3, 4, 5, 6, 7, 8], 16 << 10)),
        ("multi-segment", rep(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 0], 12 << 10)),
    ];
    for (name, plaintext) in cases {
        let go = std::fs::read(format!("{FIXTURES}/dapr-enc-v1/{name}.enc")).unwrap();
        let dec = scheme::decrypt_all(&go, |m| Some(m.wfk.clone())).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(dec, plaintext, "{name}: Dapr's ciphertext decrypts to the plaintext");

        let line = go.split(|b| *b == b'\n').nth(1).unwrap();
        let manifest = Manifest::parse(line).unwrap();
        let key = FileKey::import(
            manifest.wfk.clone().try_into().unwrap(),
            manifest.nonce_prefix,
            manifest.cipher,
        );
        let ours = scheme::encrypt_all(key, &manifest, &plaintext).unwrap();
        assert_eq!(
            manifest.to_json().as_bytes(),
            line,
            "{name}: the manifest is written as Go writes it"
        );
        assert!(ours == go, "{name}: tandem's ciphertext is byte-identical to Dapr's");
        let mut wrong = manifest.wfk.clone();
        wrong[0] ^= 1;
        assert!(
            scheme::decrypt_all(&go, |_| Some(wrong.clone())).is_err(),
            "{name}: a wrong file key fails"
        );
    }
    // ChaCha20-Poly1305 messages have no Go fixture: a message re-labelled from AES-GCM must not decrypt, so the
    // manifest's cipher is what decides.
    let go = std::fs::read(format!("{FIXTURES}/dapr-enc-v1/single-segment.enc")).unwrap();
    let line = go.split(|b| *b == b'\n').nth(1).unwrap();
    let mut manifest = Manifest::parse(line).unwrap();
    manifest.cipher = Cipher::ChaCha20Poly1305;
    let key = FileKey::import(
        manifest.wfk.clone().try_into().unwrap(),
        manifest.nonce_prefix,
        Cipher::ChaCha20Poly1305,
    );
    let chacha = scheme::encrypt_all(key, &manifest, b"hello world").unwrap();
    assert_eq!(
        scheme::decrypt_all(&chacha, |m| Some(m.wfk.clone())).unwrap(),
        b"hello world"
    );
    assert_ne!(chacha[chacha.len() - 27..], go[go.len() - 27..]);
}

#[tokio::test]
async fn no_crypto_provider_configured() {
    let api = api_with(&[]).await;
    let err = api
        .encrypt("c", opts("k", "A256KW", ""), chunks(b"x", 1))
        .await
        .err()
        .unwrap();
    assert_eq!(
        (err.status, err.code, err.message.as_str()),
        (
            500,
            "ERR_CRYPTO_PROVIDERS_NOT_CONFIGURED",
            "crypto providers not configured"
        )
    );
}

#[tokio::test]
async fn localstorage_needs_an_existing_folder() {
    let missing = Component::new("c", "crypto.dapr.localstorage", &[("path", "/nonexistent/keys")]);
    let err = load(&[missing])
        .await
        .err()
        .expect("a missing folder fails the component");
    assert!(err.contains("could not stat path"), "{err}");
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

suite!(localstorage: round_trips_every_cipher_and_wrap_algorithm, wrong_key_fails, tampered_or_cut_messages_fail,
    large_payload_streams_in_segments, key_names_in_the_message, bad_requests_get_daprs_errors);
suite!(jwks: round_trips_every_cipher_and_wrap_algorithm, wrong_key_fails, tampered_or_cut_messages_fail,
    large_payload_streams_in_segments, key_names_in_the_message, bad_requests_get_daprs_errors);
