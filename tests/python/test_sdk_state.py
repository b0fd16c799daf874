"""State API through the official Dapr Python SDK (gRPC), against in-memory, sqlite and redis stores."""

from __future__ import annotations

import json
import warnings

import grpc
import pytest
from dapr.clients.grpc._request import TransactionalStateOperation, TransactionOperationType
from dapr.clients.grpc._state import Concurrency, StateItem, StateOptions

from conftest import REDIS_HOST, component, poll_until, sdk_client, unique

STORES = ["mem", "sqlite", "redis"]
QUERYABLE = ["mem", "sqlite"]

FIRST_WRITE = StateOptions(concurrency=Concurrency.first_write)


@pytest.fixture(scope="module")
def sidecar(sidecars, redis_prefix, tmp_path_factory):
    db = tmp_path_factory.mktemp("sqlite") / "state.db"
    return sidecars.start(
        "sdkstate",
        [
            component("mem", "state.in-memory"),
            component("sqlite", "state.sqlite", {"connectionString": str(db)}),
            component("redis", "state.redis", {"redisHost": REDIS_HOST, "keyPrefix": redis_prefix}),
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


# ---- save / get / etags -------------------------------------------------------------------------------


@pytest.mark.parametrize("store", STORES)
def test_save_then_get_returns_data_and_etag(client, store):
    key = unique()
    client.save_state(store, key, '{"a": 1}')
    resp = client.get_state(store, key)
    assert resp.data == b'{"a": 1}'
    assert resp.etag, "a saved item has an etag"

    client.save_state(store, key, b"\x00binary\xff")
    again = client.get_state(store, key)
    assert again.data == b"\x00binary\xff"
    assert again.etag and again.etag != resp.etag, "every write issues a new etag"


@pytest.mark.parametrize("store", STORES)
def test_get_missing_key_is_empty(client, store):
    resp = client.get_state(store, unique("missing"))
    assert resp.data == b""
    assert resp.etag == ""


@pytest.mark.parametrize("store", STORES)
def test_save_with_current_etag_succeeds_and_stale_etag_is_aborted(client, store):
    key = unique()
    client.save_state(store, key, "v1")
    etag1 = client.get_state(store, key).etag

    client.save_state(store, key, "v2", etag=etag1)
    resp = client.get_state(store, key)
    assert resp.data == b"v2"
    etag2 = resp.etag
    assert etag2 != etag1

    with pytest.raises(grpc.RpcError) as e:
        client.save_state(store, key, "v3", etag=etag1)
    assert code_of(e) == grpc.StatusCode.ABORTED
    assert "etag" in e.value.details().lower()
    assert client.get_state(store, key).data == b"v2", "a rejected write changes nothing"

    with pytest.raises(grpc.RpcError) as e:
        client.save_state(store, unique("never-saved"), "x", etag=etag2)
    assert code_of(e) == grpc.StatusCode.ABORTED, "an etag for a missing key is a mismatch"


@pytest.mark.parametrize("store", STORES)
def test_first_write_concurrency(client, store):
    key = unique()
    client.save_state(store, key, "first", options=FIRST_WRITE)  # creating needs no etag
    etag = client.get_state(store, key).etag

    with pytest.raises(grpc.RpcError) as e:
        client.save_state(store, key, "second", options=FIRST_WRITE)
    assert code_of(e) == grpc.StatusCode.ABORTED
    assert client.get_state(store, key).data == b"first"

    client.save_state(store, key, "second", etag=etag, options=FIRST_WRITE)
    assert client.get_state(store, key).data == b"second"

    # last-write (the default) overwrites without an etag
    client.save_state(store, key, "third")
    assert client.get_state(store, key).data == b"third"


@pytest.mark.parametrize("store", STORES)
def test_delete_with_etag(client, store):
    key = unique()
    client.save_state(store, key, "a")
    stale = client.get_state(store, key).etag
    client.save_state(store, key, "b")
    current = client.get_state(store, key).etag

    with pytest.raises(grpc.RpcError) as e:
        client.delete_state(store, key, etag=stale)
    assert code_of(e) == grpc.StatusCode.ABORTED
    assert client.get_state(store, key).data == b"b"

    client.delete_state(store, key, etag=current)
    assert client.get_state(store, key).data == b""

    # deleting without an etag always works, also for a key that is gone
    client.save_state(store, key, "c")
    client.delete_state(store, key)
    client.delete_state(store, key)
    assert client.get_state(store, key).data == b""


# ---- bulk ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("store", STORES)
def test_bulk_save_and_bulk_get_keep_order_and_report_missing_keys(client, store):
    k1, k2, k3, missing = unique("b1"), unique("b2"), unique("b3"), unique("nope")
    client.save_bulk_state(store, [StateItem(k1, "one"), StateItem(k2, "two"), StateItem(k3, "three")])

    resp = client.get_bulk_state(store, [k3, missing, k1, k2], parallelism=2)
    assert [i.key for i in resp.items] == [k3, missing, k1, k2]
    by_key = {i.key: i for i in resp.items}
    assert by_key[k3].data == b"three" and by_key[k1].data == b"one" and by_key[k2].data == b"two"
    assert all(by_key[k].etag for k in (k1, k2, k3))
    assert by_key[k1].etag == client.get_state(store, k1).etag
    assert by_key[missing].data == b"" and by_key[missing].etag == "" and by_key[missing].error == ""


@pytest.mark.parametrize("store", STORES)
def test_bulk_save_with_one_stale_etag_is_aborted(client, store):
    k1, k2 = unique("b1"), unique("b2")
    client.save_state(store, k1, "x")
    stale = client.get_state(store, k1).etag
    client.save_state(store, k1, "y")
    with pytest.raises(grpc.RpcError) as e:
        client.save_bulk_state(store, [StateItem(k1, "z", etag=stale), StateItem(k2, "new")])
    # Dapr: a bulk save whose only failures are etag errors is an etag mismatch (Aborted).
    assert code_of(e) == grpc.StatusCode.ABORTED
    assert client.get_state(store, k1).data == b"y"


# ---- transactions -------------------------------------------------------------------------------------


@pytest.mark.parametrize("store", STORES)
def test_transaction_is_all_or_nothing(client, store):
    x, y = unique("tx-x"), unique("tx-y")
    client.save_state(store, y, "y0")
    stale = client.get_state(store, y).etag
    client.save_state(store, y, "y1")
    current = client.get_state(store, y).etag

    ops_stale = [
        TransactionalStateOperation(key=x, data="x1"),
        TransactionalStateOperation(key=y, etag=stale, operation_type=TransactionOperationType.delete),
    ]
    with pytest.raises(grpc.RpcError) as e:
        client.execute_state_transaction(store, ops_stale)
    # Dapr reports every failed Multi(), etag conflicts included, as Internal (ERR_STATE_TRANSACTION).
    assert code_of(e) == grpc.StatusCode.INTERNAL
    assert "transaction" in e.value.details()
    assert client.get_state(store, x).data == b"", "the upsert of a failed transaction is not applied"
    assert client.get_state(store, y).data == b"y1", "the delete of a failed transaction is not applied"
    assert client.get_state(store, y).etag == current

    ops_ok = [
        TransactionalStateOperation(key=x, data="x1"),
        TransactionalStateOperation(key=y, etag=current, operation_type=TransactionOperationType.delete),
    ]
    client.execute_state_transaction(store, ops_ok)
    assert client.get_state(store, x).data == b"x1"
    assert client.get_state(store, y).data == b""


@pytest.mark.parametrize("store", STORES)
def test_transaction_upsert_with_stale_etag_rolls_back_earlier_ops(client, store):
    a, b = unique("tx-a"), unique("tx-b")
    client.save_state(store, a, "a0")
    client.save_state(store, b, "b0")
    stale_b = client.get_state(store, b).etag
    client.save_state(store, b, "b1")
    with pytest.raises(grpc.RpcError):
        client.execute_state_transaction(store, [
            TransactionalStateOperation(key=a, operation_type=TransactionOperationType.delete),
            TransactionalStateOperation(key=b, data="b2", etag=stale_b),
        ])
    assert client.get_state(store, a).data == b"a0"
    assert client.get_state(store, b).data == b"b1"


# ---- TTL ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("store", STORES)
def test_ttl_expires_item(client, store):
    key, keep = unique("ttl"), unique("keep")
    client.save_state(store, key, "short-lived", state_metadata={"ttlInSeconds": "1"})
    client.save_state(store, keep, "forever", state_metadata={"ttlInSeconds": "-1"})
    assert client.get_state(store, key).data == b"short-lived"
    assert poll_until(lambda: client.get_state(store, key).data == b"", timeout=5.0), \
        "an item saved with ttlInSeconds=1 is gone within a few seconds"
    assert client.get_state(store, keep).data == b"forever"
    bulk = client.get_bulk_state(store, [key])
    assert bulk.items[0].data == b""


@pytest.mark.parametrize("store", STORES)
def test_invalid_ttl_is_refused(client, store):
    key = unique("badttl")
    with pytest.raises(grpc.RpcError) as e:
        client.save_state(store, key, "x", state_metadata={"ttlInSeconds": "soon"})
    assert "ttlInSeconds" in e.value.details()
    assert client.get_state(store, key).data == b""


# ---- query --------------------------------------------------------------------------------------------


def _query(client, store, q: dict):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "The State Store Query API is an Alpha version"
        return client.query_state(store, json.dumps(q))


@pytest.fixture(scope="module")
def query_rows(client):
    """Five JSON documents per queryable store, tagged with a run id no other test uses."""
    run = unique("run")
    rows = {}
    for store in QUERYABLE:
        keys = []
        for n, color in enumerate(["red", "blue", "green", "red", "blue"]):
            key = f"{run}-{n}"
            client.save_state(store, key, json.dumps({"run": run, "n": n, "color": color,
                                                      "nested": {"rank": 10 - n}}))
            keys.append(key)
        rows[store] = keys
    return run, rows


@pytest.mark.parametrize("store", QUERYABLE)
def test_query_filter_eq_and_in(client, store, query_rows):
    run, rows = query_rows
    resp = _query(client, store, {"filter": {"EQ": {"run": run}}})
    assert sorted(r.key for r in resp.results) == sorted(rows[store]), "keys come back without the app prefix"
    assert all(r.json()["run"] == run for r in resp.results)
    assert all(r.etag for r in resp.results)

    resp = _query(client, store, {"filter": {"AND": [{"EQ": {"run": run}}, {"IN": {"color": ["red", "green"]}}]}})
    assert sorted(r.json()["n"] for r in resp.results) == [0, 2, 3]

    resp = _query(client, store, {"filter": {"EQ": {"run": "no-such-run"}}})
    assert list(resp.results) == []


@pytest.mark.parametrize("store", QUERYABLE)
def test_query_sort(client, store, query_rows):
    run, _ = query_rows
    resp = _query(client, store, {"filter": {"EQ": {"run": run}}, "sort": [{"key": "n", "order": "DESC"}]})
    assert [r.json()["n"] for r in resp.results] == [4, 3, 2, 1, 0]
    resp = _query(client, store, {"filter": {"EQ": {"run": run}}, "sort": [{"key": "nested.rank"}]})
    assert [r.json()["n"] for r in resp.results] == [4, 3, 2, 1, 0]
    resp = _query(client, store, {"filter": {"EQ": {"run": run}},
                                  "sort": [{"key": "color", "order": "ASC"}, {"key": "n", "order": "DESC"}]})
    assert [r.json()["n"] for r in resp.results] == [4, 1, 2, 3, 0]


@pytest.mark.parametrize("store", QUERYABLE)
def test_query_paging_with_limit_and_token(client, store, query_rows):
    run, _ = query_rows
    base = {"filter": {"EQ": {"run": run}}, "sort": [{"key": "n"}]}
    seen, token, pages = [], None, 0
    while True:
        page = {"limit": 2}
        if token:
            page["token"] = token
        resp = _query(client, store, {**base, "page": page})
        pages += 1
        assert len(resp.results) <= 2
        seen += [r.json()["n"] for r in resp.results]
        token = resp.token
        if not token:
            break
        assert pages < 10, "paging must terminate"
    assert seen == [0, 1, 2, 3, 4]
    assert pages == 3


@pytest.mark.parametrize("store", QUERYABLE)
def test_query_with_malformed_body_fails(client, store):
    with pytest.raises(grpc.RpcError) as e:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            client.query_state(store, "{not json")
    assert code_of(e) == grpc.StatusCode.INTERNAL
    assert "query" in e.value.details()


def test_query_on_redis_is_an_error(client):
    with pytest.raises(grpc.RpcError) as e:
        _query(client, "redis", {"filter": {"EQ": {"a": 1}}})
    # Dapr: Internal either way (ERR_STATE_STORE_NOT_SUPPORTED or ERR_STATE_QUERY).
    assert code_of(e) == grpc.StatusCode.INTERNAL


# ---- invalid requests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("store", STORES)
def test_key_with_separator_is_invalid(client, store):
    with pytest.raises(grpc.RpcError) as e:
        client.save_state(store, "bad||key", "x")
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT
    assert "can't contain '||'" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        client.get_state(store, "bad||key")
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        client.delete_state(store, "bad||key")
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        client.get_bulk_state(store, ["fine", "bad||key"])
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("call", ["get", "save", "delete", "bulk", "transaction", "query"])
def test_unknown_store_is_invalid_argument(client, call):
    with pytest.raises(grpc.RpcError) as e:
        if call == "get":
            client.get_state("nope", "k")
        elif call == "save":
            client.save_state("nope", "k", "v")
        elif call == "delete":
            client.delete_state("nope", "k")
        elif call == "bulk":
            client.get_bulk_state("nope", ["k"])
        elif call == "transaction":
            client.execute_state_transaction("nope", [TransactionalStateOperation(key="k", data="v")])
        else:
            _query(client, "nope", {})
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == "state store nope is not found"


def test_state_errors_carry_dapr_error_details(client):
    with pytest.raises(grpc.RpcError) as e:
        client.get_state("nope", "k")
    assert e.value.error_code() == "DAPR_STATE_NOT_FOUND"
    with pytest.raises(grpc.RpcError) as e:
        client.save_state("mem", "bad||key", "x")
    assert e.value.error_code() == "DAPR_STATE_ILLEGAL_KEY"
    details = e.value.status_details()
    assert details.bad_request["field_violations"][0]["field"] == "bad||key"
    assert details.resource_info["resource_name"] == "mem"


def test_etag_conflict_carries_error_info(client):
    key = unique()
    client.save_state("mem", key, "a")
    stale = client.get_state("mem", key).etag
    client.save_state("mem", key, "b")
    with pytest.raises(grpc.RpcError) as e:
        client.save_state("mem", key, "c", etag=stale)
    assert e.value.code() == grpc.StatusCode.ABORTED
    assert e.value.error_code() == "ERR_STATE_SAVE"


def test_empty_key_is_invalid_argument(client):
    with pytest.raises(grpc.RpcError) as e:
        client.save_state("mem", "", "v")
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == "state key cannot be empty"


def test_stores_are_isolated_from_each_other(client):
    key = unique("iso")
    client.save_state("mem", key, "in-mem")
    assert client.get_state("sqlite", key).data == b""
    assert client.get_state("redis", key).data == b""


# ---- limits and metrics -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_sidecar(sidecars):
    return sidecars.start("sdksmall", [component("mem", "state.in-memory")], extra_args=["--max-body-size", "1Ki"])


def test_grpc_message_larger_than_max_body_size_is_refused(small_sidecar):
    with sdk_client(small_sidecar) as c:
        c.save_state("mem", "small", "x" * 100)
        with pytest.raises(grpc.RpcError):
            c.save_state("mem", "big", "x" * 4096)
        assert c.get_state("mem", "big").data == b""
        assert c.get_state("mem", "small").data == b"x" * 100


def test_grpc_oversized_message_code_matches_dapr(small_sidecar):
    with sdk_client(small_sidecar) as c:
        with pytest.raises(grpc.RpcError) as e:
            c.save_state("mem", "big", "x" * 4096)
        assert code_of(e) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_grpc_server_metrics(sidecar, client):
    import requests

    client.get_state("mem", unique())
    with pytest.raises(grpc.RpcError):
        client.get_state("nope", "k")
    text = requests.get(f"http://127.0.0.1:{sidecar.metrics_port}/", timeout=10).text
    lines = [ln for ln in text.splitlines() if ln.startswith("dapr_grpc_io_server_completed_rpcs{")]
    get_state = [ln for ln in lines if 'grpc_server_method="/dapr.proto.runtime.v1.Dapr/GetState"' in ln]
    assert any('grpc_server_status="OK"' in ln and 'app_id="sdkstate"' in ln for ln in get_state), lines
    assert any('grpc_server_status="InvalidArgument"' in ln for ln in get_state), lines
