"""Resiliency for service invocation, observed end to end: retries on matching statuses, timeouts, and a
circuit breaker that stops calls reaching the app until it half-opens. A counting app shows what got through."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import requests

from conftest import start_app

RESILIENCY = {
    "apiVersion": "dapr.io/v1alpha1",
    "kind": "Resiliency",
    "metadata": {"name": "policies"},
    "spec": {
        "policies": {
            "timeouts": {"fast": "300ms"},
            "retries": {"three": {"policy": "constant", "duration": "50ms", "maxRetries": 3,
                                  "matching": {"httpStatusCodes": "503"}}},
            "circuitBreakers": {"cb": {"maxRequests": 1, "timeout": "2s", "trip": "consecutiveFailures > 2"}},
        },
        "targets": {"apps": {"flaky": {"retry": "three"}, "slow": {"timeout": "fast"}, "fragile": {"circuitBreaker": "cb"}}},
    },
}


@pytest.fixture(scope="module")
def caller(sidecars, tmp_path_factory):
    work = tmp_path_factory.mktemp("resiliency")
    db = str(work / "nr.db")
    config = {"apiVersion": "dapr.io/v1alpha1", "kind": "Configuration", "metadata": {"name": "c"},
              "spec": {"nameResolution": {"component": "sqlite", "configuration": {"connectionString": db}}}}
    app = start_app("echo_http.py", "counter", work)
    for app_id in ("flaky", "slow", "fragile", "plain"):
        sidecars.start(app_id, config=config, extra_args=["--app-port", str(app.port)])
    web = sidecars.start("client", config=config, raw_files={"resiliency.yaml": json.dumps(RESILIENCY)})
    web.app_port = app.port
    yield web
    app.stop()


def count(caller, key: str) -> int:
    return requests.get(f"http://127.0.0.1:{caller.app_port}/count/{key}", timeout=5).json()["count"]


def test_retry_policy_retries_matching_statuses(caller):
    key = uuid.uuid4().hex
    r = requests.get(caller.url(f"/v1.0/invoke/flaky/method/flaky/{key}?fail=2"), timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["attempts"] == 3
    assert count(caller, key) == 3


def test_without_a_policy_an_app_status_is_not_retried(caller):
    key = uuid.uuid4().hex
    r = requests.get(caller.url(f"/v1.0/invoke/plain/method/flaky/{key}?fail=2"), timeout=10)
    assert r.status_code == 503
    assert count(caller, key) == 1


def test_retries_give_up_after_max_retries_and_return_the_last_response(caller):
    key = uuid.uuid4().hex
    r = requests.get(caller.url(f"/v1.0/invoke/flaky/method/flaky/{key}?fail=10"), timeout=10)
    assert r.status_code == 503
    assert count(caller, key) == 4  # the call and three retries


def test_timeout_policy_cuts_slow_calls(caller):
    started = time.monotonic()
    r = requests.get(caller.url("/v1.0/invoke/slow/method/slow?ms=3000"), timeout=10)
    elapsed = time.monotonic() - started
    assert r.status_code == 500 and r.json()["errorCode"] == "ERR_DIRECT_INVOKE", r.text
    assert "timeout" in r.json()["message"]
    assert elapsed < 2.5, f"the 300ms timeout did not cut a 3s call ({elapsed:.2f}s)"
    assert requests.get(caller.url("/v1.0/invoke/slow/method/slow?ms=10"), timeout=10).status_code == 200


def test_circuit_breaker_opens_then_half_opens(caller):
    key = uuid.uuid4().hex
    statuses = [requests.get(caller.url(f"/v1.0/invoke/fragile/method/flaky/{key}?fail=100"), timeout=10).status_code
                for _ in range(6)]
    assert statuses[:3] == [503, 503, 503], statuses
    assert statuses[3:] == [500, 500, 500], statuses
    assert count(caller, key) == 3, "an open breaker must not let calls reach the app"
    r = requests.get(caller.url(f"/v1.0/invoke/fragile/method/flaky/{key}?fail=100"), timeout=10)
    assert "circuit breaker is open" in r.json()["message"], r.text
    time.sleep(2.3)
    # Half-open: one probe reaches the app (it fails again, so the breaker reopens).
    requests.get(caller.url(f"/v1.0/invoke/fragile/method/flaky/{key}?fail=100"), timeout=10)
    assert count(caller, key) == 4
