"""Distributed lock through the real sidecar: the official Python SDK's `try_lock` / `unlock` (and `try_lock` as
a context manager) over gRPC, plain HTTP `POST /v1.0-alpha1/lock|unlock/<store>`, on `lock.redis` (the Redis on
this machine, Dapr's key layout) and `lock.in-memory`; Dapr's answers to bad input, an unknown store and a
sidecar without any lock store; the metadata API listing lock components. Every backend's behaviour in depth
(expiry, races, key prefixes) is in tests/conformance/lock.rs."""

from __future__ import annotations

import time

import grpc
import pytest
import requests

from conftest import REDIS_HOST, component, redis_available, redis_command, redis_delete_prefix, sdk_client, unique

pytestmark = pytest.mark.filterwarnings("ignore:The Distributed Lock API is an Alpha version")

STORES = ["redislock", "memlock"]


@pytest.fixture(scope="module")
def sc(sidecars):
    if not redis_available():
        pytest.skip(f"no Redis at {REDIS_HOST}")
    app_id = unique("locks")
    sc = sidecars.start(app_id, [
        component("redislock", "lock.redis", {"redisHost": REDIS_HOST}),
        component("memlock", "lock.in-memory"),
        component("shared", "lock.redis", {"redisHost": REDIS_HOST, "keyPrefix": "none"}),
    ])
    yield sc
    redis_delete_prefix(f"lock||{app_id}||")


@pytest.fixture(scope="module")
def bare(sidecars):
    """A sidecar with no lock store at all."""
    return sidecars.start(unique("nolocks"), [component("statestore", "state.in-memory")])


def lock(sc, store: str, body) -> requests.Response:
    return requests.post(sc.url(f"/v1.0-alpha1/lock/{store}"), json=body, timeout=10)


def unlock(sc, store: str, body) -> requests.Response:
    return requests.post(sc.url(f"/v1.0-alpha1/unlock/{store}"), json=body, timeout=10)


def error(resp: requests.Response) -> tuple[int, str, str]:
    body = resp.json()
    return resp.status_code, body["errorCode"], body["message"]


@pytest.mark.parametrize("store", STORES)
def test_sdk_try_lock_and_unlock(sc, store):
    from dapr.clients.grpc._response import UnlockResponseStatus

    res = unique("order")
    with sdk_client(sc) as c:
        first = c.try_lock(store, res, "alice", expiry_in_seconds=60)
        assert first.success and bool(first)
        assert not c.try_lock(store, res, "bob", expiry_in_seconds=60).success
        assert c.unlock(store, res, "bob").status == UnlockResponseStatus.lock_belongs_to_others
        assert c.unlock(store, res, "alice").status == UnlockResponseStatus.success
        assert c.unlock(store, res, "alice").status == UnlockResponseStatus.lock_does_not_exist
        assert c.try_lock(store, res, "bob", expiry_in_seconds=60).success


@pytest.mark.parametrize("store", STORES)
def test_sdk_context_manager_releases_the_lock(sc, store):
    res = unique("order")
    with sdk_client(sc) as c:
        with c.try_lock(store, res, "alice", expiry_in_seconds=60) as held:
            assert held
            with c.try_lock(store, res, "bob", expiry_in_seconds=60) as contender:
                assert not contender
            # The loser's exit unlocks as bob: the lock is alice's, so it stays.
            assert not c.try_lock(store, res, "carol", expiry_in_seconds=60)
        assert c.try_lock(store, res, "bob", expiry_in_seconds=60), "released when the with-block ended"


def test_sdk_errors_carry_daprs_codes(sc, bare):
    with sdk_client(sc) as c:
        with pytest.raises(grpc.RpcError) as e:
            c.try_lock("nope", "r", "o", expiry_in_seconds=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "lock store nope not found" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            c.unlock("redislock", "a||b", "o")
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "failed to release lock: input key/keyPrefix 'a||b' can't contain '||'" in e.value.details()
    with sdk_client(bare) as c:
        with pytest.raises(grpc.RpcError) as e:
            c.try_lock("redislock", "r", "o", expiry_in_seconds=5)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert e.value.details() == "lock store is not configured"


@pytest.mark.parametrize("store", STORES)
def test_http_lock_and_unlock(sc, store):
    res = unique("order")
    r = lock(sc, store, {"resourceId": res, "lockOwner": "alice", "expiryInSeconds": 60})
    assert (r.status_code, r.headers["content-type"], r.text) == (200, "application/json", '{"success":true}')
    assert lock(sc, store, {"resourceId": res, "lockOwner": "bob", "expiryInSeconds": 60}).json() == {"success": False}
    for owner, status in [("bob", 2), ("alice", 0), ("alice", 1)]:
        r = unlock(sc, store, {"resourceId": res, "lockOwner": owner})
        assert (r.status_code, r.json()) == (200, {"status": status}), owner
    # Proto field names and an expiry given as a string are read as Dapr reads protobuf JSON.
    r = lock(sc, store, {"resource_id": res, "lock_owner": "bob", "expiry_in_seconds": "60", "extra": 1})
    assert r.json() == {"success": True}
    # gRPC and HTTP share the locks.
    with sdk_client(sc) as c:
        assert not c.try_lock(store, res, "alice", expiry_in_seconds=60)


@pytest.mark.parametrize("store", STORES)
def test_http_expiry_frees_the_lock(sc, store):
    res = unique("order")
    assert lock(sc, store, {"resourceId": res, "lockOwner": "alice", "expiryInSeconds": 1}).json()["success"]
    assert not lock(sc, store, {"resourceId": res, "lockOwner": "bob", "expiryInSeconds": 60}).json()["success"]
    time.sleep(2.2)
    assert unlock(sc, store, {"resourceId": res, "lockOwner": "alice"}).json() == {"status": 1}
    assert lock(sc, store, {"resourceId": res, "lockOwner": "bob", "expiryInSeconds": 60}).json()["success"]


def test_redis_keys_are_daprs(sc):
    res = unique("order")
    assert lock(sc, "redislock", {"resourceId": res, "lockOwner": "alice", "expiryInSeconds": 60}).json()["success"]
    assert redis_command("GET", f"lock||{sc.app_id}||{res}") == b"alice"
    assert 0 < redis_command("TTL", f"lock||{sc.app_id}||{res}") <= 60
    assert lock(sc, "shared", {"resourceId": res, "lockOwner": "bob", "expiryInSeconds": 60}).json()["success"]
    assert redis_command("GET", f"lock||{res}") == b"bob", "keyPrefix none: no app id in the key"
    assert unlock(sc, "shared", {"resourceId": res, "lockOwner": "bob"}).json() == {"status": 0}
    assert unlock(sc, "redislock", {"resourceId": res, "lockOwner": "alice"}).json() == {"status": 0}
    assert redis_command("GET", f"lock||{sc.app_id}||{res}") is None


def test_http_bad_input_gets_daprs_errors(sc):
    bad = "ERR_MALFORMED_REQUEST"
    for body, want in [
        ({"resourceId": "r", "lockOwner": "o"}, (400, bad, "ExpiryInSeconds is not positive in lock store memlock")),
        ({"resourceId": "r", "lockOwner": "o", "expiryInSeconds": -3},
         (400, bad, "ExpiryInSeconds is not positive in lock store memlock")),
        ({"lockOwner": "o", "expiryInSeconds": 5}, (400, bad, "ResourceId is empty in lock store memlock")),
        ({"resourceId": "r", "expiryInSeconds": 5}, (400, bad, "LockOwner is empty in lock store memlock")),
        ({"resourceId": "a||b", "lockOwner": "o", "expiryInSeconds": 5},
         (400, "ERR_TRY_LOCK", "failed to try acquiring lock: input key/keyPrefix 'a||b' can't contain '||'")),
    ]:
        assert error(lock(sc, "memlock", body)) == want, body
    status, code, message = error(lock(sc, "memlock", {"resourceId": "r", "expiryInSeconds": 2**31}))
    assert (status, code) == (400, bad) and message.startswith("failed deserializing HTTP body"), message
    r = requests.post(sc.url("/v1.0-alpha1/lock/memlock"), data="{not json", timeout=10)
    assert error(r)[:2] == (400, bad)
    # An empty body is an empty request.
    r = requests.post(sc.url("/v1.0-alpha1/unlock/memlock"), timeout=10)
    assert error(r) == (400, bad, "ResourceId is empty in lock store memlock")
    # The store is looked up after the fields are checked.
    assert error(lock(sc, "nope", {"resourceId": "r", "lockOwner": "o", "expiryInSeconds": 5})) == (
        400, "ERR_LOCK_STORE_NOT_FOUND", "lock store nope not found")
    assert error(unlock(sc, "nope", {"resourceId": "r", "lockOwner": "o"})) == (
        400, "ERR_LOCK_STORE_NOT_FOUND", "lock store nope not found")
    assert error(unlock(sc, "nope", {"resourceId": "r"}))[1] == bad


def test_no_lock_store_configured(bare):
    r = lock(bare, "lockstore", {"resourceId": "r", "lockOwner": "o", "expiryInSeconds": 5})
    assert error(r) == (500, "ERR_LOCK_STORE_NOT_CONFIGURED", "lock store is not configured")
    r = unlock(bare, "lockstore", {"resourceId": "r", "lockOwner": "o"})
    assert error(r) == (500, "ERR_LOCK_STORE_NOT_CONFIGURED", "lock store is not configured")
    # Dapr checks the expiry even before it looks for lock stores.
    r = lock(bare, "lockstore", {"resourceId": "r", "lockOwner": "o"})
    assert error(r)[:2] == (400, "ERR_MALFORMED_REQUEST")


def test_metadata_lists_lock_stores(sc):
    components = requests.get(sc.url("/v1.0/metadata"), timeout=10).json()["components"]
    mine = {c["name"]: c["type"] for c in components if c["type"].startswith("lock.")}
    assert mine == {"redislock": "lock.redis", "memlock": "lock.in-memory", "shared": "lock.redis"}
    with sdk_client(sc) as c:
        listed = {comp.name: (comp.type, comp.version) for comp in c.get_metadata().registered_components}
    assert listed["redislock"] == ("lock.redis", "v1")
    assert listed["memlock"] == ("lock.in-memory", "v1")


def test_a_lock_store_that_cannot_start_stops_the_sidecar(fresh_sidecars):
    code, output = fresh_sidecars.run_to_exit(unique("badlock"), [
        component("bad", "lock.in-memory", {"keyPrefix": "a||b"})])
    assert code != 0
    assert "can't contain '||'" in output, output
