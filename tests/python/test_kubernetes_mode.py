"""Kubernetes mode end to end without a cluster: a real `tandem sidecar --mode kubernetes` loads its resources
from a real `tandem operator`, whose Kubernetes API server is the fake in fake_apiserver.py (kubeconfig over
plain HTTP with a bearer token). The operator authenticates the sidecar's token with a TokenReview, reads the
token's pod for its app id, serves the Components of the sidecar's namespace that are in scope for its app with
Kubernetes `secretKeyRef`s resolved, and streams changes: the sidecar applies them without a restart (hot
reload). The operator's reconcilers write `Ready` status and Events on the fake API server, and give the
annotated Deployment its `<app-id>-dapr` Service.

Everything here is bounded: each wait polls for at most a few seconds (HOT_RELOAD_TIMEOUT)."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import requests

from conftest import SidecarFactory, free_port, poll_until, read_text, wait_healthy
from fake_apiserver import FakeApiServer

NS = "shop"
AUDIENCE = "tandem-api"
HOT_RELOAD_TIMEOUT = 8.0
WEB_TOKEN = "web-token-" + uuid.uuid4().hex[:8]
BILLING_TOKEN = "billing-token-" + uuid.uuid4().hex[:8]
OTHER_NS_TOKEN = "other-token-" + uuid.uuid4().hex[:8]
UNBOUND_TOKEN = "unbound-token-" + uuid.uuid4().hex[:8]
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"


def component(name: str, type_: str, metadata: list | None = None, *, namespace: str = NS,
              scopes: list | None = None) -> dict:
    doc = {
        "apiVersion": "dapr.io/v1alpha1", "kind": "Component",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"type": type_, "version": "v1", "metadata": metadata or []},
    }
    if scopes is not None:
        doc["scopes"] = scopes
    return doc


def pod(name: str, app_id: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "annotations": {"dapr.io/app-id": app_id}},
            "spec": {"containers": [{"name": "app", "image": "app"}]}}


def deployment(name: str, app_id: str) -> dict:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name},
                             "annotations": {"dapr.io/enabled": "true", "dapr.io/app-id": app_id}},
                "spec": {"containers": [{"name": "app", "image": "app"}]},
            },
        },
    }


def orders_component(key_prefix: str | None = None) -> dict:
    """state.sqlite whose connectionString is a Kubernetes secretKeyRef (resolved by the operator)."""
    md = [{"name": "connectionString", "secretKeyRef": {"name": "sqlite-conn", "key": "connectionString"}}]
    if key_prefix is not None:
        md.append({"name": "keyPrefix", "value": key_prefix})
    return component("orders", "state.sqlite", md, scopes=["web"])


# --------------------------------------------------------------------------------------------------------
# Fixtures: the fake API server, the operator, the sidecars
# --------------------------------------------------------------------------------------------------------


class Operator:
    def __init__(self, proc: subprocess.Popen, api_port: int, health_port: int, log: Path):
        self.proc, self.api_port, self.health_port, self.log = proc, api_port, health_port, log

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def logs(self) -> str:
        return read_text(self.log)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("k8smode")


@pytest.fixture(scope="module")
def db_path(workdir) -> Path:
    return workdir / "data" / "orders.db"


@pytest.fixture(scope="module")
def apiserver(db_path) -> Iterator[FakeApiServer]:
    api = FakeApiServer(token="operator-" + uuid.uuid4().hex[:8]).start()
    sa = f"system:serviceaccount:{NS}:default"
    api.add_token(WEB_TOKEN, sa, [AUDIENCE], {POD_NAME_EXTRA: ["web-5d8f7-abcde"]})
    api.add_token(BILLING_TOKEN, sa, [AUDIENCE], {POD_NAME_EXTRA: ["billing-0"]})
    api.add_token(OTHER_NS_TOKEN, "system:serviceaccount:other:default", [AUDIENCE],
                  {POD_NAME_EXTRA: ["anything-0"]})
    api.add_token(UNBOUND_TOKEN, sa, [AUDIENCE])
    other_pod = pod("anything-0", "anything")
    other_pod["metadata"]["namespace"] = "other"
    api.apply(other_pod)
    api.apply(pod("web-5d8f7-abcde", "web"))
    api.apply(pod("billing-0", "billing"))
    api.apply(FakeApiServer.secret(NS, "sqlite-conn", {"connectionString": str(db_path)}))
    api.apply(component("statestore", "state.in-memory"))
    api.apply(orders_component())
    api.apply(component("invoices", "state.in-memory", scopes=["billing"]))
    api.apply(component("elsewhere", "state.in-memory", namespace="other"))
    # Not loadable (no such type): only its status tells. Scoped to an app that never runs.
    api.apply(component("broken", "state.nope", scopes=["ghost"]))
    api.apply(deployment("web", "web"))
    yield api
    api.stop()


@pytest.fixture(scope="module")
def operator(tandem, apiserver, workdir) -> Iterator[Operator]:
    kubeconfig = apiserver.kubeconfig(workdir / "kubeconfig")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env.update(KUBECONFIG=str(kubeconfig), NO_COLOR="1", POD_NAME="tandem-operator-test")
    api_port, health_port = free_port(), free_port()
    log = workdir / "operator.log"
    proc = subprocess.Popen(
        # The certificate authority is exercised against a real API server (test_real_apiserver.py); the fake one
        # serves no Secrets or ConfigMaps to keep its trust bundle in.
        [tandem, "operator", "--api-port", str(api_port), "--health-port", str(health_port),
         "--enable-mtls=false", "--log-level", "debug"],
        env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
    )
    op = Operator(proc, api_port, health_port, log)

    def ready() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"operator exited with {proc.returncode}:\n{op.logs()}")
        try:
            return requests.get(f"http://127.0.0.1:{health_port}/readyz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    if not poll_until(ready, timeout=15):
        op.stop()
        pytest.fail(f"operator not ready within 15s:\n{op.logs()}\nunhandled: {apiserver.unhandled}")
    yield op
    op.stop()


def k8s_sidecar(factory: SidecarFactory, operator: Operator, workdir: Path, app_id: str, token: str,
                kubeconfig: Path | None = None):
    token_file = workdir / f"{app_id}-token"
    token_file.write_text(token + "\n")
    env = {
        "NAMESPACE": NS,
        "TANDEM_OPERATOR_TOKEN_FILE": str(token_file),
        # The built-in `kubernetes` secret store reads Secrets with the pod's own credentials: none here unless
        # a kubeconfig is given.
        "KUBECONFIG": str(kubeconfig) if kubeconfig else str(workdir / "no-such-kubeconfig"),
        "KUBERNETES_SERVICE_HOST": "",
        "KUBERNETES_SERVICE_PORT": "",
    }
    return factory.spawn(
        app_id, env=env,
        extra_args=["--mode", "kubernetes", "--control-plane-address", f"127.0.0.1:{operator.api_port}"],
    )


@pytest.fixture(scope="module")
def k8s_sidecars(tandem, operator, workdir) -> Iterator[SidecarFactory]:
    """Sidecars of this module; they stop before the operator and the API server do."""
    factory = SidecarFactory(tandem, workdir / "sidecars")
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def web(k8s_sidecars, operator, workdir):
    sc = k8s_sidecar(k8s_sidecars, operator, workdir, "web", WEB_TOKEN)
    wait_healthy(sc)
    return sc


@pytest.fixture(scope="module")
def billing(k8s_sidecars, operator, workdir):
    sc = k8s_sidecar(k8s_sidecars, operator, workdir, "billing", BILLING_TOKEN,
                     kubeconfig=workdir / "kubeconfig")
    wait_healthy(sc)
    return sc


# --------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------


def components_of(sc) -> dict[str, str]:
    r = requests.get(sc.url("/v1.0/metadata"), timeout=5)
    assert r.status_code == 200, r.text
    return {c["name"]: c["type"] for c in r.json().get("components") or []}


def save(sc, store: str, key: str, value) -> requests.Response:
    return requests.post(sc.url(f"/v1.0/state/{store}"), json=[{"key": key, "value": value}], timeout=5)


def load(sc, store: str, key: str) -> requests.Response:
    return requests.get(sc.url(f"/v1.0/state/{store}/{key}"), timeout=5)


def roundtrip(sc, store: str) -> bool:
    """True when a value saved in `store` reads back."""
    key, value = f"probe-{uuid.uuid4().hex[:8]}", {"n": uuid.uuid4().hex}
    try:
        if save(sc, store, key, value).status_code != 204:
            return False
        r = load(sc, store, key)
        return r.status_code == 200 and r.json() == value
    except requests.RequestException:
        return False


def sqlite_keys(path: Path) -> set[str]:
    if not path.exists():
        return set()
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
        return {row[0] for row in db.execute("SELECT key FROM state")}


def ready_condition(apiserver: FakeApiServer, name: str) -> dict | None:
    """The `Ready` condition the operator wrote on Component `name` of NS, if any."""
    obj = apiserver.get("Component", NS, name) or {}
    conds = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conds if c.get("type") == "Ready"), None)


def wait_for(predicate, what: str, sc=None, operator: Operator | None = None,
             timeout: float = HOT_RELOAD_TIMEOUT) -> None:
    if poll_until(predicate, timeout=timeout, interval=0.1):
        return
    logs = ""
    if sc is not None:
        logs += f"\nsidecar stderr:\n{sc.stderr()[-6000:]}"
    if operator is not None:
        logs += f"\noperator log:\n{operator.logs()[-6000:]}"
    pytest.fail(f"not within {timeout}s: {what}{logs}")


# --------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------


def test_sidecar_loads_the_components_of_its_namespace_in_scope_for_its_app(web, apiserver):
    # `elsewhere` is in another namespace, `invoices` scoped to billing, `broken` to ghost. The built-in
    # `kubernetes` secret store is added in kubernetes mode with ignoreErrors; without Kubernetes credentials
    # (no kubeconfig, no in-cluster service account) its initialisation fails and it is skipped.
    assert components_of(web) == {"statestore": "state.in-memory", "orders": "state.sqlite"}
    assert "secretstores.kubernetes" in web.stderr()
    # The sidecar authenticated with its token: the operator reviewed it and read the token's pod.
    reviews = apiserver.find_requests("POST", "/tokenreviews")
    assert any(r.body["spec"]["token"] == WEB_TOKEN and r.body["spec"]["audiences"] == [AUDIENCE]
               for r in reviews), [r.body for r in reviews]
    assert apiserver.find_requests("GET", f"/api/v1/namespaces/{NS}/pods/web-5d8f7-abcde")


def test_state_works_through_the_operator_provided_component(web):
    assert save(web, "statestore", "greeting", {"hello": "kubernetes"}).status_code == 204
    r = load(web, "statestore", "greeting")
    assert (r.status_code, r.json()) == (200, {"hello": "kubernetes"})


def test_secret_key_ref_is_resolved_by_the_operator_from_a_kubernetes_secret(web, apiserver, db_path):
    # The connection string exists only in the Secret: the sqlite file appearing at that path proves the
    # operator read the Secret and handed the value to the sidecar.
    assert apiserver.find_requests("GET", f"/api/v1/namespaces/{NS}/secrets/sqlite-conn")
    assert db_path.exists(), f"{db_path} was not created"
    assert save(web, "orders", "order-1", {"qty": 2}).status_code == 204
    assert load(web, "orders", "order-1").json() == {"qty": 2}
    assert "web||order-1" in sqlite_keys(db_path), "default keyPrefix appid"


def test_the_built_in_kubernetes_secret_store_reads_secrets_with_the_pods_credentials(billing):
    # This sidecar has credentials (a kubeconfig for the fake API server), so `kubernetes` initialises.
    loaded = components_of(billing)
    assert loaded["kubernetes"] == "secretstores.kubernetes" and loaded["invoices"] == "state.in-memory"
    assert not {"orders", "elsewhere", "broken"} & set(loaded), loaded
    r = requests.get(billing.url("/v1.0/secrets/kubernetes/sqlite-conn"), timeout=5)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"connectionString"}
    assert roundtrip(billing, "invoices")


# --------------------------------------------------------------------------------------------------------
# The operator's sidecar API and reconcilers
# --------------------------------------------------------------------------------------------------------


def test_operator_api_authenticates_and_confines_callers(operator):
    url = operator.api + "/v1/resources"
    r = requests.get(url, params={"appId": "web"}, timeout=5)
    assert (r.status_code, r.json()["errorCode"]) == (401, "ERR_UNAUTHENTICATED")
    r = requests.get(url, params={"appId": "web"}, headers={"Authorization": "Bearer nope"}, timeout=5)
    assert r.status_code == 401 and "rejected" in r.json()["message"], r.text
    # The token is bound to web's pod: it may not read billing's resources, nor another namespace's.
    web_auth = {"Authorization": f"Bearer {WEB_TOKEN}"}
    r = requests.get(url, params={"appId": "billing"}, headers=web_auth, timeout=5)
    assert (r.status_code, r.json()["errorCode"]) == (403, "ERR_PERMISSION_DENIED")
    r = requests.get(url, params={"appId": "web", "namespace": "other"}, headers=web_auth, timeout=5)
    assert r.status_code == 403
    # A token of namespace `other` sees that namespace only, secrets resolved or not.
    r = requests.get(url, params={"appId": "anything"}, headers={"Authorization": f"Bearer {OTHER_NS_TOKEN}"},
                     timeout=5)
    assert r.status_code == 200, r.text
    assert [c["metadata"]["name"] for c in r.json()["components"]] == ["elsewhere"]
    # A token bound to no pod proves no app id: no app's resources for it.
    r = requests.get(url, params={"appId": "web"}, headers={"Authorization": f"Bearer {UNBOUND_TOKEN}"}, timeout=5)
    assert (r.status_code, r.json()["errorCode"]) == (403, "ERR_PERMISSION_DENIED"), r.text
    assert "not bound to a pod" in r.json()["message"]


def test_operator_writes_ready_status_and_events(operator, apiserver):
    def condition(name: str) -> dict | None:
        return ready_condition(apiserver, name)

    wait_for(lambda: condition("broken") is not None and condition("statestore") is not None,
             "Ready conditions written", operator=operator)
    bad = condition("broken")
    assert (bad["status"], bad["reason"]) == ("False", "UnknownType"), bad
    assert "state.nope" in bad["message"] and "state.in-memory" in bad["message"], bad["message"]
    good = condition("statestore")
    assert (good["status"], good["reason"]) == ("True", "Valid"), good

    patches = apiserver.find_requests("PATCH", f"/namespaces/{NS}/components/broken/status")
    assert patches and "apply-patch" in patches[0].content_type
    assert patches[0].query.get("fieldManager") == "tandem-operator"

    def warning_events() -> list[dict]:
        return [e for e in apiserver.objects("Event", NS)
                if e.get("regarding", {}).get("name") == "broken" and e.get("type") == "Warning"]

    wait_for(lambda: warning_events(), "a Warning Event for Component broken", operator=operator)
    event = warning_events()[0]
    assert event["reason"] == "UnknownType" and event["action"] == "Validate", event
    assert event["reportingController"] == "tandem-operator"
    assert (event["regarding"]["kind"], event["regarding"]["apiVersion"]) == ("Component", "dapr.io/v1alpha1")


def test_operator_creates_the_dapr_service_of_an_annotated_deployment(operator, apiserver):
    wait_for(lambda: apiserver.get("Service", NS, "web-dapr") is not None, "Service web-dapr applied",
             operator=operator)
    svc = apiserver.get("Service", NS, "web-dapr")
    assert svc["metadata"]["labels"] == {"dapr.io/enabled": "true"}
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["selector"] == {"app": "web"}
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    assert ports == {"dapr-http": (80, 3500), "dapr-grpc": (50001, 50001), "dapr-internal": (50002, 50002),
                     "dapr-metrics": (9090, 9090)}
    owner = svc["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("Deployment", "web", True)


# --------------------------------------------------------------------------------------------------------
# Hot reload: changes in the API server reach the running sidecar
# --------------------------------------------------------------------------------------------------------


def test_hot_reload_adds_a_new_component(web, operator, apiserver):
    pid = web.proc.pid
    apiserver.apply(component("cache", "state.in-memory"))
    wait_for(lambda: components_of(web).get("cache") == "state.in-memory", "cache in metadata", web, operator)
    assert save(web, "cache", "kept", "across status writes").status_code == 204
    assert web.proc.poll() is None and web.proc.pid == pid

    # The operator then writes the new Component's status. That is no change to the resource: the sidecar must
    # not reload the store (which would empty an in-memory one). A later change the sidecar does see proves
    # the status write went through the whole chain before it.
    wait_for(lambda: ready_condition(apiserver, "cache") is not None, "status of cache", operator=operator)
    apiserver.apply(component("cache-marker", "state.in-memory"))
    wait_for(lambda: "cache-marker" in components_of(web), "cache-marker loaded", web, operator)
    assert load(web, "cache", "kept").json() == "across status writes"
    reloads = re.findall(r"component \(re\)loaded component=cache$", web.stderr(), re.M)
    assert len(reloads) == 1, web.stderr()


def test_hot_reload_applies_changed_metadata(web, operator, apiserver, db_path):
    before = f"before-{uuid.uuid4().hex[:6]}"
    assert save(web, "orders", before, {"v": 0}).status_code == 204
    assert f"web||{before}" in sqlite_keys(db_path), "default keyPrefix appid"
    # keyPrefix appid -> name: new writes are stored under `orders||<key>`.
    apiserver.apply(orders_component(key_prefix="name"))
    key = f"after-{uuid.uuid4().hex[:6]}"

    def stored_with_new_prefix() -> bool:
        try:
            save(web, "orders", key, {"v": 1})
        except requests.RequestException:
            return False
        return f"orders||{key}" in sqlite_keys(db_path)

    wait_for(stored_with_new_prefix, "keyPrefix=name applied to orders", web, operator)
    assert load(web, "orders", key).json() == {"v": 1}
    # What was written under the old scheme is still in the database, but not visible under the new one.
    assert load(web, "orders", before).status_code == 204
    assert f"web||{before}" in sqlite_keys(db_path)


def test_hot_reload_follows_scope_changes(web, billing, operator, apiserver):
    apiserver.apply(component("invoices", "state.in-memory", scopes=["billing", "web"]))
    wait_for(lambda: "invoices" in components_of(web), "invoices entering web's scope", web, operator)
    assert roundtrip(web, "invoices")
    apiserver.apply(component("invoices", "state.in-memory", scopes=["billing"]))
    wait_for(lambda: "invoices" not in components_of(web), "invoices leaving web's scope", web, operator)
    assert "invoices" in components_of(billing)


def test_hot_reload_removes_a_deleted_component(web, operator, apiserver):
    apiserver.apply(component("doomed", "state.in-memory"))
    wait_for(lambda: "doomed" in components_of(web), "doomed loaded", web, operator)
    assert apiserver.delete("Component", NS, "doomed")
    wait_for(lambda: "doomed" not in components_of(web), "doomed removed from metadata", web, operator)
    r = load(web, "doomed", "k")
    assert (r.status_code, r.json()["errorCode"]) == (400, "ERR_STATE_STORE_NOT_FOUND")


def test_changes_elsewhere_do_not_reach_the_sidecar(web, operator, apiserver):
    apiserver.apply(component("foreign", "state.in-memory", namespace="other"))
    apiserver.apply(component("billing-only", "state.in-memory", scopes=["billing"]))
    # A change web does see, applied last: once it arrived, the two before it were seen (or skipped) too.
    apiserver.apply(component("marker", "state.in-memory"))
    wait_for(lambda: "marker" in components_of(web), "marker loaded", web, operator)
    loaded = components_of(web)
    assert "foreign" not in loaded and "billing-only" not in loaded, loaded
    assert web.proc.poll() is None, "the sidecar kept running through every change"


# --------------------------------------------------------------------------------------------------------
# Hot reload: a changed component is swapped in only once it is ready; the old one serves until then and stays
# when the new one cannot be built
# --------------------------------------------------------------------------------------------------------

TRAFFIC_WORKERS = 3
# Requests (saves and reads) that must overlap the reload windows for the no-loss claim to mean something.
MIN_REQUESTS_DURING_RELOADS = 20
# Hard stop for the traffic threads, should the test never get to stop them.
TRAFFIC_LIMIT = 60.0


def reloaded_line(name: str) -> str:
    return rf"component \(re\)loaded component={re.escape(name)}$"


def reload_failed_line(name: str) -> str:
    return rf"reloading component failed: (.*) component={re.escape(name)}$"


def log_lines(sc, pattern: str) -> list[str]:
    return re.findall(pattern, sc.stderr(), re.M)


def current_component(apiserver: FakeApiServer, name: str) -> dict:
    """Component `name` of NS as it is now in the API server, without its status (to be changed and re-applied)."""
    obj = apiserver.get("Component", NS, name)
    assert obj is not None, f"Component {name} is not in the API server"
    doc = {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
           "metadata": {"name": name, "namespace": NS}, "spec": obj["spec"]}
    if "scopes" in obj:
        doc["scopes"] = obj["scopes"]
    return doc


def with_metadata(doc: dict, name: str, value: str) -> dict:
    """`doc` with metadata item `name` set to `value` (added or replaced), everything else kept."""
    doc = {**doc, "spec": {**doc["spec"]}}
    items = [m for m in doc["spec"].get("metadata") or [] if m.get("name") != name]
    doc["spec"]["metadata"] = items + [{"name": name, "value": value}]
    return doc


class Traffic:
    """Worker threads that each save a fresh key in `store` and read it back, until stopped. Every request is
    recorded as (op, started, ended, ok, detail), monotonic times, so a test can count what overlapped a window."""

    def __init__(self, sc, store: str, workers: int = TRAFFIC_WORKERS):
        self.sc, self.store = sc, store
        self.records: list[tuple[str, float, float, bool, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(w,), name=f"traffic-{store}-{w}", daemon=True)
                         for w in range(workers)]

    def start(self) -> "Traffic":
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not alive, f"traffic threads did not stop: {alive}"

    def completed(self) -> int:
        with self._lock:
            return len(self.records)

    def failures(self) -> list[tuple[str, float, float, bool, str]]:
        with self._lock:
            return [r for r in self.records if not r[3]]

    def overlapping(self, start: float, end: float) -> int:
        with self._lock:
            return sum(1 for _, began, ended, _, _ in self.records if began <= end and ended >= start)

    def _record(self, op: str, began: float, ok: bool, detail: str) -> None:
        with self._lock:
            self.records.append((op, began, time.monotonic(), ok, detail))

    def _run(self, worker: int) -> None:
        deadline = time.monotonic() + TRAFFIC_LIMIT
        url = self.sc.url(f"/v1.0/state/{self.store}")
        with requests.Session() as http:
            i = 0
            while not self._stop.is_set() and time.monotonic() < deadline:
                key, value = f"traffic-{worker}-{i}-{uuid.uuid4().hex[:6]}", {"worker": worker, "i": i}
                i += 1
                began = time.monotonic()
                try:
                    r = http.post(url, json=[{"key": key, "value": value}], timeout=5)
                    ok, detail = r.status_code == 204, f"{r.status_code} {r.text}"
                except requests.RequestException as e:
                    ok, detail = False, repr(e)
                self._record("save " + key, began, ok, detail)
                if not ok:
                    continue
                began = time.monotonic()
                try:
                    r = http.get(f"{url}/{key}", timeout=5)
                    ok = r.status_code == 200 and r.json() == value
                    detail = f"{r.status_code} {r.text}"
                except (requests.RequestException, ValueError) as e:
                    ok, detail = False, repr(e)
                self._record("read " + key, began, ok, detail)


def test_hot_reload_during_traffic_loses_no_request(web, operator, apiserver):
    # Re-apply orders as it is now (an earlier test switched it to keyPrefix=name) and change busyTimeout only:
    # a real reload, and keys written before it stay visible after it.
    base = current_component(apiserver, "orders")
    pattern = reloaded_line("orders")
    traffic = Traffic(web, "orders").start()
    windows: list[tuple[float, float]] = []
    try:
        wait_for(lambda: traffic.completed() >= 20, "traffic running before the reloads", web, operator)
        for busy in ("3s", "4s", "5s"):
            before = len(log_lines(web, pattern))
            began = time.monotonic()
            apiserver.apply(with_metadata(base, "busyTimeout", busy))
            wait_for(lambda: len(log_lines(web, pattern)) > before, f"orders reloaded with busyTimeout={busy}",
                     web, operator)
            windows.append((began, time.monotonic()))
        after = traffic.completed()
        wait_for(lambda: traffic.completed() >= after + 20, "traffic running after the reloads", web, operator)
    finally:
        traffic.stop()
    failures = traffic.failures()
    during = sum(traffic.overlapping(a, b) for a, b in windows)
    assert not failures, (f"{len(failures)} of {traffic.completed()} requests ({during} during the reloads) failed; "
                          f"first ones: {failures[:3]}\nsidecar stderr:\n{web.stderr()[-4000:]}")
    assert during >= MIN_REQUESTS_DURING_RELOADS, f"only {during} requests overlapped the reloads"
    assert roundtrip(web, "orders")


def test_hot_reload_keeps_the_old_component_when_the_new_one_fails(web, operator, apiserver):
    # An in-memory store: its data survives only if the very instance that holds it keeps serving.
    good = component("ledger", "state.in-memory")
    apiserver.apply(good)
    wait_for(lambda: components_of(web).get("ledger") == "state.in-memory", "ledger loaded", web, operator)
    key, value = f"kept-{uuid.uuid4().hex[:6]}", {"balance": 42}
    assert save(web, "ledger", key, value).status_code == 204

    variants = [
        # No such component type: the operator's validation rejects it too.
        ("unknown type", component("ledger", "state.nope"), "state.nope"),
        # A known type whose initialisation fails: the database directory cannot be created.
        ("failing initialisation",
         component("ledger", "state.sqlite", [{"name": "connectionString", "value": "/proc/nope/ledger.db"}]),
         "/proc/nope"),
    ]
    failed = reload_failed_line("ledger")
    try:
        for what, bad, why in variants:
            before = len(log_lines(web, failed))
            apiserver.apply(bad)
            wait_for(lambda: len(log_lines(web, failed)) > before, f"ledger reload failing ({what})", web, operator)
            reason = log_lines(web, failed)[-1]
            assert why in reason, f"{what}: {reason}"
            if bad["spec"]["type"] == "state.nope":
                wait_for(lambda: (ready_condition(apiserver, "ledger") or {}).get("reason") == "UnknownType",
                         "operator marking ledger UnknownType", operator=operator)
                assert ready_condition(apiserver, "ledger")["status"] == "False"

            # The old instance still serves: its data, new writes, and its place in the metadata.
            r = load(web, "ledger", key)
            assert r.status_code == 200 and r.json() == value, f"{what}: {r.status_code} {r.text}"
            key2, value2 = f"after-{uuid.uuid4().hex[:6]}", {"what": what}
            r = save(web, "ledger", key2, value2)
            assert r.status_code == 204, f"{what}: {r.status_code} {r.text}"
            assert load(web, "ledger", key2).json() == value2
            assert components_of(web).get("ledger") == "state.in-memory", what
            assert web.proc.poll() is None
    finally:
        # A good spec again, so that nothing after this test meets a broken ledger.
        reloads = len(log_lines(web, reloaded_line("ledger")))
        apiserver.apply(good)
        restored = poll_until(lambda: len(log_lines(web, reloaded_line("ledger"))) > reloads,
                              timeout=HOT_RELOAD_TIMEOUT)
    assert restored, f"ledger not reloaded from the good spec\nsidecar stderr:\n{web.stderr()[-4000:]}"
    assert components_of(web).get("ledger") == "state.in-memory"
    assert roundtrip(web, "ledger")
