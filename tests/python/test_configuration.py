"""The configuration API through the real sidecar: the official Python SDK's get_configuration,
subscribe_configuration (a handler called with each change) and unsubscribe_configuration against Redis and
PostgreSQL configuration stores; plain HTTP get, subscribe (changes posted to an HTTP app at
POST /configuration/<store>/<key>) and unsubscribe; Dapr's error codes for bad input; the metadata API listing
the stores. Store internals (versions, deletes, every-key subscriptions) are in tests/conformance/configuration.rs."""

from __future__ import annotations

import json
import subprocess
import threading
import uuid

import grpc
import pytest
import requests

from conftest import component, poll_until, redis_available, redis_command, sdk_client, start_app

PG = "host=127.0.0.1 port=5432 user=postgres dbname=test"


def psql(sql: str) -> str:
    out = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-v", "ON_ERROR_STOP=1",
                          "-q", "-t", "-c", sql], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return out.stdout


def records(path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def env(sidecars, tmp_path_factory):
    if not redis_available():
        pytest.skip("no Redis server")
    work = tmp_path_factory.mktemp("configuration")
    suffix = uuid.uuid4().hex[:10]
    table, channel = f"pycfg_{suffix}", f"pycfgch_{suffix}"
    psql(f"""
        CREATE TABLE {table} (key VARCHAR NOT NULL, value VARCHAR NOT NULL, version VARCHAR NOT NULL, metadata JSON);
        CREATE OR REPLACE FUNCTION {table}_notify() RETURNS TRIGGER AS $$
        DECLARE data json; notification json;
        BEGIN
          IF (TG_OP = 'DELETE') THEN data = row_to_json(OLD); ELSE data = row_to_json(NEW); END IF;
          notification = json_build_object('table', TG_TABLE_NAME, 'action', TG_OP, 'data', data);
          PERFORM pg_notify('{channel}', notification::text);
          RETURN NULL;
        END;
        $$ LANGUAGE plpgsql;
        CREATE TRIGGER {table}_trigger AFTER INSERT OR UPDATE OR DELETE ON {table}
          FOR EACH ROW EXECUTE PROCEDURE {table}_notify();
    """)
    record = work / "posts.jsonl"
    app = start_app("binding_app_http.py", "configuration", work, env={"RECORD": str(record)})
    sc = sidecars.start("configuration", [
        component("redisconfig", "configuration.redis", {"redisHost": "127.0.0.1:6379"}),
        # The subscription names the channel, as Dapr's quickstart does (metadata pgNotifyChannel).
        component("pgconfig", "configuration.postgresql", {"connectionString": PG, "table": table}),
    ], extra_args=["--app-port", str(app.port)])
    yield {"sc": sc, "record": record, "table": table, "channel": channel, "prefix": f"pycfg_{suffix}_"}
    app.stop()
    psql(f"DROP TABLE IF EXISTS {table}; DROP FUNCTION IF EXISTS {table}_notify();")


def pg_set(env, key: str, value: str, version: str):
    t = env["table"]
    psql(f"DELETE FROM {t} WHERE key = '{key}'; "
         f"INSERT INTO {t} (key, value, version, metadata) VALUES ('{key}', '{value}', '{version}', '{{\"by\":\"pytest\"}}')")


def set_item(env, store: str, key: str, value: str, version: str):
    if store == "redisconfig":
        redis_command("SET", key, f"{value}||{version}")
    else:
        pg_set(env, key, value, version)


def test_sdk_get_configuration_from_redis(env):
    a, b = env["prefix"] + "a", env["prefix"] + "b"
    redis_command("SET", a, "hello||1")
    redis_command("SET", b, "world||7")
    with sdk_client(env["sc"]) as c:
        got = c.get_configuration("redisconfig", [a, b, env["prefix"] + "absent"])
        assert set(got.items) == {a, b}
        assert (got.items[a].value, got.items[a].version) == ("hello", "1")
        assert (got.items[b].value, got.items[b].version) == ("world", "7")


def test_sdk_get_configuration_from_postgres(env):
    k = env["prefix"] + "pg"
    pg_set(env, k, "from-postgres", "3")
    with sdk_client(env["sc"]) as c:
        got = c.get_configuration("pgconfig", [k])
        assert (got.items[k].value, got.items[k].version) == ("from-postgres", "3")
        assert dict(got.items[k].metadata) == {"by": "pytest"}
        every = c.get_configuration("pgconfig", [])
        assert k in every.items


@pytest.mark.parametrize("store", ["redisconfig", "pgconfig"])
def test_sdk_subscribe_then_unsubscribe(env, store):
    key = env["prefix"] + store + "_sub"
    seen: list[tuple[str, str, str]] = []
    lock = threading.Lock()

    def handler(sub_id, response):
        with lock:
            for k, item in response.items.items():
                seen.append((sub_id, k, item.value))

    with sdk_client(env["sc"]) as c:
        md = {"pgNotifyChannel": env["channel"]} if store == "pgconfig" else {}
        sub_id = c.subscribe_configuration(store, [key], handler, md)
        assert sub_id, "the SDK got the subscription id"
        set_item(env, store, key, "v1", "1")
        assert poll_until(lambda: (sub_id, key, "v1") in seen, 10), seen
        set_item(env, store, key, "v2", "2")
        assert poll_until(lambda: (sub_id, key, "v2") in seen, 10), seen
        assert c.unsubscribe_configuration(store, sub_id) is True
        assert c.unsubscribe_configuration(store, sub_id) is False, "an id ends once"


def test_http_get(env):
    sc = env["sc"]
    a = env["prefix"] + "http-a"
    redis_command("SET", a, "x||2")
    for base in ("/v1.0", "/v1.0-alpha1"):
        r = requests.get(sc.url(f"{base}/configuration/redisconfig"), params=[("key", a), ("key", "nope-" + a)])
        assert (r.status_code, r.json()) == (200, {a: {"value": "x", "version": "2"}})
    r = requests.get(sc.url("/v1.0/configuration/redisconfig"), params={"key": "nope-" + a})
    assert (r.status_code, r.text) == (204, "")


def test_http_subscription_posts_changes_to_the_app(env):
    sc, record = env["sc"], env["record"]
    key = env["prefix"] + "http-sub"
    r = requests.get(sc.url("/v1.0/configuration/redisconfig/subscribe"), params={"key": key})
    assert r.status_code == 200, r.text
    sub_id = r.json()["id"]
    redis_command("SET", key, "pushed||5")
    path = f"/configuration/redisconfig/{key}"
    assert poll_until(lambda: any(p["path"] == path for p in records(record)), 10), records(record)
    post = next(p for p in records(record) if p["path"] == path)
    assert json.loads(post["body"]) == {"id": sub_id, "items": {key: {"value": "pushed", "version": "5"}}}
    assert post["headers"]["content-type"] == "application/json"

    r = requests.get(sc.url(f"/v1.0-alpha1/configuration/redisconfig/{sub_id}/unsubscribe"))
    assert (r.status_code, r.json()) == (200, {"ok": True})
    r = requests.get(sc.url(f"/v1.0/configuration/redisconfig/{sub_id}/unsubscribe"))
    assert r.status_code == 500
    assert r.json()["errorCode"] == "ERR_CONFIGURATION_UNSUBSCRIBE"
    assert r.json()["message"] == (f"failed to unsubscribe to configuration request {sub_id}: "
                                   f"subscription with id {sub_id} does not exist")


def test_postgres_http_subscription_names_its_channel(env):
    sc, record = env["sc"], env["record"]
    key = env["prefix"] + "pg_http"
    r = requests.get(sc.url("/v1.0/configuration/pgconfig/subscribe"), params={"key": key})
    assert r.status_code == 500
    assert r.json()["errorCode"] == "ERR_CONFIGURATION_SUBSCRIBE"
    assert "notifyChannel must be set" in r.json()["message"]
    r = requests.get(sc.url("/v1.0/configuration/pgconfig/subscribe"),
                     params={"key": key, "metadata.pgNotifyChannel": env["channel"]})
    assert r.status_code == 200, r.text
    pg_set(env, key, "row", "1")
    path = f"/configuration/pgconfig/{key}"
    assert poll_until(lambda: any(p["path"] == path for p in records(record)), 10), records(record)
    post = next(p for p in records(record) if p["path"] == path)
    body = json.loads(post["body"])
    assert body["items"][key] == {"value": "row", "version": "1", "metadata": {"by": "pytest"}}


def test_bad_input_answers_with_daprs_codes(env):
    sc = env["sc"]
    r = requests.get(sc.url("/v1.0/configuration/nope"))
    assert (r.status_code, r.json()) == (400, {"errorCode": "ERR_CONFIGURATION_STORE_NOT_FOUND",
                                               "message": "configuration store nope not found"})
    r = requests.get(sc.url("/v1.0/configuration/nope/subscribe"))
    assert (r.status_code, r.json()["errorCode"]) == (400, "ERR_CONFIGURATION_STORE_NOT_FOUND")
    r = requests.get(sc.url("/v1.0/configuration/nope/some-id/unsubscribe"))
    assert (r.status_code, r.json()["errorCode"]) == (400, "ERR_CONFIGURATION_STORE_NOT_FOUND")
    r = requests.get(sc.url("/v1.0/configuration/pgconfig"), params={"key": "bad key'"})
    assert (r.status_code, r.json()["errorCode"]) == (500, "ERR_CONFIGURATION_GET")
    assert r.json()["message"] == "failed to get [bad key'] from Configuration store pgconfig: invalid key : 'bad key''"
    with sdk_client(sc) as c:
        with pytest.raises(grpc.RpcError) as err:
            c.get_configuration("nope", ["a"])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == "configuration store nope not found"
        with pytest.raises(grpc.RpcError) as err:
            c.get_configuration("pgconfig", ["bad key'"])
        assert err.value.code() == grpc.StatusCode.INTERNAL


def test_metadata_lists_configuration_stores(env):
    components = requests.get(env["sc"].url("/v1.0/metadata")).json()["components"]
    by_name = {c["name"]: c for c in components}
    assert by_name["redisconfig"]["type"] == "configuration.redis"
    assert by_name["pgconfig"]["type"] == "configuration.postgresql"
    assert by_name["pgconfig"]["version"] == "v1"


def test_without_stores_or_app_dapr_errors(sidecars):
    bare = sidecars.start("configuration-none", [])
    r = requests.get(bare.url("/v1.0/configuration/any"))
    assert (r.status_code, r.json()) == (500, {"errorCode": "ERR_CONFIGURATION_STORE_NOT_CONFIGURED",
                                               "message": "configuration stores not configured"})
    with sdk_client(bare) as c:
        with pytest.raises(grpc.RpcError) as err:
            c.get_configuration("any", [])
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    no_app = sidecars.start("configuration-noapp", [
        component("redisconfig", "configuration.redis", {"redisHost": "127.0.0.1:6379"})])
    r = requests.get(no_app.url("/v1.0/configuration/redisconfig/subscribe"), params={"key": "k"})
    assert (r.status_code, r.json()) == (500, {
        "errorCode": "ERR_APP_CHANNEL_NIL",
        "message": "app channel is not initialized. cannot subscribe to configuration updates"})
