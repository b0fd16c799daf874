"""SQL state stores through the official Dapr Python SDK (gRPC) and plain HTTP: state.postgresql v1 (jsonb, query
API), v2 (bytea) and state.mysql, against PostgreSQL on 127.0.0.1:5432 and MariaDB/MySQL on 127.0.0.1:3306.
Every run uses tables of its own."""

from __future__ import annotations

import json
import subprocess
import uuid
import warnings

import grpc
import pytest
import requests
from dapr.clients.grpc._request import TransactionalStateOperation, TransactionOperationType
from dapr.clients.grpc._state import Concurrency, StateItem, StateOptions

from conftest import component, poll_until, sdk_client, unique

PG = "host=127.0.0.1 port=5432 user=postgres dbname=test"
MYSQL = "root:@tcp(127.0.0.1:3306)/?parseTime=true"
STORES = ["pg", "pgv2", "mysql"]
RUN = "py" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="module", autouse=True)
def drop_tables_afterwards():
    """The run's tables go when the module is done (best effort: the command-line clients may be missing)."""
    yield
    tables = f"{RUN}_v1, {RUN}_state, {RUN}_meta"
    for cmd in (["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-c", f"DROP TABLE IF EXISTS {tables}"],
                ["mariadb", "-h", "127.0.0.1", "-uroot", "test", "-e", f"DROP TABLE IF EXISTS {RUN}_m, {RUN}_meta"]):
        try:
            subprocess.run(cmd, capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            pass


@pytest.fixture(scope="module")
def sidecar(sidecars):
    meta = f"{RUN}_meta"
    return sidecars.start(
        "sqlstate",
        [
            component("pg", "state.postgresql",
                      {"connectionString": PG, "tableName": f"{RUN}_v1", "metadataTableName": meta,
                       "cleanupInterval": "1s"}),
            component("pgv2", "state.postgresql",
                      {"connectionString": PG, "tablePrefix": f"{RUN}_", "metadataTableName": meta},
                      version="v2"),
            component("mysql", "state.mysql",
                      {"connectionString": MYSQL, "schemaName": "test", "tableName": f"{RUN}_m",
                       "metadataTableName": meta}),
        ],
    )


@pytest.fixture(scope="module")
def client(sidecar):
    c = sdk_client(sidecar)
    yield c
    c.close()


def code_of(excinfo) -> grpc.StatusCode:
    err = excinfo.value
    assert isinstance(err, grpc.RpcError), repr(err)
    return err.code()


def query(client, store, q):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "The State Store Query API is an Alpha version"
        return client.query_state(store, q if isinstance(q, str) else json.dumps(q))


@pytest.mark.parametrize("store", STORES)
def test_save_get_delete_with_etags(client, store):
    key = unique()
    client.save_state(store, key, '{"a": 1}')
    first = client.get_state(store, key)
    assert json.loads(first.data) == {"a": 1}
    assert first.etag

    client.save_state(store, key, b"\x00binary\xff", etag=first.etag)
    second = client.get_state(store, key)
    assert second.data == b"\x00binary\xff"
    assert second.etag and second.etag != first.etag

    with pytest.raises(grpc.RpcError) as e:
        client.save_state(store, key, "stale", etag=first.etag)
    assert code_of(e) == grpc.StatusCode.ABORTED
    with pytest.raises(grpc.RpcError) as e:
        client.delete_state(store, key, etag=first.etag)
    assert code_of(e) == grpc.StatusCode.ABORTED
    assert client.get_state(store, key).data == b"\x00binary\xff", "rejected writes change nothing"

    client.delete_state(store, key, etag=second.etag)
    assert client.get_state(store, key).data == b""


@pytest.mark.parametrize("store", STORES)
def test_first_write(client, store):
    key = unique()
    fw = StateOptions(concurrency=Concurrency.first_write)
    client.save_state(store, key, "one", options=fw)
    with pytest.raises(grpc.RpcError) as e:
        client.save_state(store, key, "two", options=fw)
    assert code_of(e) == grpc.StatusCode.ABORTED
    assert client.get_state(store, key).data == b"one"


@pytest.mark.parametrize("store", STORES)
def test_bulk_save_and_get(client, store):
    keys = [unique() for _ in range(3)]
    client.save_bulk_state(store, [StateItem(key=k, value=f"v{i}") for i, k in enumerate(keys)])
    got = client.get_bulk_state(store, keys + [unique("missing")]).items
    assert [(i.key, i.data) for i in got] == [(k, f"v{n}".encode()) for n, k in enumerate(keys)] + [
        (got[3].key, b"")]
    assert all(i.etag for i in got[:3])


@pytest.mark.parametrize("store", STORES)
def test_transaction_is_all_or_nothing(client, store):
    a, b, c = unique("a"), unique("b"), unique("c")
    client.save_state(store, a, "old-a")
    client.execute_state_transaction(store, [
        TransactionalStateOperation(key=b, data="new-b"),
        TransactionalStateOperation(key=a, operation_type=TransactionOperationType.delete),
    ])
    assert client.get_state(store, a).data == b""
    assert client.get_state(store, b).data == b"new-b"
    etag = client.get_state(store, b).etag
    client.save_state(store, b, "newer-b")
    with pytest.raises(grpc.RpcError) as e:
        client.execute_state_transaction(store, [
            TransactionalStateOperation(key=c, data="never"),
            TransactionalStateOperation(key=b, data="stale", etag=etag),
        ])
    assert code_of(e) == grpc.StatusCode.INTERNAL
    assert client.get_state(store, c).data == b"", "nothing of a failed transaction applies"
    assert client.get_state(store, b).data == b"newer-b"


@pytest.mark.parametrize("store", STORES)
def test_ttl_expires(client, sidecar, store):
    key = unique("ttl")
    client.save_state(store, key, "brief", state_metadata={"ttlInSeconds": "1"})
    assert client.get_state(store, key).data == b"brief"
    r = requests.get(sidecar.url(f"/v1.0/state/{store}/{key}"), timeout=10)
    assert r.headers.get("metadata.ttlExpireTime", "").endswith("Z"), r.headers
    assert poll_until(lambda: client.get_state(store, key).data == b"", timeout=5)


@pytest.fixture(scope="module")
def people(client):
    run = unique("run")
    for n, color in enumerate(["red", "blue", "green", "red", "blue"]):
        # contentType JSON: as with Dapr, the document is stored as JSON, which the query API reads.
        client.save_state("pg", f"{run}-{n}", json.dumps({"run": run, "n": n, "color": color,
                                                           "nested": {"rank": 10 - n}}),
                          state_metadata={"contentType": "application/json"})
    return run


def test_query_filter_sort_and_pages_on_postgresql(client, people):
    run = people
    resp = query(client, "pg", {"filter": {"AND": [{"EQ": {"run": run}}, {"IN": {"color": ["red", "green"]}}]},
                                "sort": [{"key": "nested.rank", "order": "ASC"}]})
    assert [r.json()["n"] for r in resp.results] == [3, 2, 0]
    assert all(r.etag for r in resp.results)
    assert all(r.key.startswith(run) for r in resp.results), "keys come back without the app prefix"

    seen, token, pages = [], None, 0
    while True:
        page = {"limit": 2, **({"token": token} if token else {})}
        resp = query(client, "pg", {"filter": {"EQ": {"run": run}}, "sort": [{"key": "n", "order": "DESC"}],
                                    "page": page})
        pages += 1
        seen += [r.json()["n"] for r in resp.results]
        token = resp.token
        if not token or pages > 5:
            break
    assert seen == [4, 3, 2, 1, 0]
    assert pages == 3


@pytest.mark.parametrize("store", ["pgv2", "mysql"])
def test_query_on_stores_without_a_query_engine_is_an_error(client, store):
    with pytest.raises(grpc.RpcError) as e:
        query(client, store, {"filter": {"EQ": {"a": 1}}})
    assert code_of(e) == grpc.StatusCode.INTERNAL
    assert "does not support querying" in e.value.details()


# ---- plain HTTP: bad input and the metadata API --------------------------------------------------------


def assert_error(r, status, code, contains=""):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body["errorCode"] == code, body
    assert contains in body["message"], body


def test_malformed_query_body_is_dapr_s_query_error(sidecar):
    # Dapr answers a query body it cannot parse with ERR_STATE_QUERY (500), naming the parse failure.
    r = requests.post(sidecar.url("/v1.0-alpha1/state/pg/query"), data="{not json", timeout=10)
    assert_error(r, 500, "ERR_STATE_QUERY", contains="failed to parse JSON query body")
    r = requests.post(sidecar.url("/v1.0-alpha1/state/pg/query"),
                      json={"filter": {"LIKE": {"a": 1}}}, timeout=10)
    assert_error(r, 500, "ERR_STATE_QUERY", contains="LIKE")
    r = requests.post(sidecar.url("/v1.0-alpha1/state/mysql/query"), json={}, timeout=10)
    assert_error(r, 500, "ERR_STATE_STORE_NOT_SUPPORTED")


def test_bad_etags_and_ttls_over_http(sidecar):
    save = lambda store, body: requests.post(sidecar.url(f"/v1.0/state/{store}"), json=body, timeout=10)  # noqa: E731
    key = unique()
    assert save("pg", [{"key": key, "value": 1}]).status_code == 204
    # PostgreSQL v1 etags are transaction ids: anything else is invalid (400), as in Dapr.
    assert_error(save("pg", [{"key": key, "value": 2, "etag": "abc"}]), 400, "ERR_STATE_SAVE",
                 contains="invalid etag value")
    # v2 and MySQL etags are UUIDs: an unknown one only mismatches (409).
    for store in ["pgv2", "mysql"]:
        assert save(store, [{"key": key, "value": 1}]).status_code == 204
        assert_error(save(store, [{"key": key, "value": 2, "etag": "abc"}]), 409, "ERR_STATE_SAVE")
        assert_error(save(store, [{"key": key, "value": 2, "metadata": {"ttlInSeconds": "soon"}}]),
                     500, "ERR_STATE_SAVE", contains="ttlInSeconds")
    r = requests.get(sidecar.url(f"/v1.0/state/pg/{key}"), timeout=10)
    assert (r.status_code, r.json()) == (200, 1)


def test_metadata_api_reports_each_store_s_capabilities(sidecar):
    comps = {c["name"]: c for c in requests.get(sidecar.url("/v1.0/metadata"), timeout=10).json()["components"]}
    assert set(comps["pg"]["capabilities"]) == {"ETAG", "TRANSACTIONAL", "QUERY_API", "TTL", "ACTOR"}
    assert set(comps["pgv2"]["capabilities"]) == {"ETAG", "TRANSACTIONAL", "TTL", "ACTOR"}
    assert set(comps["mysql"]["capabilities"]) == {"ETAG", "TRANSACTIONAL", "TTL", "ACTOR"}
    assert (comps["pg"]["type"], comps["pgv2"]["version"], comps["mysql"]["type"]) == (
        "state.postgresql", "v2", "state.mysql")
