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
