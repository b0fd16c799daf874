"""Secrets, metadata and API-token behaviour through the official Dapr Python SDK (gRPC)."""

from __future__ import annotations

import json

import grpc
import pytest

from conftest import component, configuration, sdk_client, unique

SECRETS = {
    "db": {"user": "admin", "password": "s3cret", "path": "<set in the fixture>"},
    "token": "t0k",
    "list": ["a", "b"],
}
MULTI = {"db": {"user": "admin", "pass": "p", "deep": {"x": "y"}}, "token": "t0k"}
ENV = {"PYTEST_SECRET_ALPHA": "one", "PYTEST_SECRET_BETA": "two", "DAPR_FAKE_SECRET": "must-not-leak"}
TOKEN = "pytest-api-token-" + "x" * 8


@pytest.fixture(scope="module")
def sidecar(sidecars, tmp_path_factory):
    d = tmp_path_factory.mktemp("secrets")
    SECRETS["db"]["path"] = str(d / "from-secret.db")
    (d / "secrets.json").write_text(json.dumps(SECRETS))
    (d / "multi.json").write_text(json.dumps(MULTI))
    f = str(d / "secrets.json")
    return sidecars.start(
        "sdksecrets",
        [
            component("files", "secretstores.local.file", {"secretsFile": f}),
            component("files-dot", "secretstores.local.file", {"secretsFile": f, "nestedSeparator": "."}),
            component("multi", "secretstores.local.file",
                      {"secretsFile": str(d / "multi.json"), "multiValued": "true", "nestedSeparator": "."}),
            component("env", "secretstores.local.env", {"prefix": "PYTEST_SECRET_"}),
            component("envall", "secretstores.local.env"),
            component("scoped", "secretstores.local.file", {"secretsFile": f}),
            component("denylist", "secretstores.local.file", {"secretsFile": f}),
            component("mem", "state.in-memory"),
            {  # a state store whose connection string is read from the "files" secret store
                "apiVersion": "dapr.io/v1alpha1", "kind": "Component", "metadata": {"name": "fromsecret"},
                "spec": {"type": "state.sqlite", "version": "v1", "metadata": [
                    {"name": "connectionString", "secretKeyRef": {"name": "db:path", "key": "db:path"}},
                ]},
                "auth": {"secretStore": "files"},
            },
        ],
        config=configuration(secret_scopes=[
            {"storeName": "scoped", "defaultAccess": "deny", "allowedSecrets": ["token"]},
            {"storeName": "denylist", "defaultAccess": "allow", "deniedSecrets": ["db:password"]},
        ]),
        env=ENV,
    )


@pytest.fixture(scope="module")
def client(sidecar):
    c = sdk_client(sidecar)
    yield c
    c.close()


# ---- local.file ---------------------------------------------------------------------------------------


def test_local_file_flattens_nested_keys_with_default_separator(client):
    assert client.get_secret("files", "db:user").secret == {"db:user": "admin"}
    assert client.get_secret("files", "db:password").secret == {"db:password": "s3cret"}
    assert client.get_secret("files", "token").secret == {"token": "t0k"}
    assert client.get_secret("files", "list:1").secret == {"list:1": "b"}


def test_local_file_custom_separator(client):
    assert client.get_secret("files-dot", "db.user").secret == {"db.user": "admin"}
    with pytest.raises(grpc.RpcError):
        client.get_secret("files-dot", "db:user")


def test_local_file_missing_secret_is_an_error(client):
    with pytest.raises(grpc.RpcError) as e:
        client.get_secret("files", "db")  # only leaves are secrets when not multiValued
    assert e.value.code() == grpc.StatusCode.INTERNAL
    assert "failed getting secret with key db from secret store files" in e.value.details()


def test_local_file_bulk(client):
    assert client.get_bulk_secret("files").secrets == {
        "db:user": {"db:user": "admin"},
        "db:password": {"db:password": "s3cret"},
        "db:path": {"db:path": SECRETS["db"]["path"]},
        "token": {"token": "t0k"},
        "list:0": {"list:0": "a"},
        "list:1": {"list:1": "b"},
    }


def test_local_file_multi_valued(client):
    assert client.get_secret("multi", "db").secret == {"user": "admin", "pass": "p", "deep.x": "y"}
    assert client.get_secret("multi", "token").secret == {"token": "t0k"}
    assert client.get_bulk_secret("multi").secrets == {
        "db": {"user": "admin", "pass": "p", "deep.x": "y"},
        "token": {"token": "t0k"},
    }


def test_secret_key_ref_resolves_component_metadata(client, sidecar):
    import os

    key = unique()
    client.save_state("fromsecret", key, "persisted")
    assert client.get_state("fromsecret", key).data == b"persisted"
    assert os.path.getsize(SECRETS["db"]["path"]) > 0, "sqlite opened the path read from the secret store"


# ---- local.env ----------------------------------------------------------------------------------------


def test_local_env_with_prefix(client):
    assert client.get_secret("env", "ALPHA").secret == {"ALPHA": "one"}
    assert client.get_secret("env", "GAMMA").secret == {"GAMMA": ""}, "a missing variable reads as empty"
    assert client.get_bulk_secret("env").secrets == {"ALPHA": {"ALPHA": "one"}, "BETA": {"BETA": "two"}}


def test_local_env_never_exposes_dapr_variables(client):
    assert client.get_secret("envall", "DAPR_FAKE_SECRET").secret == {"DAPR_FAKE_SECRET": ""}
    assert client.get_secret("envall", "PYTEST_SECRET_BETA").secret == {"PYTEST_SECRET_BETA": "two"}
    bulk = client.get_bulk_secret("envall").secrets
    assert bulk["PYTEST_SECRET_ALPHA"] == {"PYTEST_SECRET_ALPHA": "one"}
    assert not [k for k in bulk if k.upper().startswith("DAPR_") or k.upper() == "APP_API_TOKEN"]


# ---- scopes and errors --------------------------------------------------------------------------------


def test_scope_with_allow_list(client):
    assert client.get_secret("scoped", "token").secret == {"token": "t0k"}
    with pytest.raises(grpc.RpcError) as e:
        client.get_secret("scoped", "db:user")
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert e.value.details() == 'access denied by policy to get "db:user" from "scoped"'
    assert client.get_bulk_secret("scoped").secrets == {"token": {"token": "t0k"}}, \
        "bulk silently leaves out what the scope denies"


def test_scope_with_deny_list(client):
    assert client.get_secret("denylist", "db:user").secret == {"db:user": "admin"}
    with pytest.raises(grpc.RpcError) as e:
        client.get_secret("denylist", "db:password")
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    bulk = client.get_bulk_secret("denylist").secrets
    assert "db:password" not in bulk and bulk["db:user"] == {"db:user": "admin"}


def test_unknown_secret_store(client):
    with pytest.raises(grpc.RpcError) as e:
        client.get_secret("nope", "token")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == "failed finding secret store with key nope"
    with pytest.raises(grpc.RpcError) as e:
        client.get_bulk_secret("nope")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# ---- metadata -----------------------------------------------------------------------------------------


def test_get_metadata(client):
    md = client.get_metadata()
    assert md.application_id == "sdksecrets"
    comps = {c.name: c for c in md.registered_components}
    assert set(comps) == {"files", "files-dot", "multi", "env", "envall", "scoped", "denylist", "mem", "fromsecret"}
    assert comps["mem"].type == "state.in-memory" and comps["mem"].version == "v1"
    assert {"ETAG", "TRANSACTIONAL", "TTL", "ACTOR"} <= set(comps["mem"].capabilities)
    assert comps["env"].type == "secretstores.local.env"
    assert list(comps["env"].capabilities) == []
    assert list(comps["multi"].capabilities) == ["MULTIPLE_KEY_VALUES_PER_SECRET"]
    assert md.extended_metadata.get("daprRuntimeVersion")


def test_local_file_capabilities_follow_multi_valued(client):
    comps = {c.name: c for c in client.get_metadata().registered_components}
    assert list(comps["files"].capabilities) == []


def test_set_metadata_shows_in_extended_metadata(client):
    key, value = unique("attr"), "some value with spaces"
    assert key not in client.get_metadata().extended_metadata
    client.set_metadata(key, value)
    assert client.get_metadata().extended_metadata[key] == value
    client.set_metadata(key, "")
    assert client.get_metadata().extended_metadata[key] == ""


# ---- API token ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_sidecar(sidecars):
    return sidecars.start("sdktoken", [component("mem", "state.in-memory")], api_token=TOKEN)


def test_api_token_right_token_works(token_sidecar):
    with sdk_client(token_sidecar, token=TOKEN) as c:
        key = unique()
        c.save_state("mem", key, "guarded")
        assert c.get_state("mem", key).data == b"guarded"
        assert c.get_metadata().application_id == "sdktoken"


@pytest.mark.parametrize("token", ["wrong-token", None])
def test_api_token_wrong_or_missing_token_is_unauthenticated(token_sidecar, token):
    # The SDK's startup health check hits GET /v1.0/healthz/outbound, which needs no token.
    with sdk_client(token_sidecar, token=token) as c:
        with pytest.raises(grpc.RpcError) as e:
            c.get_state("mem", "k")
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:
            c.get_metadata()
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:
            c.save_state("mem", "k", "v")
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with sdk_client(token_sidecar, token=TOKEN) as c:
        assert c.get_state("mem", "k").data == b"", "the rejected save wrote nothing"
