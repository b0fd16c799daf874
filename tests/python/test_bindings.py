"""Bindings through the real sidecar. Output: the official Python SDK's `invoke_binding` and plain HTTP
`POST|PUT /v1.0/bindings/<name>` on a localstorage and an HTTP binding, with Dapr's answers (200 with the data,
204 when the binding answers nothing, `metadata.*` headers, 400/500 and ERR_INVOKE_OUTPUT_BINDING). Input: cron
bindings delivered to a plain HTTP app (OPTIONS probe, `route`, `direction`, binding metadata as headers, the
app's answer routed to a state store and an output binding) and to a `dapr.ext.grpc.App` with `@app.binding`;
the metadata API and Dapr's binding metrics. PostgreSQL and Redis bindings are in tests/conformance/bindings.rs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest
import requests

from conftest import component, poll_until, sdk_client, start_app

ANSWER = {"storeName": "statestore", "state": [{"key": "from-binding", "value": {"n": 1}}],
          "to": ["files"], "data": "routed", "concurrency": "sequential"}


def events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def env(sidecars, tmp_path_factory):
    work = tmp_path_factory.mktemp("bindings")
    record = work / "events.jsonl"
    files = work / "files"
    app = start_app("binding_app_http.py", "bindings", work, env={
        "WANT": "/tick,/custom,/route-answer", "RECORD": str(record), "ANSWER": json.dumps(ANSWER)})
    sc = sidecars.start("bindings", [
        component("statestore", "state.in-memory"),
        component("files", "bindings.localstorage", {"rootPath": str(files)}),
        component("web", "bindings.http", {"url": f"http://127.0.0.1:{app.port}"}),
        component("tick", "bindings.cron", {"schedule": "@every 300ms"}),
        component("routed", "bindings.cron", {"schedule": "@every 300ms", "route": "/custom"}),
        component("ignored", "bindings.cron", {"schedule": "@every 300ms"}),
        component("declared", "bindings.cron", {"schedule": "@every 300ms", "direction": "input"}),
        component("answers", "bindings.cron", {"schedule": "@every 1s", "route": "/route-answer"}),
    ], extra_args=["--app-port", str(app.port)])
    yield sc, record, files
    app.stop()


def test_sdk_invoke_binding_creates_and_reads_a_file(env):
    sc, _, files = env
    with sdk_client(sc) as c:
        created = c.invoke_binding("files", "create", "hello from the sdk", {"fileName": "sdk.txt"})
        assert json.loads(created.data) == {"fileName": "sdk.txt"}
        assert (files / "sdk.txt").read_text() == "hello from the sdk"
        got = c.invoke_binding("files", "get", binding_metadata={"fileName": "sdk.txt"})
        assert got.text() == "hello from the sdk"
        answer = c.invoke_binding("web", "get", binding_metadata={"path": "/hello"})
        assert json.loads(answer.data) == {"got": "/hello"}
        assert answer.binding_metadata["statusCode"] == "200"
        assert answer.headers.get("metadata.statuscode") == ["200"] or answer.headers.get("metadata.statuscode") == "200"
        with pytest.raises(grpc.RpcError) as err:
            c.invoke_binding("nope", "create", "x")
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert err.value.details() == "error invoking output binding nope: couldn't find output binding nope"


def test_http_output_binding_answers_as_dapr_does(env):
    sc, _, files = env
    url = f"{sc.http}/v1.0/bindings/files"
    # No Content-Type, as Dapr's quickstart sends it; a JSON string reaches the binding quoted, and localstorage
    # unquotes it.
    r = requests.post(url, data=json.dumps({"operation": "create", "data": "plain text",
                                            "metadata": {"fileName": "http.txt"}}))
    assert r.status_code == 200 and r.json() == {"fileName": "http.txt"}
    assert (files / "http.txt").read_text() == "plain text"
    r = requests.put(url, json={"operation": "get", "metadata": {"fileName": "http.txt"}})
    assert (r.status_code, r.text, r.headers["content-type"]) == (200, "plain text", "application/json")
    r = requests.post(url, json={"operation": "delete", "metadata": {"fileName": "http.txt"}})
    assert r.status_code == 204 and r.content == b""
    r = requests.post(url, json={"operation": "get", "metadata": {"fileName": "http.txt"}})
    assert r.status_code == 500 and r.json()["errorCode"] == "ERR_INVOKE_OUTPUT_BINDING"
    assert r.json()["message"].startswith("error invoking output binding files: file not found: ")
    # The HTTP binding's answer metadata comes back as headers, on success and on failure.
    r = requests.post(f"{sc.http}/v1.0/bindings/web", json={"operation": "get", "metadata": {"path": "/x"}})
    assert r.status_code == 200 and r.headers["metadata.statusCode"] == "200"
    r = requests.post(f"{sc.http}/v1.0/bindings/web", json={"operation": "get", "metadata": {"path": "/missing"}})
    assert r.status_code == 500 and r.headers["metadata.statusCode"] == "404"
    assert r.json()["message"] == "error invoking output binding web: received status code 404"


@pytest.mark.parametrize("body,status,code,message", [
    (b"", 400, "ERR_MALFORMED_REQUEST", "failed deserializing HTTP body: EOF"),
    (b"[1,2]", 400, "ERR_MALFORMED_REQUEST", "failed deserializing HTTP body"),
    (b'{"operation": "create", "metadata": {"n": 1}}', 400, "ERR_MALFORMED_REQUEST", "failed deserializing"),
    (b'{"data": 1}', 500, "ERR_INVOKE_OUTPUT_BINDING",
     "error invoking output binding files: operation field is missing from request"),
    (b'{"operation": "explode"}', 500, "ERR_INVOKE_OUTPUT_BINDING",
     "error invoking output binding files: binding files does not support operation explode. "
     "supported operations:create get list delete"),
])
def test_bad_output_binding_requests_get_daprs_errors(env, body, status, code, message):
    sc, _, _ = env
    r = requests.post(f"{sc.http}/v1.0/bindings/files", data=body)
    assert r.status_code == status, r.text
    assert r.json()["errorCode"] == code
    assert r.json()["message"].startswith(message), r.json()["message"]


def test_unknown_and_input_only_bindings_are_not_output_bindings(env):
    sc, _, _ = env
    for name in ("nope", "tick"):
        r = requests.post(f"{sc.http}/v1.0/bindings/{name}", json={"operation": "create"})
        assert r.status_code == 500
        assert r.json() == {**r.json(), "errorCode": "ERR_INVOKE_OUTPUT_BINDING",
                            "message": f"error invoking output binding {name}: couldn't find output binding {name}"}


def test_cron_events_reach_the_routes_the_app_wants(env):
    sc, record, _ = env
    assert poll_until(lambda: {e["path"] for e in events(record)} >= {"/tick", "/custom", "/declared"}, 10), \
        events(record)[-5:]
    got = events(record)
    # `ignored` answers OPTIONS with 404: the app does not want it, so it is never read.
    assert not any(e["path"] == "/ignored" for e in got)
    tick = next(e for e in got if e["path"] == "/tick")
    assert tick["body"] == ""
    assert tick["headers"]["content-type"] == "application/json"
    assert tick["headers"]["timezone"] == "Local"
    assert tick["headers"]["readtimeutc"].endswith("+0000 UTC")


def test_the_apps_answer_is_routed_to_state_and_output_bindings(env):
    sc, _, files = env
    assert poll_until(lambda: requests.get(f"{sc.http}/v1.0/state/statestore/from-binding").status_code == 200,
                      10)
    assert requests.get(f"{sc.http}/v1.0/state/statestore/from-binding").json() == {"n": 1}
    # `to: ["files"]` creates a file (its name made up) holding the answer's data.
    assert poll_until(lambda: any(p.read_text() == "routed" for p in files.iterdir() if p.is_file()), 10)


def test_metadata_and_metrics_show_bindings(env):
    sc, _, _ = env
    comps = {c["name"]: c for c in requests.get(f"{sc.http}/v1.0/metadata").json()["components"]}
    assert comps["files"]["type"] == "bindings.localstorage"
    assert comps["files"]["capabilities"] == ["OUTPUT_BINDING"]
    assert comps["tick"]["capabilities"] == ["INPUT_BINDING"]
    metrics = requests.get(f"http://127.0.0.1:{sc.metrics_port}/metrics").text
    lines = [l for l in metrics.splitlines() if not l.startswith("#")]
    assert any(l.startswith('dapr_component_input_binding_count{app_id="bindings",component="tick",')
               and 'success="true"' in l for l in lines), [l for l in lines if "binding" in l]
    assert any(l.startswith('dapr_component_output_binding_count{app_id="bindings",component="files",')
               and 'operation="create",success="true"' in l for l in lines), [l for l in lines if "binding" in l]


def test_grpc_app_takes_bindings_with_the_sdk(fresh_sidecars, tmp_path):
    record = tmp_path / "grpc.jsonl"
    app = start_app("grpc_binding.py", "grpc-binding", tmp_path, env={"RECORD": str(record)})
    try:
        fresh_sidecars.start("grpc-binding", [
            component("tick", "bindings.cron", {"schedule": "@every 200ms"}),
            component("other", "bindings.cron", {"schedule": "@every 200ms"}),
        ], extra_args=["--app-port", str(app.port), "--app-protocol", "grpc"])
        assert poll_until(lambda: len(events(record)) >= 2, 10), app.log.read_text()
        e = events(record)[0]
        assert e["data"] == "" and e["metadata"]["timeZone"] == "Local"
        # `other` is not in the app's ListInputBindings: never read, so the app never says "not implemented".
        time.sleep(0.5)
        assert "other binding not implemented" not in app.log.read_text()
    finally:
        app.stop()


def test_a_manifest_namespace_counts_only_when_the_sidecar_has_one(sidecars):
    """Dapr's quickstart components say `namespace: quickstarts`; a local sidecar (no NAMESPACE) loads them as
    daprd does, while a sidecar in namespace `prod` leaves them out."""
    def in_ns(doc: dict) -> dict:
        doc["metadata"]["namespace"] = "quickstarts"
        return doc

    comps = [in_ns(component("sqldb", "bindings.localstorage", {"rootPath": "/tmp", "direction": "output"}))]
    local = sidecars.start("ns-local", comps, env={"NAMESPACE": ""})
    names = [c["name"] for c in requests.get(local.url("/v1.0/metadata"), timeout=5).json()["components"]]
    assert "sqldb" in names
    prod = sidecars.start("ns-prod", comps, env={"NAMESPACE": "prod"})
    names = [c["name"] for c in requests.get(prod.url("/v1.0/metadata"), timeout=5).json().get("components", [])]
    assert "sqldb" not in names
