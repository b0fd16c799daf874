"""The Dapr HTTP API with plain `requests`: every route tandem serves, its answers and error codes,
plus process-level behaviour (startup failures, `tandem run`, SIGTERM)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
import requests

from conftest import REDIS_HOST, component, configuration, free_port, poll_until, unique

TOKEN = "http-api-token-1234"
SECRETS = {"token": "t0k", "db": {"user": "admin", "password": "pw"}}
STATE_STORES = ["mem", "sq", "rd"]


# ---- sidecars -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def main(sidecars, redis_prefix, tmp_path_factory):
    d = tmp_path_factory.mktemp("http-main")
    (d / "secrets.json").write_text(json.dumps(SECRETS))
    return sidecars.start(
        "httpapp",
        [
            component("mem", "state.in-memory"),
            component("sq", "state.sqlite", {"connectionString": str(d / "state.db")}),
            component("rd", "state.redis", {"redisHost": REDIS_HOST, "keyPrefix": redis_prefix}),
            component("files", "secretstores.local.file", {"secretsFile": str(d / "secrets.json")}),
            component("scoped", "secretstores.local.file", {"secretsFile": str(d / "secrets.json")}),
            component("mine", "state.in-memory", scopes=["httpapp", "another-app"]),
            component("theirs", "state.in-memory", scopes=["another-app"]),
        ],
        config=configuration(secret_scopes=[
            {"storeName": "scoped", "defaultAccess": "deny", "allowedSecrets": ["token"]},
        ]),
    )


@pytest.fixture(scope="module")
def empty(sidecars):
    """No components at all."""
    return sidecars.start("httpempty", [])


@pytest.fixture(scope="module")
def guarded(sidecars):
    return sidecars.start("httptoken", [component("mem", "state.in-memory")], api_token=TOKEN)


@pytest.fixture(scope="module")
def small(sidecars):
    return sidecars.start("httpsmall", [component("mem", "state.in-memory")],
                          extra_args=["--max-body-size", "1Ki"])


def assert_error(resp: requests.Response, status: int, code: str, message: str | None = None,
                 contains: str | None = None) -> dict:
    assert resp.status_code == status, f"{resp.status_code} {resp.text}"
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert body["errorCode"] == code, body
    if message is not None:
        assert body["message"] == message, body
    if contains is not None:
        assert contains in body["message"], body
    return body


def save(sc, store, items, params=None, method="POST"):
    return requests.request(method, sc.url(f"/v1.0/state/{store}"), json=items, params=params, timeout=10)


def get(sc, store, key, **kw):
    return requests.get(sc.url(f"/v1.0/state/{store}/{key}"), timeout=10, **kw)


# ---- state: save / get / delete -----------------------------------------------------------------------


@pytest.mark.parametrize("store", STATE_STORES)
def test_save_204_then_get_200_with_etag_and_body(main, store):
    key = unique()
    r = save(main, store, [{"key": key, "value": {"name": "ada", "n": 1}}])
    assert r.status_code == 204 and r.content == b""

    r = get(main, store, key)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.headers.get("etag"), r.headers
    assert r.json() == {"name": "ada", "n": 1}

    # PUT saves too; a JSON string value is stored as a JSON string
    assert save(main, store, [{"key": key, "value": "hi"}], method="PUT").status_code == 204
    r2 = get(main, store, key)
    assert r2.text == '"hi"'
    assert r2.headers["etag"] != r.headers["etag"]


@pytest.mark.parametrize("store", STATE_STORES)
def test_bulk_save_of_several_items(main, store):
    k1, k2 = unique(), unique()
    r = save(main, store, [{"key": k1, "value": 1}, {"key": k2, "value": [1, 2]}])
    assert r.status_code == 204
    assert get(main, store, k1).json() == 1
    assert get(main, store, k2).json() == [1, 2]


def test_save_empty_list_is_204(main):
    assert save(main, "mem", []).status_code == 204


@pytest.mark.parametrize("store", STATE_STORES)
def test_get_missing_key_is_204(main, store):
    r = get(main, store, unique("missing"))
    assert r.status_code == 204
    assert r.content == b""
    assert "etag" not in r.headers


@pytest.mark.parametrize("store", STATE_STORES)
def test_delete(main, store):
    key = unique()
    save(main, store, [{"key": key, "value": 1}])
    r = requests.delete(main.url(f"/v1.0/state/{store}/{key}"), timeout=10)
    assert r.status_code == 204
    assert get(main, store, key).status_code == 204
    # deleting a missing key is fine
    assert requests.delete(main.url(f"/v1.0/state/{store}/{key}"), timeout=10).status_code == 204


@pytest.mark.parametrize("method,path,kwargs", [
    ("GET", "/v1.0/state/nope/k", {}),
    ("POST", "/v1.0/state/nope", {"json": [{"key": "k", "value": 1}]}),
    ("DELETE", "/v1.0/state/nope/k", {}),
    ("POST", "/v1.0/state/nope/bulk", {"json": {"keys": ["k"]}}),
    ("POST", "/v1.0/state/nope/transaction", {"json": {"operations": []}}),
    ("POST", "/v1.0-alpha1/state/nope/query", {"json": {}}),
])
def test_state_store_not_found_400(main, method, path, kwargs):
    r = requests.request(method, main.url(path), timeout=10, **kwargs)
    assert_error(r, 400, "ERR_STATE_STORE_NOT_FOUND", "state store nope is not found")


@pytest.mark.parametrize("method,path,kwargs", [
    ("GET", "/v1.0/state/s/k", {}),
    ("POST", "/v1.0/state/s", {"json": [{"key": "k", "value": 1}]}),
    ("DELETE", "/v1.0/state/s/k", {}),
    ("POST", "/v1.0/state/s/bulk", {"json": {"keys": ["k"]}}),
    ("POST", "/v1.0/state/s/transaction", {"json": {"operations": []}}),
])
def test_no_state_stores_500_not_configured(empty, method, path, kwargs):
    r = requests.request(method, empty.url(path), timeout=10, **kwargs)
    assert_error(r, 500, "ERR_STATE_STORE_NOT_CONFIGURED", "state store s is not configured")


@pytest.mark.parametrize("body", [b"{not json", b"", b'{"key":"k","value":1}', b'[{"key": 5}]'])
def test_save_malformed_json_400(main, body):
    r = requests.post(main.url("/v1.0/state/mem"), data=body, timeout=10)
    assert_error(r, 400, "ERR_MALFORMED_REQUEST")


def test_json_field_names_are_case_insensitive(main):
    key = unique()
    assert save(main, "mem", [{"Key": key, "Value": 1}]).status_code == 204
    assert get(main, "mem", key).json() == 1


def test_save_empty_key_400(main):
    r = save(main, "mem", [{"key": "", "value": 1}])
    assert_error(r, 400, "ERR_MALFORMED_REQUEST", '"key" is a required field')
    r = save(main, "mem", [{"value": 1}])
    assert_error(r, 400, "ERR_MALFORMED_REQUEST", '"key" is a required field')


@pytest.mark.parametrize("store", STATE_STORES)
def test_key_with_separator_400(main, store):
    msg = "input key/keyPrefix 'a||b' can't contain '||'"
    assert_error(save(main, store, [{"key": "a||b", "value": 1}]), 400, "ERR_MALFORMED_REQUEST", msg)
    assert_error(get(main, store, "a||b"), 400, "ERR_MALFORMED_REQUEST", msg)
    r = requests.delete(main.url(f"/v1.0/state/{store}/a||b"), timeout=10)
    assert_error(r, 400, "ERR_MALFORMED_REQUEST", msg)
    r = requests.post(main.url(f"/v1.0/state/{store}/bulk"), json={"keys": ["ok", "a||b"]}, timeout=10)
    assert_error(r, 400, "ERR_MALFORMED_REQUEST", msg)
    r = requests.post(main.url(f"/v1.0/state/{store}/transaction"),
                      json={"operations": [{"operation": "upsert", "request": {"key": "a||b", "value": 1}}]},
                      timeout=10)
    assert_error(r, 400, "ERR_MALFORMED_REQUEST", msg)


# ---- etags --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("store", STATE_STORES)
def test_etag_mismatch_409_on_save_and_delete(main, store):
    key = unique()
    save(main, store, [{"key": key, "value": "v1"}])
    stale = get(main, store, key).headers["etag"]
    save(main, store, [{"key": key, "value": "v2"}])
    current = get(main, store, key).headers["etag"]
    assert current != stale

    r = save(main, store, [{"key": key, "value": "v3", "etag": stale}])
    assert_error(r, 409, "ERR_STATE_SAVE", contains=f"failed saving state in state store {store}: "
                                                    "possible etag mismatch")
    assert get(main, store, key).json() == "v2"

    r = requests.delete(main.url(f"/v1.0/state/{store}/{key}"), headers={"If-Match": stale}, timeout=10)
    assert_error(r, 409, "ERR_STATE_DELETE", contains=f"failed deleting state with key {key}: ")
    assert get(main, store, key).json() == "v2"

    r = save(main, store, [{"key": key, "value": "v3", "etag": current}])
    assert r.status_code == 204
    newest = get(main, store, key).headers["etag"]
    r = requests.delete(main.url(f"/v1.0/state/{store}/{key}"), headers={"If-Match": newest}, timeout=10)
    assert r.status_code == 204
    assert get(main, store, key).status_code == 204


@pytest.mark.parametrize("store", STATE_STORES)
def test_first_write_over_http(main, store):
    key = unique()
    fw = {"concurrency": "first-write"}
    assert save(main, store, [{"key": key, "value": 1, "options": fw}]).status_code == 204
    r = save(main, store, [{"key": key, "value": 2, "options": fw}])
    assert_error(r, 409, "ERR_STATE_SAVE")
    etag = get(main, store, key).headers["etag"]
    assert save(main, store, [{"key": key, "value": 2, "etag": etag, "options": fw}]).status_code == 204
    assert get(main, store, key).json() == 2


def test_unknown_concurrency_is_500(main):
    r = save(main, "mem", [{"key": unique(), "value": 1, "options": {"concurrency": "whenever"}}])
    assert_error(r, 500, "ERR_STATE_SAVE", contains="unrecognized concurrency model 'whenever'")


def test_invalid_etag_400(main):
    # Redis etags are integers (hash field "version"); Dapr's redis store reports anything else as an
    # invalid etag, which the API answers with 400.
    key = unique()
    save(main, "rd", [{"key": key, "value": 1}])
    r = save(main, "rd", [{"key": key, "value": 2, "etag": "not-a-number"}])
    assert_error(r, 400, "ERR_STATE_SAVE", contains="invalid etag value")
    assert get(main, "rd", key).json() == 1


@pytest.mark.parametrize("store", ["mem", "sq"])
def test_foreign_etag_on_memory_and_sqlite_is_a_mismatch(main, store):
    key = unique()
    save(main, store, [{"key": key, "value": 1}])
    r = save(main, store, [{"key": key, "value": 2, "etag": "3f2a5c8e-not-ours"}])
    assert_error(r, 409, "ERR_STATE_SAVE")


# ---- bulk get -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("store", STATE_STORES)
def test_bulk_get_shape(main, store):
    k1, k2, missing = unique("b1"), unique("b2"), unique("none")
    save(main, store, [{"key": k1, "value": {"x": 1}}, {"key": k2, "value": "two"}])
    r = requests.post(main.url(f"/v1.0/state/{store}/bulk"), json={"keys": [k2, missing, k1], "parallelism": 2},
                      timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    items = r.json()
    assert [i["key"] for i in items] == [k2, missing, k1]
    assert items[0]["data"] == "two" and items[2]["data"] == {"x": 1}
    assert items[0]["etag"] == get(main, store, k2).headers["etag"]
    assert items[1] == {"key": missing}
    assert set(items[2]) <= {"key", "data", "etag", "metadata"}

    r = requests.put(main.url(f"/v1.0/state/{store}/bulk"), json={"keys": []}, timeout=10)
    assert r.status_code == 200 and r.json() == []


def test_bulk_get_malformed_400(main):
    r = requests.post(main.url("/v1.0/state/mem/bulk"), data=b"{oops", timeout=10)
    assert_error(r, 400, "ERR_MALFORMED_REQUEST", contains="failed deserializing HTTP body")


# ---- transactions -------------------------------------------------------------------------------------


def tx(sc, store, ops, params=None):
    return requests.post(sc.url(f"/v1.0/state/{store}/transaction"), json={"operations": ops},
                         params=params, timeout=10)


@pytest.mark.parametrize("store", STATE_STORES)
def test_transaction_success(main, store):
    a, b = unique("a"), unique("b")
    save(main, store, [{"key": b, "value": "old"}])
    r = tx(main, store, [
        {"operation": "upsert", "request": {"key": a, "value": {"v": 1}}},
        {"operation": "delete", "request": {"key": b}},
    ])
    assert r.status_code == 204
    assert get(main, store, a).json() == {"v": 1}
    assert get(main, store, b).status_code == 204
    assert tx(main, store, []).status_code == 204


@pytest.mark.parametrize("store", STATE_STORES)
def test_transaction_unknown_operation_400(main, store):
    a = unique()
    r = tx(main, store, [
        {"operation": "upsert", "request": {"key": a, "value": 1}},
        {"operation": "merge", "request": {"key": a, "value": 2}},
    ])
    assert_error(r, 400, "ERR_NOT_SUPPORTED_STATE_OPERATION", "operation type merge not supported")
    assert get(main, store, a).status_code == 204, "nothing of a refused transaction is applied"


@pytest.mark.parametrize("store", STATE_STORES)
def test_transaction_etag_failure_500_and_nothing_applied(main, store):
    a, b = unique("a"), unique("b")
    save(main, store, [{"key": b, "value": "b0"}])
    stale = get(main, store, b).headers["etag"]
    save(main, store, [{"key": b, "value": "b1"}])
    r = tx(main, store, [
        {"operation": "upsert", "request": {"key": a, "value": "new"}},
        {"operation": "upsert", "request": {"key": b, "value": "b2", "etag": stale}},
    ])
    assert_error(r, 500, "ERR_STATE_TRANSACTION", contains="error while executing state transaction: ")
    assert get(main, store, a).status_code == 204
    assert get(main, store, b).json() == "b1"


def test_transaction_malformed_400(main):
    r = requests.post(main.url("/v1.0/state/mem/transaction"), data=b"[]]", timeout=10)
    assert_error(r, 400, "ERR_MALFORMED_REQUEST", contains="failed deserializing HTTP body")


# ---- query --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["mem", "sq"])
def test_query_200_shape_and_204_when_empty(main, store):
    run = unique("run")
    for n in range(3):
        save(main, store, [{"key": f"{run}-{n}", "value": {"run": run, "n": n}}])
    url = main.url(f"/v1.0-alpha1/state/{store}/query")
    r = requests.post(url, json={"filter": {"EQ": {"run": run}}, "sort": [{"key": "n", "order": "DESC"}],
                                 "page": {"limit": 2}}, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["key"] for x in body["results"]] == [f"{run}-2", f"{run}-1"]
    assert body["results"][0]["data"] == {"run": run, "n": 2}
    assert all(x["etag"] for x in body["results"])
    assert body["token"]
    r = requests.post(url, json={"filter": {"EQ": {"run": run}}, "sort": [{"key": "n", "order": "DESC"}],
                                 "page": {"limit": 2, "token": body["token"]}}, timeout=10)
    assert [x["key"] for x in r.json()["results"]] == [f"{run}-0"]
    assert "token" not in r.json()

    r = requests.post(url, json={"filter": {"EQ": {"run": "nothing-matches"}}}, timeout=10)
    assert r.status_code == 204 and r.content == b""


def test_query_malformed_500(main):
    r = requests.post(main.url("/v1.0-alpha1/state/mem/query"), data=b"{nope", timeout=10)
    assert_error(r, 500, "ERR_STATE_QUERY", contains="state store mem query failed: failed to parse JSON query body")


def test_query_on_redis_is_500(main):
    r = requests.post(main.url("/v1.0-alpha1/state/rd/query"), json={"filter": {"EQ": {"a": 1}}}, timeout=10)
    assert r.status_code == 500
    assert r.json()["errorCode"] in ("ERR_STATE_STORE_NOT_SUPPORTED", "ERR_STATE_QUERY")


def test_query_on_redis_error_code_matches_dapr(main):
    r = requests.post(main.url("/v1.0-alpha1/state/rd/query"), json={"filter": {"EQ": {"a": 1}}}, timeout=10)
    assert_error(r, 500, "ERR_STATE_QUERY", contains="state store rd query failed: ")


# ---- TTL ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("store", STATE_STORES)
def test_ttl_query_parameter(main, store):
    key = unique("ttl")
    r = save(main, store, [{"key": key, "value": "brief"}], params={"metadata.ttlInSeconds": "1"})
    assert r.status_code == 204
    first = get(main, store, key)
    assert first.status_code == 200
    if store == "mem":
        # Dapr's in-memory store reports the expiry as response metadata (header `metadata.ttlExpireTime`).
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", first.headers["metadata.ttlExpireTime"])
    assert poll_until(lambda: get(main, store, key).status_code == 204, timeout=5.0)


def test_ttl_in_item_metadata(main):
    key = unique("ttl")
    save(main, "mem", [{"key": key, "value": 1, "metadata": {"ttlInSeconds": "1"}}])
    assert get(main, "mem", key).status_code == 200
    assert poll_until(lambda: get(main, "mem", key).status_code == 204, timeout=5.0)


def test_bad_ttl_is_500(main):
    r = save(main, "mem", [{"key": unique(), "value": 1}], params={"metadata.ttlInSeconds": "soon"})
    assert_error(r, 500, "ERR_STATE_SAVE", contains="ttlInSeconds")


# ---- body size ----------------------------------------------------------------------------------------


def test_body_within_limit_is_accepted(small):
    r = requests.post(small.url("/v1.0/state/mem"), json=[{"key": "k", "value": "x" * 100}], timeout=10)
    assert r.status_code == 204


@pytest.mark.parametrize("path,method", [
    ("/v1.0/state/mem", "POST"),
    ("/v1.0/state/mem/bulk", "POST"),
    ("/v1.0/state/mem/transaction", "POST"),
    ("/v1.0/metadata/big", "PUT"),
])
def test_oversized_body_is_rejected(small, path, method):
    body = json.dumps([{"key": "k", "value": "x" * 4096}]).encode()
    r = requests.request(method, small.url(path), data=body, timeout=10)
    assert 400 <= r.status_code < 500, f"{r.status_code} {r.text}"
    expected = "ERR_BODY_READ" if path.startswith("/v1.0/metadata") else "ERR_MALFORMED_REQUEST"
    assert r.json()["errorCode"] == expected
    assert "stream too large" in r.json()["message"]
    if path == "/v1.0/state/mem":
        assert get(small, "mem", "k").json() == "x" * 100, "nothing of the oversized request is applied"


# ---- secrets ------------------------------------------------------------------------------------------


def test_secret_get_and_bulk(main):
    r = requests.get(main.url("/v1.0/secrets/files/token"), timeout=10)
    assert r.status_code == 200 and r.json() == {"token": "t0k"}
    assert r.headers["content-type"].startswith("application/json")
    r = requests.get(main.url("/v1.0/secrets/files/db:user"), timeout=10)
    assert r.json() == {"db:user": "admin"}
    r = requests.get(main.url("/v1.0/secrets/files/bulk"), timeout=10)
    assert r.status_code == 200
    assert r.json() == {"token": {"token": "t0k"}, "db:user": {"db:user": "admin"},
                        "db:password": {"db:password": "pw"}}


def test_secret_store_not_found_401(main):
    r = requests.get(main.url("/v1.0/secrets/nope/token"), timeout=10)
    assert_error(r, 401, "ERR_SECRET_STORE_NOT_FOUND", "failed finding secret store with key nope")
    r = requests.get(main.url("/v1.0/secrets/nope/bulk"), timeout=10)
    assert_error(r, 401, "ERR_SECRET_STORE_NOT_FOUND")


def test_secret_denied_403_and_filtered_from_bulk(main):
    r = requests.get(main.url("/v1.0/secrets/scoped/db:user"), timeout=10)
    assert_error(r, 403, "ERR_PERMISSION_DENIED", 'access denied by policy to get "db:user" from "scoped"')
    assert requests.get(main.url("/v1.0/secrets/scoped/token"), timeout=10).json() == {"token": "t0k"}
    assert requests.get(main.url("/v1.0/secrets/scoped/bulk"), timeout=10).json() == {"token": {"token": "t0k"}}


def test_missing_secret_500(main):
    r = requests.get(main.url("/v1.0/secrets/files/nope"), timeout=10)
    assert_error(r, 500, "ERR_SECRET_GET", contains="failed getting secret with key nope from secret store files")


def test_no_secret_stores_500(empty):
    r = requests.get(empty.url("/v1.0/secrets/any/key"), timeout=10)
    assert_error(r, 500, "ERR_SECRET_STORES_NOT_CONFIGURED", "secret store is not configured")
    r = requests.get(empty.url("/v1.0/secrets/any/bulk"), timeout=10)
    assert_error(r, 500, "ERR_SECRET_STORES_NOT_CONFIGURED")


# ---- metadata -----------------------------------------------------------------------------------------


def test_metadata_shape(main):
    r = requests.get(main.url("/v1.0/metadata"), timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    md = r.json()
    assert md["id"] == "httpapp"
    assert md["runtimeVersion"]
    comps = {c["name"]: c for c in md["components"]}
    assert set(comps) == {"mem", "sq", "rd", "files", "scoped", "mine"}, "components scoped to other apps are skipped"
    assert comps["mem"]["type"] == "state.in-memory" and comps["mem"]["version"] == "v1"
    assert comps["sq"]["type"] == "state.sqlite"
    assert comps["rd"]["type"] == "state.redis"
    assert comps["files"]["type"] == "secretstores.local.file"
    for name in ("mem", "sq", "rd"):
        assert {"ETAG", "TRANSACTIONAL", "TTL", "ACTOR"} <= set(comps[name]["capabilities"]), comps[name]
    assert md["extended"]["daprRuntimeVersion"]
    assert md["actorRuntime"]["runtimeStatus"] == "DISABLED"
    assert md["appConnectionProperties"]["protocol"] == "http"
    assert md["appConnectionProperties"]["channelAddress"] == "127.0.0.1"
    assert "port" not in md["appConnectionProperties"], "no --app-port, no port"


def test_metadata_of_an_empty_sidecar(empty):
    md = requests.get(empty.url("/v1.0/metadata"), timeout=10).json()
    assert md["id"] == "httpempty"
    assert not md.get("components")
    assert md["extended"]["daprRuntimeVersion"]


def test_metadata_omits_empty_lists(empty):
    md = requests.get(empty.url("/v1.0/metadata"), timeout=10).json()
    assert "components" not in md and "subscriptions" not in md


def test_put_metadata_then_visible(main):
    key = unique("attr")
    r = requests.put(main.url(f"/v1.0/metadata/{key}"), data=b"hello world", timeout=10)
    assert r.status_code == 204
    assert requests.get(main.url("/v1.0/metadata"), timeout=10).json()["extended"][key] == "hello world"
    r = requests.put(main.url(f"/v1.0/metadata/{key}"), data=b'{"raw": true}',
                     headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 204
    assert requests.get(main.url("/v1.0/metadata"), timeout=10).json()["extended"][key] == '{"raw": true}'


# ---- health -------------------------------------------------------------------------------------------


def test_healthz(main):
    r = requests.get(main.url("/v1.0/healthz"), timeout=10)
    assert r.status_code == 204 and r.content == b""
    assert requests.get(main.url("/v1.0/healthz/outbound"), timeout=10).status_code == 204
    assert requests.get(main.url("/v1.0/healthz"), params={"appid": "httpapp"}, timeout=10).status_code == 204
    r = requests.get(main.url("/v1.0/healthz"), params={"appid": "someone-else"}, timeout=10)
    assert_error(r, 500, "ERR_HEALTH_APPID_NOT_MATCH", "dapr app-id does not match")


# ---- API token ----------------------------------------------------------------------------------------


def test_api_token_missing_or_wrong_401(guarded):
    for headers in ({}, {"dapr-api-token": "wrong"}):
        r = requests.get(guarded.url("/v1.0/metadata"), headers=headers, timeout=10)
        assert r.status_code == 401
        assert r.text.strip() == "invalid api token"
        assert r.headers["content-type"].startswith("text/plain")
        r = requests.post(guarded.url("/v1.0/state/mem"), json=[{"key": "k", "value": 1}], headers=headers,
                          timeout=10)
        assert r.status_code == 401
    # the check runs before routing: unknown routes are refused too
    assert requests.get(guarded.url("/v1.0/no-such-api"), timeout=10).status_code == 401
    r = requests.get(guarded.url("/v1.0/state/mem/k"), headers={"dapr-api-token": TOKEN}, timeout=10)
    assert r.status_code == 204, "the refused save wrote nothing"


def test_api_token_healthz_exempt(guarded):
    assert requests.get(guarded.url("/v1.0/healthz"), timeout=10).status_code == 204
    assert requests.get(guarded.url("/v1.0/healthz/outbound"), timeout=10).status_code == 204


def test_api_token_right_token(guarded):
    h = {"dapr-api-token": TOKEN}
    key = unique()
    r = requests.post(guarded.url("/v1.0/state/mem"), json=[{"key": key, "value": 7}], headers=h, timeout=10)
    assert r.status_code == 204
    r = requests.get(guarded.url(f"/v1.0/state/mem/{key}"), headers=h, timeout=10)
    assert r.status_code == 200 and r.json() == 7
    assert requests.get(guarded.url("/v1.0/metadata"), headers=h, timeout=10).json()["id"] == "httptoken"


# ---- unknown routes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1.0/nope"),
    ("POST", "/foo/bar"),
    ("GET", "/v1.0/state"),
    ("GET", "/v2.0/state/mem/k"),
])
def test_unknown_route_404_direct_invoke(main, method, path):
    r = requests.request(method, main.url(path), timeout=10)
    assert_error(r, 404, "ERR_DIRECT_INVOKE",
                 "failed getting app id either from the URL path or the header dapr-app-id")


@pytest.mark.parametrize("method,path", [("GET", "/v1.0/state/mem"), ("PATCH", "/v1.0/metadata")])
def test_wrong_method_is_404_direct_invoke(main, method, path):
    r = requests.request(method, main.url(path), timeout=10)
    assert_error(r, 404, "ERR_DIRECT_INVOKE")


@pytest.mark.parametrize("key", ["bulk", "transaction"])
def test_keys_named_like_subroutes(main, key):
    save(main, "mem", [{"key": key, "value": "sub"}])
    r = get(main, "mem", key)
    assert r.status_code == 200 and r.json() == "sub"
    assert requests.delete(main.url(f"/v1.0/state/mem/{key}"), timeout=10).status_code == 204


@pytest.mark.parametrize("path", ["/v1.0/metadata/", "/v1.0//metadata"])
def test_paths_are_normalised(main, path):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", main.http_port, timeout=10)
    conn.request("GET", path)  # requests/urllib3 would normalise the path themselves
    resp = conn.getresponse()
    assert resp.status == 200
    assert json.loads(resp.read())["id"] == "httpapp"


def test_plus_in_key_segment_is_a_space(main):
    key = unique("a") + " b"
    save(main, "mem", [{"key": key, "value": 1}])
    r = requests.get(main.url("/v1.0/state/mem/" + key.replace(" ", "+")), timeout=10)
    assert r.status_code == 200


def test_http_errors_carry_details(main):
    r = requests.get(main.url("/v1.0/state/nope/k"), timeout=10)
    body = r.json()
    assert body["details"] == [{
        "@type": "type.googleapis.com/google.rpc.ErrorInfo", "domain": "dapr.io",
        "metadata": {"appID": "httpapp"}, "reason": "DAPR_STATE_NOT_FOUND",
    }]


# ---- metrics ------------------------------------------------------------------------------------------


def test_metrics_endpoint(main):
    requests.get(main.url("/v1.0/healthz"), timeout=10)
    requests.get(main.url(f"/v1.0/state/mem/{unique()}"), timeout=10)
    r = requests.get(f"http://127.0.0.1:{main.metrics_port}/", timeout=10)
    assert r.status_code == 200
    lines = [ln for ln in r.text.splitlines() if ln.startswith("dapr_http_server_request_count{")]
    assert lines, r.text[:2000]
    assert any('app_id="httpapp"' in ln and 'status="204"' in ln and 'method="GET"' in ln for ln in lines), lines
    assert "dapr_http_server_latency_bucket{" in r.text


def test_metrics_labels_do_not_grow_with_the_paths_callers_send(main):
    # Labels come from route templates; paths no route serves share one label, so random paths, stores and keys
    # cannot grow the metrics (and the sidecar's memory) without bound.
    token = uuid.uuid4().hex
    for i in range(60):
        requests.get(main.url(f"/{token}/{i}/x"), timeout=10)
        requests.get(main.url(f"/v1.0/state/{token}{i}/k{i}"), timeout=10)
        requests.post(main.url(f"/v1.0/{token}{i}"), timeout=10)
    r = requests.get(f"http://127.0.0.1:{main.metrics_port}/", timeout=10)
    assert r.status_code == 200
    assert token not in r.text, "a caller-chosen path reached a label"
    paths = set(re.findall(r'dapr_http_server_request_count\{[^}]*path="([^"]*)"', r.text))
    assert "/v1.0/state/{store}/{key}" in paths and "" in paths, paths
    assert len(paths) < 30, paths


# ---- startup and process behaviour --------------------------------------------------------------------


def test_unknown_component_type_refuses_to_start(fresh_sidecars):
    # Several copies at once: the exit code must be non-zero every time, not just usually.
    results = fresh_sidecars.run_many_to_exit("badtype", [component("c", "state.cassandra")], copies=6)
    codes = [rc for rc, _ in results]
    for _, out in results:
        assert "state.cassandra" in out
        for registered in ("state.redis/v1", "state.in-memory/v1", "secretstores.local.file/v1"):
            assert registered in out, out
    assert all(rc != 0 for rc in codes), f"exit codes {codes}"


def test_malformed_yaml_refuses_to_start_naming_the_file(fresh_sidecars):
    rc, out = fresh_sidecars.run_to_exit(
        "badyaml", [component("mem", "state.in-memory")],
        raw_files={"broken.yaml": "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: [unclosed\n"},
    )
    assert rc != 0
    assert "broken.yaml" in out, out


def test_failing_component_stops_the_sidecar(fresh_sidecars, tmp_path):
    results = fresh_sidecars.run_many_to_exit(
        "failing", [component("sec", "secretstores.local.file", {"secretsFile": str(tmp_path / "absent.json")})],
        copies=6)
    codes = [rc for rc, _ in results]
    for _, out in results:
        assert "sec" in out and "absent.json" in out, out
    assert all(rc != 0 for rc in codes), f"exit codes {codes}"


def test_ignore_errors_skips_failing_component(fresh_sidecars, tmp_path):
    sc = fresh_sidecars.start("ignoring", [
        component("sec", "secretstores.local.file", {"secretsFile": str(tmp_path / "absent.json")},
                  ignore_errors=True),
        component("mem", "state.in-memory"),
    ])
    names = [c["name"] for c in requests.get(sc.url("/v1.0/metadata"), timeout=10).json()["components"]]
    assert names == ["mem"]
    r = requests.get(sc.url("/v1.0/secrets/sec/x"), timeout=10)
    assert_error(r, 500, "ERR_SECRET_STORES_NOT_CONFIGURED")


def test_invalid_configuration_refuses_to_start(fresh_sidecars):
    rc, out = fresh_sidecars.run_to_exit(
        "badconfig", [component("mem", "state.in-memory")],
        config=configuration(secret_scopes=[{"storeName": "x", "defaultAccess": "maybe"}]))
    assert rc != 0
    assert "defaultAccess maybe can be either allow or deny" in out, out


def test_shutdown_api_stops_the_sidecar(fresh_sidecars):
    sc = fresh_sidecars.start("shutdown", [component("mem", "state.in-memory")])
    r = requests.post(sc.url("/v1.0/shutdown"), timeout=10)
    assert r.status_code == 204
    assert sc.proc.wait(timeout=10) == 0, sc.stderr()


def test_sigterm_exits_zero_within_grace(fresh_sidecars):
    sc = fresh_sidecars.start("sigterm", [component("mem", "state.in-memory")])
    started = time.monotonic()
    sc.proc.send_signal(signal.SIGTERM)
    rc = sc.proc.wait(timeout=10)
    assert rc == 0, sc.stderr()
    assert time.monotonic() - started < 7, "exits within the 5 s default grace period"
    with pytest.raises(requests.ConnectionError):
        requests.get(sc.url("/v1.0/healthz"), timeout=2)


def test_half_sent_requests_never_delay_exit_past_the_grace_period(fresh_sidecars):
    """Clients that started a request and stopped mid-way (headers half sent, a body promised and not sent, an
    HTTP/2 stream left open) do not hold the sidecar past --dapr-graceful-shutdown-seconds."""
    import socket

    sc = fresh_sidecars.start("halfsent", [component("mem", "state.in-memory")],
                              extra_args=["--dapr-graceful-shutdown-seconds", "2"])
    held = []
    for payload in (b"POST /v1.0/state/mem HTTP/1.1\r\nhost: x\r\ncontent-le",
                    b"POST /v1.0/state/mem HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n[{\"key\":",
                    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"):
        s = socket.create_connection(("127.0.0.1", sc.http_port), timeout=5)
        s.sendall(payload)
        held.append(s)
    time.sleep(0.5)
    started = time.monotonic()
    sc.proc.send_signal(signal.SIGTERM)
    sc.proc.wait(timeout=15)
    elapsed = time.monotonic() - started
    for s in held:
        s.close()
    assert elapsed < 4, f"exit took {elapsed:.1f} s with a 2 s grace period"


def test_sigterm_exits_when_nobody_reads_its_logs_any_more(tandem, tmp_path):
    """The log reader went away (a closed pipe): logging fails, and SIGTERM must still stop the sidecar."""
    http_port = free_port()
    proc = subprocess.Popen(
        [tandem, "sidecar", "--app-id", "orphan", "--dapr-http-port", str(http_port), "--dapr-grpc-port",
         str(free_port()), "--dapr-internal-grpc-port", str(free_port()), "--metrics-port", str(free_port()),
         "--resources-path", str(tmp_path), "--log-level", "debug"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"},
    )
    try:
        assert proc.stdout.readline(), "no log line"
        proc.stdout.close()
        def healthy() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{http_port}/v1.0/healthz", timeout=1).status_code == 204
            except requests.RequestException:
                return False

        assert poll_until(healthy, timeout=10)
        requests.get(f"http://127.0.0.1:{http_port}/v1.0/metadata", timeout=2)  # logs into the closed pipe
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


APP = textwrap.dedent("""
    import json, os, sys, time, urllib.request
    port = os.environ["DAPR_HTTP_PORT"]
    base = f"http://127.0.0.1:{port}/v1.0"
    deadline = time.time() + 15
    while True:  # what the SDKs do: wait for the sidecar's outbound readiness
        try:
            if urllib.request.urlopen(base + "/healthz/outbound", timeout=1).status == 204:
                break
        except Exception:
            if time.time() > deadline:
                sys.exit(10)
        time.sleep(0.1)
    req = urllib.request.Request(base + "/state/statestore", method="POST",
                                 data=json.dumps([{"key": "k", "value": {"from": "app"}}]).encode(),
                                 headers={"content-type": "application/json"})
    assert urllib.request.urlopen(req, timeout=5).status == 204
    got = json.load(urllib.request.urlopen(base + "/state/statestore/k", timeout=5))
    print("APP", os.environ.get("APP_ID"), port, os.environ.get("DAPR_GRPC_PORT"), json.dumps(got), flush=True)
    sys.exit(3)
""")


def test_tandem_run_passes_ports_and_returns_app_exit_code(tandem, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAPR_")}
    env["HOME"] = str(tmp_path)  # the embedded default state store lives in $HOME/.tandem
    proc = subprocess.run(
        [tandem, "run", "--app-id", "runner", "--", sys.executable, "-c", APP],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("APP ")]
    assert line, proc.stdout + proc.stderr
    _, app_id, http_port, grpc_port, got = line[0].split(" ", 4)
    assert app_id == "runner"
    assert int(http_port) > 0 and int(grpc_port) > 0 and http_port != grpc_port
    assert json.loads(got) == {"from": "app"}
    assert (tmp_path / ".tandem" / "state.db").exists(), "default sqlite state store under $HOME/.tandem"
