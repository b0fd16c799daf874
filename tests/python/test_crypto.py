"""The cryptography API through the real sidecar: the official Python SDK's `encrypt`/`decrypt` (gRPC
EncryptAlpha1/DecryptAlpha1 streams) over `crypto.dapr.localstorage` and `crypto.dapr.jwks`, a 300 KiB payload,
wrong keys; plain HTTP `PUT /v1.0-alpha1/crypto/<store>/encrypt|decrypt` (interchangeable with gRPC), Dapr's error
codes for bad input, and the metadata API listing the crypto components."""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import grpc
import pytest
import requests

from conftest import REPO, component, sdk_client

FIXTURES = REPO / "tests" / "fixtures" / "crypto"
SYM = bytes(range(32))


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def sc(sidecars, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys")
    (keys / "symmetric-key-256").write_bytes(SYM)
    (keys / "other-256").write_text(base64.b64encode(bytes(32 * [7])).decode() + "\n")
    shutil.copy(FIXTURES / "rsa-private.pem", keys / "rsa-private-key.pem")
    jwks = {"keys": [{"kty": "oct", "kid": "mykey", "k": b64url(SYM)}]}
    return sidecars.start("crypto", [
        component("localstorage", "crypto.dapr.localstorage", {"path": str(keys)}),
        component("jwks", "crypto.dapr.jwks", {"jwks": json.dumps(jwks)}),
    ])


def sdk_encrypt(sc, data: bytes, store: str, key: str, alg: str, cipher: str = "aes-gcm") -> bytes:
    from dapr.clients.grpc._crypto import EncryptOptions
    with sdk_client(sc) as c:
        return c.encrypt(data=data, options=EncryptOptions(
            component_name=store, key_name=key, key_wrap_algorithm=alg, data_encryption_cipher=cipher)).read()


def sdk_decrypt(sc, data: bytes, store: str, key: str = "") -> bytes:
    from dapr.clients.grpc._crypto import DecryptOptions
    with sdk_client(sc) as c:
        return c.decrypt(data=data, options=DecryptOptions(component_name=store, key_name=key)).read()


@pytest.mark.parametrize("store,key,alg,cipher", [
    ("localstorage", "rsa-private-key.pem", "RSA", "aes-gcm"),
    ("localstorage", "symmetric-key-256", "AES", "chacha20-poly1305"),
    ("localstorage", "symmetric-key-256", "A256CBC", "aes-gcm"),
    ("jwks", "mykey", "A256KW", "aes-gcm"),
])
def test_sdk_round_trip(sc, store, key, alg, cipher):
    message = b"The secret is \"passw0rd\""
    enc = sdk_encrypt(sc, message, store, key, alg, cipher)
    assert enc.startswith(b"dapr.io/enc/v1\n")
    assert message not in enc
    assert sdk_decrypt(sc, enc, store, key) == message
    assert sdk_decrypt(sc, enc, store) == message, "the key name is read from the message"


def test_sdk_large_payload_300k(sc):
    data = os.urandom(300 * 1024)
    enc = sdk_encrypt(sc, data, "localstorage", "symmetric-key-256", "A256KW")
    assert len(enc) > len(data) + 5 * 16
    assert sdk_decrypt(sc, enc, "localstorage") == data
    # The same key in the JWKS decrypts what the local storage encrypted: providers agree on the format.
    assert sdk_decrypt(sc, enc, "jwks", "mykey") == data


def test_sdk_wrong_key_fails(sc):
    enc = sdk_encrypt(sc, b"hello", "localstorage", "symmetric-key-256", "A256KW")
    with pytest.raises(Exception) as e:
        sdk_decrypt(sc, enc, "localstorage", "other-256")
    assert "failed to validate the document's signature" in str(e.value)
    with pytest.raises(Exception) as e:
        sdk_encrypt(sc, b"hello", "nope", "k", "A256KW")
    assert "crypto provider nope not found" in str(e.value)


def test_grpc_status_codes(sc):
    # (The SDK itself refuses an empty key name before calling.)
    from dapr.clients.grpc._crypto import EncryptOptions
    with sdk_client(sc) as c:
        for opts, code in [
            (EncryptOptions(component_name="nope", key_name="k", key_wrap_algorithm="AES"), grpc.StatusCode.INVALID_ARGUMENT),
            (EncryptOptions(component_name="localstorage", key_name="symmetric-key-256", key_wrap_algorithm="AES",
                            data_encryption_cipher="des"), grpc.StatusCode.INTERNAL),
            (EncryptOptions(component_name="localstorage", key_name="symmetric-key-256", key_wrap_algorithm="A128KW"), grpc.StatusCode.INTERNAL),
        ]:
            with pytest.raises(grpc.RpcError) as e:
                c.encrypt(data=b"x", options=opts).read()
            assert e.value.code() == code, (opts, e.value)


def put(sc, store, op, body, **headers):
    return requests.put(sc.url(f"/v1.0-alpha1/crypto/{store}/{op}"), data=body,
                        headers={k.replace("_", "-"): v for k, v in headers.items()}, timeout=30)


def test_http_round_trip_and_interchange_with_grpc(sc):
    data = os.urandom(200_000)
    r = put(sc, "localstorage", "encrypt", data, dapr_key_name="symmetric-key-256",
            dapr_key_wrap_algorithm="A256KW", dapr_data_encryption_cipher="chacha20-poly1305")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    assert json.loads(r.content.split(b"\n")[1])["cph"] == 2
    assert sdk_decrypt(sc, r.content, "localstorage") == data
    enc = sdk_encrypt(sc, data, "localstorage", "rsa-private-key.pem", "RSA-OAEP-256")
    r = put(sc, "localstorage", "decrypt", enc)
    assert r.status_code == 200, r.text
    assert r.content == data


def test_http_omitted_key_name(sc):
    r = put(sc, "jwks", "encrypt", b"abc", dapr_key_name="mykey", dapr_key_wrap_algorithm="AES",
            dapr_omit_decryption_key_name="yes")
    assert r.status_code == 200
    missing = put(sc, "jwks", "decrypt", r.content)
    assert missing.status_code == 500
    assert missing.json()["message"].endswith("does not contain a key name, and no key name was provided")
    assert put(sc, "jwks", "decrypt", r.content, dapr_key_name="mykey").content == b"abc"


@pytest.mark.parametrize("store,op,body,headers,status,code", [
    ("nope", "encrypt", b"x", {"dapr-key-name": "k", "dapr-key-wrap-algorithm": "AES"}, 400, "ERR_CRYPTO_PROVIDER_NOT_FOUND"),
    ("nope", "decrypt", b"x", {}, 400, "ERR_CRYPTO_PROVIDER_NOT_FOUND"),
    ("localstorage", "encrypt", b"x", {"dapr-key-wrap-algorithm": "AES"}, 400, "ERR_BAD_REQUEST"),
    ("localstorage", "encrypt", b"x", {"dapr-key-name": "symmetric-key-256"}, 400, "ERR_BAD_REQUEST"),
    ("localstorage", "encrypt", b"x", {"dapr-key-name": "symmetric-key-256", "dapr-key-wrap-algorithm": "nope"}, 500, "ERR_CRYPTO"),
    ("localstorage", "encrypt", b"x", {"dapr-key-name": "symmetric-key-256", "dapr-key-wrap-algorithm": "AES",
                                       "dapr-data-encryption-cipher": "des"}, 500, "ERR_CRYPTO"),
    ("localstorage", "encrypt", b"x", {"dapr-key-name": "../../etc/passwd", "dapr-key-wrap-algorithm": "AES"}, 500, "ERR_CRYPTO"),
    ("localstorage", "decrypt", b"not encrypted", {}, 500, "ERR_CRYPTO"),
    ("localstorage", "decrypt", b"", {}, 500, "ERR_CRYPTO"),
])
def test_http_bad_input(sc, store, op, body, headers, status, code):
    r = requests.put(sc.url(f"/v1.0-alpha1/crypto/{store}/{op}"), data=body, headers=headers, timeout=10)
    assert r.status_code == status, r.text
    assert r.json()["errorCode"] == code, r.text


def test_http_tampered_message_fails(sc):
    enc = put(sc, "localstorage", "encrypt", b"short message", dapr_key_name="symmetric-key-256",
              dapr_key_wrap_algorithm="AES").content
    tampered = enc[:-1] + bytes([enc[-1] ^ 1])
    r = put(sc, "localstorage", "decrypt", tampered)
    assert r.status_code == 500
    assert r.json() == {"errorCode": "ERR_CRYPTO",
                        "message": "failed to perform operation: error processing segment 0: failed to decrypt segment"}


def test_no_crypto_components(sidecars):
    bare = sidecars.start("nocrypto", [])
    r = put(bare, "any", "encrypt", b"x", dapr_key_name="k", dapr_key_wrap_algorithm="AES")
    assert r.status_code == 500
    assert r.json()["errorCode"] == "ERR_CRYPTO_PROVIDERS_NOT_CONFIGURED"


def test_metadata_lists_crypto_components(sc):
    md = requests.get(sc.url("/v1.0/metadata"), timeout=5).json()
    found = {c["name"]: c["type"] for c in md["components"]}
    assert found["localstorage"] == "crypto.dapr.localstorage"
    assert found["jwks"] == "crypto.dapr.jwks"


def peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def test_http_streams_large_bodies_in_flat_memory(sc, tmp_path):
    """128 MiB through encrypt and back through decrypt over HTTP: the sidecar's peak memory grows by far less than
    the payload, because neither the request nor the answer is held whole in memory."""
    import hashlib
    size, piece = 128 << 20, 1 << 20
    block = os.urandom(piece)

    def body():
        for _ in range(size // piece):
            yield block

    want = hashlib.sha256()
    for _ in range(size // piece):
        want.update(block)
    # Warm up (allocator arenas, first connection) before taking the baseline.
    put(sc, "localstorage", "encrypt", b"x" * 100_000, dapr_key_name="symmetric-key-256", dapr_key_wrap_algorithm="AES")
    before = peak_rss_kb(sc.proc.pid)
    enc_path = tmp_path / "big.enc"
    with requests.put(sc.url("/v1.0-alpha1/crypto/localstorage/encrypt"), data=body(), stream=True, timeout=300,
                      headers={"dapr-key-name": "symmetric-key-256", "dapr-key-wrap-algorithm": "AES"}) as r:
        assert r.status_code == 200
        with enc_path.open("wb") as f:
            for chunk in r.iter_content(1 << 16):
                f.write(chunk)
    assert enc_path.stat().st_size > size

    def enc_body():
        with enc_path.open("rb") as f:
            while chunk := f.read(piece):
                yield chunk

    got = hashlib.sha256()
    with requests.put(sc.url("/v1.0-alpha1/crypto/localstorage/decrypt"), data=enc_body(), stream=True,
                      timeout=300) as r:
        assert r.status_code == 200
        for chunk in r.iter_content(1 << 16):
            got.update(chunk)
    assert got.hexdigest() == want.hexdigest()
    grown_mb = (peak_rss_kb(sc.proc.pid) - before) / 1024
    assert grown_mb < 32, f"the sidecar's peak memory grew by {grown_mb:.0f} MiB for a 128 MiB payload"


# ---- Subtle*Alpha1: unary operations with a provider's key, through the SDK's generated gRPC stubs ----

SUBTLE = REPO / "tests" / "fixtures" / "subtle"
EC_JWK = {"kty": "EC", "kid": "ec-key", "crv": "P-256", "use": "sig",
          "d": "QwInfok57r29xcrsnMjTyAKBX7BU9KGLTWIN2s27vhE",
          "x": "W6kh2fCbjf46TMI7QP1_zJ0AEnv2Ex0mlI7Wi_xmHxs",
          "y": "Kt6xGK4FdbvRtb_aKdaSsdGbytqTXD7v-mHr3fNri8Q"}


@pytest.fixture(scope="module")
def subtle_sc(sidecars, tmp_path_factory):
    keys = tmp_path_factory.mktemp("subtle-keys")
    (keys / "sym256").write_bytes(SYM)
    (keys / "sym128").write_bytes(SYM[:16])
    for name in ("rsa.pem", "ec256.pem", "ed.pem"):
        shutil.copy(SUBTLE / name, keys / name)
    jwks = {"keys": [EC_JWK, {"kty": "oct", "kid": "mykey", "k": b64url(SYM), "alg": "A256GCM"}]}
    sc = sidecars.start("subtle", [
        component("localstorage", "crypto.dapr.localstorage", {"path": str(keys)}),
        component("jwks", "crypto.dapr.jwks", {"jwks": json.dumps(jwks)}),
    ])
    return sc


@pytest.fixture(scope="module")
def subtle(subtle_sc):
    from dapr.proto.runtime.v1 import dapr_pb2_grpc
    channel = grpc.insecure_channel(subtle_sc.grpc_address)
    yield dapr_pb2_grpc.DaprStub(channel)
    channel.close()


def pb():
    from dapr.proto.runtime.v1 import crypto_pb2
    return crypto_pb2


def rpc_error(call, req):
    with pytest.raises(grpc.RpcError) as e:
        call(req)
    return e.value.code(), e.value.details()


def test_subtle_get_key_pem_and_jwk(subtle):
    p = pb()
    r = subtle.SubtleGetKeyAlpha1(p.SubtleGetKeyRequest(component_name="localstorage", name="rsa.pem"))
    assert r.name == "rsa.pem"
    assert r.public_key == (SUBTLE / "rsa.pub").read_text(), "the public half, as `openssl pkey -pubout` writes it"
    r = subtle.SubtleGetKeyAlpha1(p.SubtleGetKeyRequest(
        component_name="jwks", name="ec-key", format=p.SubtleGetKeyRequest.JSON))
    jwk = json.loads(r.public_key)
    assert r.name == "ec-key"
    assert jwk == {k: v for k, v in EC_JWK.items() if k != "d"}, "no private member is given back"
    assert list(jwk) == sorted(jwk), "members in alphabetical order, as Dapr writes them"


@pytest.mark.parametrize("req,code,text", [
    (dict(component_name="localstorage", name="sym256"), grpc.StatusCode.INTERNAL,
     "failed to retrieve key sym256: key not found"),
    (dict(component_name="jwks", name="nope"), grpc.StatusCode.INTERNAL, "failed to retrieve key nope: key not found"),
    (dict(component_name="localstorage", name="rsa.pem", format=7), grpc.StatusCode.INVALID_ARGUMENT,
     "invalid key format"),
    (dict(component_name="nope", name="rsa.pem"), grpc.StatusCode.INVALID_ARGUMENT, "crypto provider nope not found"),
    (dict(component_name="", name="rsa.pem"), grpc.StatusCode.INVALID_ARGUMENT, "missing component name"),
])
def test_subtle_get_key_errors(subtle, req, code, text):
    got_code, details = rpc_error(subtle.SubtleGetKeyAlpha1, pb().SubtleGetKeyRequest(**req))
    assert got_code == code
    assert text in details


def test_subtle_aes_gcm_interop_with_cryptography(subtle):
    aead = pytest.importorskip("cryptography.hazmat.primitives.ciphers.aead")
    p, nonce, aad = pb(), os.urandom(12), b"header"
    sealed = aead.AESGCM(SYM).encrypt(nonce, b"made by cryptography", aad)
    for store, key in (("localstorage", "sym256"), ("jwks", "mykey")):
        r = subtle.SubtleDecryptAlpha1(p.SubtleDecryptRequest(
            component_name=store, key_name=key, algorithm="A256GCM", ciphertext=sealed[:-16], tag=sealed[-16:],
            nonce=nonce, associated_data=aad))
        assert r.plaintext == b"made by cryptography"
    r = subtle.SubtleEncryptAlpha1(p.SubtleEncryptRequest(
        component_name="localstorage", key_name="sym256", algorithm="A256GCM", plaintext=b"made by tandem",
        nonce=nonce, associated_data=aad))
    assert len(r.tag) == 16
    assert aead.AESGCM(SYM).decrypt(nonce, r.ciphertext + r.tag, aad) == b"made by tandem"
    bad_tag = bytes([r.tag[0] ^ 1]) + r.tag[1:]
    code, details = rpc_error(subtle.SubtleDecryptAlpha1, p.SubtleDecryptRequest(
        component_name="localstorage", key_name="sym256", algorithm="A256GCM", ciphertext=r.ciphertext,
        tag=bad_tag, nonce=nonce, associated_data=aad))
    assert code == grpc.StatusCode.INTERNAL
    assert details == "failed to perform operation: failed to decrypt", "no detail that could serve as an oracle"


@pytest.mark.parametrize("alg,key,nonce", [
    ("A128CBC", "sym128", bytes(16)), ("A256CBC-NOPAD", "sym256", bytes(16)), ("A128GCM", "sym128", bytes(12)),
    ("XC20P", "sym256", bytes(24)), ("C20P", "sym256", bytes(12)), ("A128CBC-HS256", "sym256", bytes(16)),
])
def test_subtle_symmetric_round_trips(subtle, alg, key, nonce):
    p = pb()
    plaintext = bytes(range(48))
    r = subtle.SubtleEncryptAlpha1(p.SubtleEncryptRequest(
        component_name="localstorage", key_name=key, algorithm=alg, plaintext=plaintext, nonce=nonce))
    assert r.ciphertext != plaintext
    back = subtle.SubtleDecryptAlpha1(p.SubtleDecryptRequest(
        component_name="localstorage", key_name=key, algorithm=alg, ciphertext=r.ciphertext, tag=r.tag, nonce=nonce))
    assert back.plaintext == plaintext


@pytest.mark.parametrize("req", [
    dict(key_name="sym256", algorithm="A256CBC-HS512", nonce=bytes(16)),  # a 32-byte key is too short for it
    dict(key_name="sym256", algorithm="a256gcm", nonce=bytes(12)),  # names are case-sensitive, as in Dapr
    dict(key_name="sym256", algorithm="A256GCM", nonce=bytes(8)),  # wrong nonce size
    dict(key_name="missing", algorithm="A256GCM", nonce=bytes(12)),
    dict(key_name="mykey", algorithm="A128GCM", nonce=bytes(12)),  # wrong type of key
    dict(key_name="rsa.pem", algorithm="A256GCM", nonce=bytes(12)),
])
def test_subtle_encrypt_errors_are_generic(subtle, req):
    code, details = rpc_error(subtle.SubtleEncryptAlpha1, pb().SubtleEncryptRequest(
        component_name="localstorage", plaintext=b"x", **req))
    assert (code, details) == (grpc.StatusCode.INTERNAL, "failed to perform operation: failed to encrypt")


def test_subtle_wrap_unwrap_interop(subtle):
    keywrap = pytest.importorskip("cryptography.hazmat.primitives.keywrap")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding
    p, cek = pb(), os.urandom(32)
    r = subtle.SubtleWrapKeyAlpha1(p.SubtleWrapKeyRequest(
        component_name="localstorage", key_name="sym256", algorithm="A256KW", plaintext_key=cek))
    assert r.wrapped_key == keywrap.aes_key_wrap(SYM, cek), "RFC 3394 is deterministic: same bytes as cryptography"
    back = subtle.SubtleUnwrapKeyAlpha1(p.SubtleUnwrapKeyRequest(
        component_name="localstorage", key_name="sym256", algorithm="A256KW", wrapped_key=r.wrapped_key))
    assert back.plaintext_key == cek
    r = subtle.SubtleWrapKeyAlpha1(p.SubtleWrapKeyRequest(
        component_name="localstorage", key_name="rsa.pem", algorithm="RSA-OAEP-256", plaintext_key=cek))
    private = serialization.load_pem_private_key((SUBTLE / "rsa.pem").read_bytes(), password=None)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    assert private.decrypt(r.wrapped_key, oaep) == cek
    code, details = rpc_error(subtle.SubtleWrapKeyAlpha1, p.SubtleWrapKeyRequest(
        component_name="localstorage", key_name="sym256", algorithm="A256KW", plaintext_key=b""))
    assert code == grpc.StatusCode.INTERNAL and "failed to parse plaintext key" in details


def test_subtle_signatures_interop_with_cryptography(subtle):
    pytest.importorskip("cryptography")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, utils
    p = pb()
    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"a message to sign")
    digest = digest.finalize()

    def sign(key, alg, data, store="localstorage"):
        return subtle.SubtleSignAlpha1(p.SubtleSignRequest(
            component_name=store, key_name=key, algorithm=alg, digest=data)).signature

    def public(name):
        return serialization.load_pem_private_key((SUBTLE / name).read_bytes(), password=None).public_key()

    prehashed = utils.Prehashed(hashes.SHA256())
    public("ec256.pem").verify(sign("ec256.pem", "ES256", digest), digest, ec.ECDSA(prehashed))
    public("ec256.pem").verify(sign("ec-key", "ES256", digest, "jwks"), digest, ec.ECDSA(prehashed))
    public("rsa.pem").verify(sign("rsa.pem", "RS256", digest), digest, padding.PKCS1v15(), prehashed)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
    public("rsa.pem").verify(sign("rsa.pem", "PS256", digest), digest, pss, prehashed)
    public("ed.pem").verify(sign("ed.pem", "EdDSA", b"the whole message"), b"the whole message")

    # The other way: signatures by cryptography verify in tandem, and a changed one does not.
    private = serialization.load_pem_private_key((SUBTLE / "ec256.pem").read_bytes(), password=None)
    theirs = private.sign(digest, ec.ECDSA(prehashed))
    for sig, want in ((theirs, True), (theirs[:-1] + bytes([theirs[-1] ^ 1]), False)):
        r = subtle.SubtleVerifyAlpha1(p.SubtleVerifyRequest(
            component_name="jwks", key_name="ec-key", algorithm="ES256", digest=digest, signature=sig))
        assert r.valid is want
    code, details = rpc_error(subtle.SubtleSignAlpha1, p.SubtleSignRequest(
        component_name="localstorage", key_name="sym256", algorithm="HS256", digest=digest))
    assert (code, details) == (grpc.StatusCode.INTERNAL, "failed to perform operation: failed to sign")
    code, _ = rpc_error(subtle.SubtleSignAlpha1, p.SubtleSignRequest(
        component_name="jwks", key_name="mykey", algorithm="ES256", digest=digest))
    assert code == grpc.StatusCode.INTERNAL, "a symmetric key cannot sign"


def subtle_http(sc, store, op, body):
    return requests.post(sc.url(f"/v1.0-alpha1/subtlecrypto/{store}/{op}"), json=body, timeout=10)


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def test_subtle_http_routes_speak_protojson(subtle_sc):
    """Dapr's HTTP routes for the Subtle APIs: protojson bodies (camelCase or proto names, bytes in base64) in
    and out, empty fields left out, over the same block as the gRPC methods."""
    r = subtle_http(subtle_sc, "localstorage", "getkey", {"name": "rsa.pem", "format": "PEM"})
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "rsa.pem", "publicKey": (SUBTLE / "rsa.pub").read_text()}
    r = subtle_http(subtle_sc, "jwks", "getkey", {"name": "ec-key", "format": 1})
    assert json.loads(r.json()["publicKey"]) == {k: v for k, v in EC_JWK.items() if k != "d"}

    nonce, aad = os.urandom(12), b"header"
    r = subtle_http(subtle_sc, "localstorage", "encrypt", {
        "keyName": "sym256", "algorithm": "A256GCM", "plaintext": b64(b"over http"), "nonce": b64(nonce),
        "associatedData": b64(aad)})
    assert r.status_code == 200, r.text
    sealed = r.json()
    assert set(sealed) == {"ciphertext", "tag"}
    aead = pytest.importorskip("cryptography.hazmat.primitives.ciphers.aead")
    raw = base64.b64decode(sealed["ciphertext"]) + base64.b64decode(sealed["tag"])
    assert aead.AESGCM(SYM).decrypt(nonce, raw, aad) == b"over http"
    r = subtle_http(subtle_sc, "jwks", "decrypt", {
        "key_name": "mykey", "algorithm": "A256GCM", "ciphertext": sealed["ciphertext"], "tag": sealed["tag"],
        "nonce": b64(nonce).rstrip("="), "associated_data": b64(aad)})
    assert r.status_code == 200, r.text
    assert base64.b64decode(r.json()["plaintext"]) == b"over http"

    r = subtle_http(subtle_sc, "localstorage", "wrapkey", {
        "keyName": "sym128", "algorithm": "A128KW", "plaintextKey": b64(SYM)})
    wrapped = r.json()["wrappedKey"]
    r = subtle_http(subtle_sc, "localstorage", "unwrapkey", {
        "keyName": "sym128", "algorithm": "A128KW", "wrappedKey": wrapped})
    assert base64.b64decode(r.json()["plaintextKey"]) == SYM

    digest = os.urandom(32)
    sig = subtle_http(subtle_sc, "localstorage", "sign", {
        "keyName": "ec256.pem", "algorithm": "ES256", "digest": b64(digest)}).json()["signature"]
    r = subtle_http(subtle_sc, "jwks", "verify", {
        "keyName": "ec-key", "algorithm": "ES256", "digest": b64(digest), "signature": sig})
    assert r.json() == {"valid": True}
    other = os.urandom(32)
    r = subtle_http(subtle_sc, "jwks", "verify", {
        "keyName": "ec-key", "algorithm": "ES256", "digest": b64(other), "signature": sig})
    assert r.status_code == 200 and r.json() == {}, "protojson leaves a false `valid` out"


@pytest.mark.parametrize("store,op,body,status,code", [
    ("localstorage", "encrypt", "{not json", 400, "ERR_MALFORMED_REQUEST"),
    ("localstorage", "encrypt", {"plaintext": "%%%"}, 400, "ERR_MALFORMED_REQUEST"),
    ("localstorage", "getkey", {"name": "rsa.pem", "format": "DER"}, 400, "ERR_MALFORMED_REQUEST"),
    ("nope", "getkey", {"name": "rsa.pem"}, 400, "ERR_CRYPTO_PROVIDER_NOT_FOUND"),
    ("localstorage", "getkey", {"name": "sym256"}, 500, "ERR_CRYPTO_KEY"),
    ("localstorage", "sign", {"keyName": "sym256", "algorithm": "HS256", "digest": b64(b"x" * 32)}, 500, "ERR_CRYPTO"),
])
def test_subtle_http_bad_input(subtle_sc, store, op, body, status, code):
    url = subtle_sc.url(f"/v1.0-alpha1/subtlecrypto/{store}/{op}")
    r = requests.post(url, data=body, timeout=10) if isinstance(body, str) else requests.post(url, json=body, timeout=10)
    assert r.status_code == status, r.text
    assert r.json()["errorCode"] == code, r.text
