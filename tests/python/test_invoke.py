"""Service invocation through real sidecars: HTTP and gRPC apps, the official SDK, gRPC proxying, large
streamed bodies and access control. Sidecars find each other through a shared SQLite name-resolution file."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time

import grpc
import pytest
import requests

from conftest import free_port, poll_until, rss_kb, sdk_client, sdk_settings, start_app


def nr_config(db: str, access_control: dict | None = None) -> dict:
    spec: dict = {
        "nameResolution": {
            "component": "sqlite",
            "version": "v1",
            "configuration": {"connectionString": db, "updateInterval": "2s"},
        }
    }
    if access_control is not None:
        spec["accessControl"] = access_control
    return {"apiVersion": "dapr.io/v1alpha1", "kind": "Configuration", "metadata": {"name": "c"}, "spec": spec}


class Mesh:
    pass


@pytest.fixture(scope="module")
def mesh(sidecars, tmp_path_factory):
    work = tmp_path_factory.mktemp("invoke")
    db = str(work / "nr.db")
    m = Mesh()
    m.db = db
    m.orders_app = start_app("echo_http.py", "orders", work)
    m.grpc_app = start_app("grpc_app.py", "grpcsvc", work)
    m.secure_app = start_app("echo_http.py", "secure", work)
    m.web = sidecars.start("web", config=nr_config(db))
    m.orders = sidecars.start("orders", config=nr_config(db), extra_args=["--app-port", str(m.orders_app.port)])
    m.grpcsvc = sidecars.start(
        "grpcsvc", config=nr_config(db),
        extra_args=["--app-port", str(m.grpc_app.port), "--app-protocol", "grpc"],
    )
    acl = {
        "defaultAction": "deny",
        "trustDomain": "public",
        "policies": [{
            "appId": "web", "defaultAction": "deny", "trustDomain": "public", "namespace": "default",
            "operations": [{"name": "/allowed/*", "httpVerb": ["GET"], "action": "allow"}],
        }],
    }
    m.secure = sidecars.start("secure", config=nr_config(db, acl), extra_args=["--app-port", str(m.secure_app.port)])
    m.stranger = sidecars.start("stranger", config=nr_config(db))
    yield m
    for app in (m.orders_app, m.grpc_app, m.secure_app):
        app.stop()


def test_http_invoke_forwards_method_path_query_headers_and_body(mesh):
    r = requests.post(mesh.web.url("/v1.0/invoke/orders/method/api/v1/add?x=1&y=two"),
                      data=b'{"arg1": 10}', headers={"Content-Type": "application/json", "X-Custom": "yes"},
                      timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["x-app"] == "orders"
    echo = r.json()
    assert (echo["method"], echo["path"], echo["query"], echo["body"]) == ("POST", "/api/v1/add", "x=1&y=two", '{"arg1": 10}')
    h = echo["headers"]
    assert h["x-custom"] == "yes" and h["content-type"] == "application/json"
    assert (h["dapr-caller-app-id"], h["dapr-callee-app-id"]) == ("web", "orders")
    assert "tandem-invoke" not in h and "dapr-api-token" not in h


@pytest.mark.parametrize("verb", ["GET", "PUT", "DELETE", "PATCH"])
def test_every_verb(mesh, verb):
    r = requests.request(verb, mesh.web.url("/v1.0/invoke/orders/method/things/1"), timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["method"] == verb


@pytest.mark.parametrize("code", [201, 404, 500, 503])
def test_app_status_and_headers_come_back_as_they_are(mesh, code):
    r = requests.get(mesh.web.url(f"/v1.0/invoke/orders/method/status/{code}"), timeout=20)
    assert r.status_code == code
    assert r.text == f"status {code} from orders"
    assert r.headers["x-status"] == str(code)


def test_dapr_app_id_header_proxies_any_path(mesh):
    r = requests.get(mesh.web.url("/api/orders?id=7"), headers={"dapr-app-id": "orders"}, timeout=10)
    assert r.status_code == 200, r.text
    echo = r.json()
    assert (echo["path"], echo["query"]) == ("/api/orders", "id=7")
    assert "dapr-app-id" not in echo["headers"]


def test_invocation_errors(mesh):
    r = requests.get(mesh.web.url("/v1.0/invoke/nobody/method/x"), timeout=20)
    assert r.status_code == 500 and r.json()["errorCode"] == "ERR_DIRECT_INVOKE", r.text
    r = requests.get(mesh.web.url("/v1.0/invoke/a.b.c/method/x"), timeout=10)
    assert r.status_code == 500 and "invalid app id" in r.json()["message"], r.text
    r = requests.get(mesh.web.url("/v1.0/invoke/orders/method/"), timeout=10)
    assert r.status_code == 400 and r.json()["errorCode"] == "ERR_DIRECT_INVOKE", r.text


def test_app_without_port_answers_clearly(mesh):
    r = requests.get(mesh.orders.url("/v1.0/invoke/web/method/x"), timeout=10)
    assert r.status_code == 500 and "app channel is not initialized" in r.json()["message"], r.text


def test_sdk_invoke_method(mesh):
    # The SDK's HTTP invocation client reads the sidecar address from dapr.conf.settings at call time.
    with sdk_client(mesh.web) as c, sdk_settings(mesh.web, None):
        resp = c.invoke_method("orders", "sdk/hello", data=b"from-sdk", http_verb="POST", content_type="text/plain")
        echo = json.loads(resp.data)
        assert (echo["path"], echo["body"], echo["method"]) == ("/sdk/hello", "from-sdk", "POST")
        assert echo["headers"]["dapr-caller-app-id"] == "web"


def test_grpc_invoke_service_to_http_and_grpc_apps(mesh):
    from dapr.proto.common.v1 import common_pb2
    from dapr.proto.runtime.v1 import dapr_pb2_grpc, invoke_pb2
    from google.protobuf import any_pb2

    with grpc.insecure_channel(mesh.web.grpc_address) as ch:
        stub = dapr_pb2_grpc.DaprStub(ch)
        msg = common_pb2.InvokeRequest(
            method="svc/echo", data=any_pb2.Any(value=b"payload"), content_type="text/plain",
            http_extension=common_pb2.HTTPExtension(verb=common_pb2.HTTPExtension.PUT, querystring="a=1"),
        )
        resp = stub.InvokeService(invoke_pb2.InvokeServiceRequest(id="orders", message=msg))
        echo = json.loads(resp.data.value)
        assert (echo["method"], echo["path"], echo["query"], echo["body"]) == ("PUT", "/svc/echo", "a=1", "payload")
        resp = stub.InvokeService(invoke_pb2.InvokeServiceRequest(id="grpcsvc", message=msg))
        echo = json.loads(resp.data.value)
        assert (echo["method"], echo["verb"], echo["query"], echo["data"]) == ("svc/echo", "PUT", "a=1", "payload")
        assert echo["caller"] == "web"
        with pytest.raises(grpc.RpcError) as e:
            bad = common_pb2.InvokeRequest(method="status/404", http_extension=common_pb2.HTTPExtension(verb=1))
            stub.InvokeService(invoke_pb2.InvokeServiceRequest(id="orders", message=bad))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_http_invoke_of_a_grpc_app_uses_on_invoke(mesh):
    r = requests.post(mesh.web.url("/v1.0/invoke/grpcsvc/method/hello?z=9"), data=b"hi",
                      headers={"Content-Type": "text/plain"}, timeout=10)
    assert r.status_code == 200, r.text
    echo = r.json()
    assert (echo["method"], echo["verb"], echo["query"], echo["data"], echo["caller"]) == ("hello", "POST", "z=9", "hi", "web")
    r = requests.post(mesh.web.url("/v1.0/invoke/grpcsvc/method/fail"), timeout=10)
    assert r.status_code == 404, r.text


def test_grpc_proxying_unary_streaming_errors_and_trailers(mesh):
    ident = lambda b: b  # noqa: E731 - raw bytes in and out
    with grpc.insecure_channel(mesh.web.grpc_address) as ch:
        say = ch.unary_unary("/test.Echo/Say", request_serializer=ident, response_deserializer=ident)
        reply, call = say.with_call(b"hello", metadata=(("dapr-app-id", "grpcsvc"),), timeout=10)
        body = json.loads(reply)
        assert (body["app"], body["got"], body["caller"]) == ("grpcsvc", "hello", "web")
        assert ("x-trailer", "from-grpcsvc") in call.trailing_metadata()
        with pytest.raises(grpc.RpcError) as e:
            say(b"error", metadata=(("dapr-app-id", "grpcsvc"),), timeout=10)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and e.value.details() == "asked to fail"
        count = ch.unary_stream("/test.Echo/Count", request_serializer=ident, response_deserializer=ident)
        assert list(count(b"5", metadata=(("dapr-app-id", "grpcsvc"),), timeout=10)) == [
            f"grpcsvc:{i}".encode() for i in range(5)
        ]
        with pytest.raises(grpc.RpcError) as e:
            say(b"x", timeout=10)
        assert "dapr-app-id" in e.value.details()


def test_large_bodies_stream_through_with_flat_memory(mesh):
    size = 64 * 1024 * 1024
    before = {sc.app_id: rss_kb(sc.proc.pid) for sc in (mesh.web, mesh.orders)}
    chunk = os.urandom(1 << 20)
    digest = hashlib.sha256()

    class Body:
        """An iterable with a length: requests sends it with Content-Length, piece by piece."""

        def __len__(self):
            return size

        def __iter__(self):
            for _ in range(size // len(chunk)):
                digest.update(chunk)
                yield chunk

    r = requests.post(mesh.web.url("/v1.0/invoke/orders/method/upload"), data=Body(), timeout=120)
    assert r.status_code == 200, r.text
    assert r.json() == {"bytes": size, "sha256": digest.hexdigest()}
    # Chunked (no length) streams too.
    digest = hashlib.sha256()
    r = requests.post(mesh.web.url("/v1.0/invoke/orders/method/upload"), data=iter(Body()), timeout=120)
    assert r.status_code == 200, r.text
    assert r.json() == {"bytes": size, "sha256": digest.hexdigest()}
    received = 0
    with requests.get(mesh.web.url(f"/v1.0/invoke/orders/method/big?n={size}"), stream=True, timeout=120) as r:
        assert r.status_code == 200
        for part in r.iter_content(1 << 16):
            received += len(part)
    assert received == size
    for sc in (mesh.web, mesh.orders):
        grown_mb = (rss_kb(sc.proc.pid) - before[sc.app_id]) / 1024
        # A buffered 64 MiB body would add at least 64 MB; streaming keeps growth to buffers and pools.
        assert grown_mb < 32, f"{sc.app_id} grew by {grown_mb:.1f} MB while streaming {size >> 20} MiB"


def test_concurrent_calls_share_connections(mesh):
    errors = []

    def call(i):
        try:
            r = requests.get(mesh.web.url(f"/v1.0/invoke/orders/method/c/{i}"), timeout=20)
            assert r.status_code == 200 and r.json()["path"] == f"/c/{i}"
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def test_access_control_allows_and_denies(mesh):
    ok = requests.get(mesh.web.url("/v1.0/invoke/secure/method/allowed/thing"), timeout=10)
    assert ok.status_code == 200, ok.text
    wrong_verb = requests.post(mesh.web.url("/v1.0/invoke/secure/method/allowed/thing"), timeout=10)
    assert wrong_verb.status_code == 403, wrong_verb.text
    assert wrong_verb.json()["errorCode"] == "ERR_DIRECT_INVOKE"
    other_op = requests.get(mesh.web.url("/v1.0/invoke/secure/method/admin"), timeout=10)
    assert other_op.status_code == 403
    stranger = requests.get(mesh.stranger.url("/v1.0/invoke/secure/method/allowed/thing"), timeout=10)
    assert stranger.status_code == 403, stranger.text


def test_external_url_and_self_invocation(mesh):
    base = f"http://127.0.0.1:{mesh.orders_app.port}"
    r = requests.get(mesh.web.url(f"/v1.0/invoke/{base}/method/ext/path?q=1"), timeout=10)
    assert r.status_code == 200, r.text
    assert (r.json()["path"], r.json()["query"]) == ("/ext/path", "q=1")
    r = requests.get(mesh.orders.url("/v1.0/invoke/orders/method/self"), timeout=10)
    assert r.status_code == 200 and r.json()["path"] == "/self", r.text


def test_http_endpoint_resource(sidecars, mesh, tmp_path):
    endpoint = {
        "apiVersion": "dapr.io/v1alpha1", "kind": "HTTPEndpoint", "metadata": {"name": "legacy"},
        "spec": {"baseUrl": f"http://127.0.0.1:{mesh.orders_app.port}/base",
                 "headers": [{"name": "X-Api-Key", "value": "k123"}]},
    }
    sc = sidecars.start("ep-caller", raw_files={"endpoint.yaml": json.dumps(endpoint)}, config=nr_config(mesh.db))
    r = requests.post(sc.url("/v1.0/invoke/legacy/method/charge"), data=b"x", timeout=10)
    assert r.status_code == 200, r.text
    echo = r.json()
    assert echo["path"] == "/base/charge" and echo["headers"]["x-api-key"] == "k123"
    meta = requests.get(sc.url("/v1.0/metadata"), timeout=10).json()
    assert meta["httpEndpoints"] == [{"name": "legacy"}]


def test_tandem_run_apps_find_each_other_without_configuration(tandem, tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "HOME": str(tmp_path)}
    app_port = free_port()
    callee = subprocess.Popen(
        [tandem, "run", "--app-id", "runcallee", "--app-port", str(app_port), "--dapr-http-port", "0",
         "--dapr-grpc-port", "0", "--dapr-internal-grpc-port", "0", "--metrics-port", "0", "--",
         sys.executable, str(os.path.join(os.path.dirname(__file__), "apps", "echo_http.py")), str(app_port), "runcallee"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "callee.log", "wb"),
    )
    try:
        script = (
            "import os, time, urllib.request\n"
            "url = f\"http://127.0.0.1:{os.environ['DAPR_HTTP_PORT']}/v1.0/invoke/runcallee/method/hi\"\n"
            "deadline = time.time() + 30\n"
            "while time.time() < deadline:\n"
            "    try:\n"
            "        r = urllib.request.urlopen(url, timeout=5)\n"
            "        raise SystemExit(0 if r.status == 200 and b'runcallee' in r.read() else 3)\n"
            "    except OSError:\n"
            "        time.sleep(0.1)\n"
            "raise SystemExit(4)  # the callee never answered\n"
        )
        caller = subprocess.run(
            [tandem, "run", "--app-id", "runcaller", "--dapr-http-port", "0", "--dapr-grpc-port", "0",
             "--dapr-internal-grpc-port", "0", "--metrics-port", "0", "--", sys.executable, "-c", script],
            env=env, capture_output=True, timeout=60,
        )
        assert caller.returncode == 0, caller.stderr.decode()[-3000:] + (tmp_path / "callee.log").read_text()[-3000:]
    finally:
        callee.terminate()
        callee.wait(timeout=15)


@pytest.fixture(scope="module")
def https_app(tmp_path_factory):
    """An HTTPS echo app with a certificate from a private CA made here with openssl."""
    import subprocess

    d = tmp_path_factory.mktemp("tls")

    def ssl(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=tandem test CA")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "srv.pem",
        "-days", "2", "-extfile", "ext.cnf")
    app = start_app("echo_http.py", "tls-app", d, env={"TLS_CERT": str(d / "srv.pem"), "TLS_KEY": str(d / "srv.key")})
    app.ca = (d / "ca.pem").read_text()
    yield app
    app.stop()


def test_http_endpoint_client_tls_root_ca(sidecars, mesh, https_app):
    def endpoint(name, client_tls):
        spec = {"baseUrl": f"https://127.0.0.1:{https_app.port}"}
        if client_tls is not None:
            spec["clientTLS"] = client_tls
        return {"apiVersion": "dapr.io/v1alpha1", "kind": "HTTPEndpoint", "metadata": {"name": name}, "spec": spec}

    files = {
        "trusted.yaml": json.dumps(endpoint("trusted", {"rootCA": {"value": https_app.ca}})),
        "untrusted.yaml": json.dumps(endpoint("untrusted", None)),
    }
    sc = sidecars.start("tls-caller", raw_files=files, config=nr_config(mesh.db))
    r = requests.get(sc.url("/v1.0/invoke/trusted/method/secure"), timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["path"] == "/secure"
    r = requests.get(sc.url("/v1.0/invoke/untrusted/method/secure"), timeout=10)
    assert r.status_code == 500 and r.json()["errorCode"] == "ERR_DIRECT_INVOKE", r.text


def test_standalone_default_mdns_resolution(sidecars, mesh):
    """With no Configuration, standalone sidecars find each other over mDNS, as daprd's do."""
    sidecars.start("mdns-callee", extra_args=["--app-port", str(mesh.orders_app.port)])
    caller = sidecars.start("mdns-caller")
    r = requests.get(caller.url("/v1.0/invoke/mdns-callee/method/hello"), timeout=20)
    assert r.status_code == 200, r.text
    assert r.json()["headers"]["dapr-caller-app-id"] == "mdns-caller"


def test_grpc_proxying_from_a_generated_client(mesh):
    """A generated stub (Dapr's AppCallbackHealthCheck) called through the proxy reaches the gRPC app."""
    from dapr.proto.runtime.v1 import appcallback_pb2_grpc
    from google.protobuf import empty_pb2

    with grpc.insecure_channel(mesh.web.grpc_address) as ch:
        stub = appcallback_pb2_grpc.AppCallbackHealthCheckStub(ch)
        stub.HealthCheck(empty_pb2.Empty(), metadata=(("dapr-app-id", "grpcsvc"),), timeout=10)
        with pytest.raises(grpc.RpcError) as e:
            stub.HealthCheck(empty_pb2.Empty(), metadata=(("dapr-app-id", "orders"),), timeout=10)
        assert e.value.code() != grpc.StatusCode.OK  # orders speaks HTTP, not gRPC


def test_calls_to_an_unhealthy_app_are_refused_until_it_recovers(sidecars, mesh, tmp_path):
    # The app channel applies app health to every invocation, as Dapr's does: while the health probe finds the
    # app unhealthy, calls answer 500 ERR_DIRECT_INVOKE "app is not in a healthy state" without reaching it.
    app = start_app("echo_http.py", "patient", tmp_path)
    try:
        sidecars.start("patient", config=nr_config(mesh.db), extra_args=[
            "--app-port", str(app.port), "--enable-app-health-check", "--app-health-check-path", "/health",
            "--app-health-probe-interval", "1", "--app-health-probe-timeout", "500", "--app-health-threshold", "1",
        ])
        url = mesh.web.url("/v1.0/invoke/patient/method/hello")
        assert requests.post(url, timeout=10).status_code == 200
        assert requests.post(f"http://127.0.0.1:{app.port}/sethealth/0", timeout=5).status_code == 200

        def refused() -> bool:
            r = requests.post(url, timeout=10)
            return r.status_code == 500 and "app is not in a healthy state" in r.json().get("message", "")

        assert poll_until(refused, timeout=10, interval=0.2), "calls kept reaching the unhealthy app"
        r = requests.post(url, timeout=10)
        assert (r.status_code, r.json()["errorCode"]) == (500, "ERR_DIRECT_INVOKE"), r.text
        assert r.json()["message"] == "failed to invoke, id: patient, err: app is not in a healthy state"
        assert requests.post(f"http://127.0.0.1:{app.port}/sethealth/1", timeout=5).status_code == 200
        assert poll_until(lambda: requests.post(url, timeout=10).status_code == 200, timeout=10, interval=0.2), \
            "calls did not reach the app again once it was healthy"
    finally:
        app.stop()


def test_an_early_call_is_held_until_the_callee_app_listens(sidecars, mesh, tmp_path):
    """Two apps started together: the callee's sidecar registers once its components are ready and holds calls
    that arrive while its app is still starting (--app-ready-hold), instead of failing them."""
    port = free_port()
    sc = sidecars.spawn("latecomer", config=nr_config(mesh.db), extra_args=["--app-port", str(port)])
    url = mesh.web.url("/v1.0/invoke/latecomer/method/early")
    # The sidecar registers before its app listens (it is not healthy yet: /v1.0/healthz waits for the app).
    import sqlite3

    def registered() -> bool:
        with sqlite3.connect(mesh.db) as db:
            return bool(db.execute("SELECT 1 FROM hosts WHERE app_id = 'latecomer'").fetchall())

    assert poll_until(registered, 15), sc.stderr()
    assert requests.get(sc.url("/v1.0/healthz"), timeout=5).status_code != 204
    results: list = []
    caller = threading.Thread(target=lambda: results.append(requests.post(url, data=b"first", timeout=30)))
    caller.start()
    time.sleep(3)
    assert not results, "the early call was answered before the app listened"
    app = start_app("echo_http.py", "latecomer", tmp_path, port=port)
    try:
        caller.join(timeout=30)
        assert results and results[0].status_code == 200, results and results[0].text
        assert results[0].json()["body"] == "first"
    finally:
        app.stop()


def test_an_early_call_fails_clearly_when_the_app_never_listens(sidecars, mesh):
    sidecars.spawn("nobody", config=nr_config(mesh.db), extra_args=["--app-port", str(free_port()),
                                                                    "--app-ready-hold", "1s"])
    url = mesh.web.url("/v1.0/invoke/nobody/method/x")

    def refused_as_not_ready():
        r = requests.get(url, timeout=10)
        return r.status_code == 500 and "did not start listening" in r.json().get("message", "")

    assert poll_until(refused_as_not_ready, timeout=15, interval=0.5)
    r = requests.get(url, timeout=10)
    assert r.json()["errorCode"] == "ERR_DIRECT_INVOKE" and "--app-ready-hold" in r.json()["message"], r.text
