"""Resiliency for components: `spec.targets.components.<name>.outbound` wraps every state store operation of that
component in the named timeout / retry / circuit-breaker policies (https://docs.dapr.io/operations/resiliency/).

Each sidecar reaches the real Redis through its own `RedisProxy`, a TCP proxy the test can cut (every live
connection closed, new ones reset at once) and restore. Sidecar `guarded` has a constant retry policy on its
store: a call made during a short outage waits it out and succeeds. Sidecar `unguarded` has no Resiliency: the
same call fails with Dapr's error while Redis is still unreachable, and works again once it is back.

No assertion here is about wall-clock durations: the order of events is read from the proxy (was it still cut
when the answer came, did the sidecar open a new connection after the restore). Every wait is bounded."""

from __future__ import annotations

import json
import selectors
import socket
import struct
import threading
import uuid
from typing import Iterator, Optional

import pytest
import requests

from conftest import REDIS_HOST, component, poll_until, redis_command

OUTAGE_SECONDS = 2.5
# 40 retries 200ms apart: the retry budget (~8s plus the attempts) comfortably covers the outage.
RESILIENCY = {
    "apiVersion": "dapr.io/v1alpha1",
    "kind": "Resiliency",
    "metadata": {"name": "component-policies"},
    "spec": {
        "policies": {
            "retries": {"outage": {"policy": "constant", "duration": "200ms", "maxRetries": 40}},
        },
        "targets": {"components": {"guarded": {"outbound": {"retry": "outage"}}}},
    },
}
# Long enough for the retry budget above, short enough that a hung sidecar fails the test instead of the run.
REQUEST_TIMEOUT = 20.0
RECOVERY_TIMEOUT = 15.0


# --------------------------------------------------------------------------------------------------------
# A TCP proxy to Redis that can be cut and restored
# --------------------------------------------------------------------------------------------------------


class _Pipe:
    """One proxied connection: the client's socket and the upstream one."""

    def __init__(self, client: socket.socket, upstream: socket.socket):
        self.client, self.upstream = client, upstream

    def shut(self) -> None:
        """Ends both directions; the pump thread notices (EOF / error) and closes the sockets itself, so no
        file descriptor is closed while another thread may be selecting on it."""
        for s in (self.client, self.upstream):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _reset(sock: socket.socket) -> None:
    """Closes with RST (SO_LINGER 0): the peer sees `connection reset`, as when a server goes away."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class RedisProxy:
    """Forwards 127.0.0.1:<port> to `upstream`, one thread per connection.

    `cut()` closes every live connection and, until `restore()`, resets every new one as soon as it is accepted.
    `is_cut` tells the current state; `accepted` counts connections forwarded to Redis (never while cut), so a
    growing `accepted` after a cut proves a new connection was made after the restore. `close()` stops
    everything and returns the threads still alive after a bounded join (none, normally)."""

    IO_TIMEOUT = 5.0
    POLL = 0.1

    def __init__(self, upstream: str = REDIS_HOST):
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self._lock = threading.Lock()
        self._cut = False
        self._closing = threading.Event()
        self._pipes: set[_Pipe] = set()
        self._threads: list[threading.Thread] = []
        self.accepted = 0
        self.refused = 0
        self.restores = 0
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(self.POLL)
        self.port = self._listener.getsockname()[1]
        self._spawn(self._accept_loop, "accept")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def is_cut(self) -> bool:
        with self._lock:
            return self._cut

    def live_connections(self) -> int:
        with self._lock:
            return len(self._pipes)

    def cut(self) -> int:
        """Starts an outage; returns how many live connections it closed."""
        with self._lock:
            self._cut = True
            pipes = list(self._pipes)
        for p in pipes:
            p.shut()
        return len(pipes)

    def restore(self) -> None:
        """Ends the outage (no-op when not cut)."""
        with self._lock:
            if self._cut:
                self._cut = False
                self.restores += 1

    def close(self) -> list[threading.Thread]:
        self._closing.set()
        with self._lock:
            pipes = list(self._pipes)
        for p in pipes:
            p.shut()
        for t in list(self._threads):
            t.join(timeout=self.IO_TIMEOUT + 1)
        self._listener.close()
        return [t for t in self._threads if t.is_alive()]

    # internals

    def _spawn(self, target, name: str, *args) -> None:
        t = threading.Thread(target=target, args=args, name=f"redis-proxy-{self.port}-{name}", daemon=True)
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()]
            self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if self.is_cut or self._closing.is_set():
                with self._lock:
                    self.refused += 1
                _reset(client)
                continue
            self._spawn(self._pump, "conn", client)

    def _pump(self, client: socket.socket) -> None:
        client.settimeout(self.IO_TIMEOUT)
        try:
            upstream = socket.create_connection(self.upstream, timeout=self.IO_TIMEOUT)
        except OSError:
            _reset(client)
            return
        pipe = _Pipe(client, upstream)
        with self._lock:
            admitted = not self._cut and not self._closing.is_set()
            if admitted:
                self._pipes.add(pipe)
                self.accepted += 1
            else:
                self.refused += 1
        if not admitted:
            _reset(client)
            upstream.close()
            return
        sel = selectors.DefaultSelector()
        try:
            sel.register(client, selectors.EVENT_READ, upstream)
            sel.register(upstream, selectors.EVENT_READ, client)
            while not self._closing.is_set():
                for key, _ in sel.select(timeout=self.POLL):
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            pass
        finally:
            sel.close()
            with self._lock:
                self._pipes.discard(pipe)
            client.close()
            upstream.close()


class Outage:
    """Cuts `proxy` now and restores it from a timer thread after `seconds` (or on exit, whichever is first)."""

    def __init__(self, proxy: RedisProxy, seconds: float):
        self.proxy, self.seconds = proxy, seconds
        self.closed_connections = 0
        self._timer: Optional[threading.Timer] = None

    def __enter__(self) -> "Outage":
        self.closed_connections = self.proxy.cut()
        self._timer = threading.Timer(self.seconds, self.proxy.restore)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._timer is not None
        self._timer.cancel()
        self._timer.join(timeout=5)
        self.proxy.restore()


# --------------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def proxies(redis_prefix) -> Iterator[dict[str, RedisProxy]]:
    """One proxy per sidecar, independent of each other. Torn down after the sidecars (requested first by them)."""
    made = {name: RedisProxy() for name in ("guarded", "unguarded")}
    yield made
    leaked = [t.name for p in made.values() for t in p.close()]
    assert not leaked, f"proxy threads still running after close: {leaked}"


def redis_store(name: str, proxy: RedisProxy, prefix: str) -> dict:
    # maxRetries/dialTimeout: the store's own connection settings stay at their defaults on purpose; what differs
    # between the two sidecars is the Resiliency resource only.
    return component(name, "state.redis", {"redisHost": proxy.address, "keyPrefix": prefix})


@pytest.fixture(scope="module")
def guarded(proxies, sidecars, redis_prefix):
    return sidecars.start("guarded-app", [redis_store("guarded", proxies["guarded"], redis_prefix)],
                          raw_files={"resiliency.yaml": json.dumps(RESILIENCY, indent=2)})


@pytest.fixture(scope="module")
def unguarded(proxies, sidecars, redis_prefix):
    return sidecars.start("unguarded-app", [redis_store("unguarded", proxies["unguarded"], redis_prefix)])


# --------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------


def save(sc, store: str, key: str, value, timeout: float = REQUEST_TIMEOUT) -> requests.Response:
    return requests.post(sc.url(f"/v1.0/state/{store}"), json=[{"key": key, "value": value}], timeout=timeout)


def load(sc, store: str, key: str, timeout: float = REQUEST_TIMEOUT) -> requests.Response:
    return requests.get(sc.url(f"/v1.0/state/{store}/{key}"), timeout=timeout)


def reads_back(sc, store: str, key: str, value) -> bool:
    try:
        r = load(sc, store, key, timeout=5)
    except requests.RequestException:
        return False
    return r.status_code == 200 and r.json() == value


def describe(r: requests.Response, sc) -> str:
    return f"{r.status_code} {r.text}\nsidecar stderr (tail):\n{sc.stderr()[-4000:]}"


# --------------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------------


def test_proxy_forwards_cuts_and_restores(redis_prefix):
    """The harness itself: forwarding, an outage that resets connections, and the way back."""
    proxy = RedisProxy()
    try:
        host, port = proxy.address.rsplit(":", 1)

        def ping() -> bytes:
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(b"*1\r\n$4\r\nPING\r\n")
                return s.recv(64)

        assert ping() == b"+PONG\r\n"
        held = socket.create_connection((host, int(port)), timeout=5)
        try:
            assert poll_until(lambda: proxy.live_connections() == 1, timeout=5)
            assert proxy.cut() == 1 and proxy.is_cut
            held.settimeout(5)
            try:
                closed = held.recv(64) == b""  # EOF ...
            except ConnectionResetError:
                closed = True  # ... or a reset, depending on timing: both mean the connection is gone
            assert closed, "a live connection is closed by the cut"
        finally:
            held.close()
        try:
            answer = ping()
        except OSError:
            answer = None  # reset at once while cut ...
        assert answer in (None, b""), answer  # ... or at least closed without an answer
        assert proxy.refused >= 1
        proxy.restore()
        assert not proxy.is_cut and proxy.restores == 1
        assert ping() == b"+PONG\r\n"
    finally:
        assert proxy.close() == []


def test_with_a_retry_policy_calls_ride_out_a_redis_outage(guarded, proxies, redis_prefix):
    proxy = proxies["guarded"]
    key, value = f"kept-{uuid.uuid4().hex[:8]}", {"saved": "before the outage"}
    r = save(guarded, "guarded", key, value)
    assert r.status_code == 204, describe(r, guarded)
    assert proxy.accepted >= 1, "the store reaches Redis through the proxy"

    # A read during the outage waits for Redis to come back and answers with the value.
    with Outage(proxy, OUTAGE_SECONDS) as outage:
        assert outage.closed_connections >= 1, "the sidecar's Redis connection went through the proxy"
        accepted_during_cut = proxy.accepted
        r = load(guarded, "guarded", key)
        cut_when_answered = proxy.is_cut
    assert r.status_code == 200, describe(r, guarded)
    assert r.json() == value
    assert not cut_when_answered, "the answer came while Redis was still unreachable"
    assert proxy.restores >= 1
    assert proxy.accepted > accepted_during_cut, "the value was read over a connection made after the restore"

    # A write during the outage ends 204 and is stored.
    key2, value2 = f"written-{uuid.uuid4().hex[:8]}", {"saved": "during the outage"}
    with Outage(proxy, OUTAGE_SECONDS) as outage:
        accepted_during_cut = proxy.accepted
        r = save(guarded, "guarded", key2, value2)
        cut_when_answered = proxy.is_cut
    assert r.status_code == 204, describe(r, guarded)
    assert not cut_when_answered, "the write was acknowledged while Redis was still unreachable"
    assert proxy.accepted > accepted_during_cut
    r = load(guarded, "guarded", key2)
    assert (r.status_code, r.json()) == (200, value2), describe(r, guarded)
    assert json.loads(redis_command("HGET", f"{redis_prefix}||{key2}", "data")) == value2, "stored in Redis"


def test_without_a_policy_calls_fail_fast_with_dapr_error(unguarded, proxies):
    proxy = proxies["unguarded"]
    key, value = f"plain-{uuid.uuid4().hex[:8]}", {"saved": "before the outage"}
    r = save(unguarded, "unguarded", key, value)
    assert r.status_code == 204, describe(r, unguarded)

    def answer(call):
        try:
            return call()
        except requests.Timeout:
            pytest.fail(f"no answer within {REQUEST_TIMEOUT}s while Redis was unreachable (the call hung)\n"
                        f"sidecar stderr (tail):\n{unguarded.stderr()[-4000:]}")

    try:
        assert proxy.cut() >= 1, "the sidecar's Redis connection went through the proxy"
        # The first read meets the dead connection, the next ones the store's reconnection attempts: every one
        # answers with Dapr's error while Redis is still unreachable.
        for _ in range(3):
            r = answer(lambda: load(unguarded, "unguarded", key))
            assert proxy.is_cut, "the proxy is restored only below"
            assert r.status_code == 500, describe(r, unguarded)
            body = r.json()
            assert body["errorCode"] == "ERR_STATE_GET", body
            assert f"fail to get {key} from state store unguarded" in body["message"], body
        r = answer(lambda: save(unguarded, "unguarded", key, {"saved": "during the outage"}))
        assert proxy.is_cut
        assert (r.status_code, r.json()["errorCode"]) == (500, "ERR_STATE_SAVE"), describe(r, unguarded)
    finally:
        proxy.restore()
    # Back to normal without a restart: the store reconnects by itself, and the failed write changed nothing.
    assert poll_until(lambda: reads_back(unguarded, "unguarded", key, value), timeout=RECOVERY_TIMEOUT, interval=0.2), \
        f"the store did not recover within {RECOVERY_TIMEOUT}s after Redis came back\n" \
        f"sidecar stderr (tail):\n{unguarded.stderr()[-4000:]}"
    key2 = f"after-{uuid.uuid4().hex[:8]}"
    assert save(unguarded, "unguarded", key2, "back").status_code == 204
    assert reads_back(unguarded, "unguarded", key2, "back")
