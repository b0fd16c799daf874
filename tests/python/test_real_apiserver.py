"""The control plane against a REAL Kubernetes API server: etcd, kube-apiserver and kube-controller-manager run
here as processes (no nodes, no container runtime, so no pod ever starts), and tandem's operator, injector and
sidecar run outside it the way they would inside, each with the credentials the chart gives it.

What this proves beyond the mocked API servers of the Rust tests and fake_apiserver.py:
- config/install.yaml passes the API server's server-side apply validation, and `helm install` of
  charts/tandem succeeds; the generated CRDs are accepted (structural schemas) and Established;
- Dapr YAML as users write it (the samples, Subscription v1alpha1 and v2alpha1, Resiliency, HTTPEndpoint)
  validates against those CRDs, and what the schemas forbid is rejected;
- `tandem operator` works with ONLY the chart's RBAC (a token of its ServiceAccount): Lease leader election,
  Ready conditions and Events, the `<app-id>-dapr` Service, garbage-collected with its Deployment;
- `tandem injector`, with only its ServiceAccount's RBAC, patches the chart's MutatingWebhookConfiguration with
  its own CA, and the API server itself calls it through the chart's Service (endpoint routing) when a pod is
  created: the stored pod has `daprd`; an invalid app-id is refused by the API server with the injector's
  message;
- a sidecar started with the injected container's own arguments authenticates to the operator with a
  pod-bound ServiceAccount token (a real TokenReview), gets its namespace's in-scope Components with a
  secretKeyRef resolved from a real Secret, uses Redis through them, and hot-reloads kubectl changes.

Binaries: kube-apiserver, kube-controller-manager, kubectl and etcd from $TANDEM_KUBE_BIN (default
~/.cache/tandem-kube/bin, which scripts/kube-control-plane.sh fills from Debian's archive), else PATH. Without
them the module is skipped with a message saying so."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator, Optional

import pytest
import requests

from conftest import (REPO, REDIS_HOST, Sidecar, free_port, poll_until, read_text, redis_command, terminate,
                      wait_healthy)

KUBE_BIN = Path(os.environ.get("TANDEM_KUBE_BIN") or Path.home() / ".cache" / "tandem-kube" / "bin")
TOOLS = ("kube-apiserver", "kube-controller-manager", "kubectl", "etcd")
SYSTEM_NS = "tandem-system"
APP_NS = "shop"
WAIT = 20.0

# The API server's certificate is its own self-signed one; requests to it skip verification.
pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")


def tool(name: str) -> Optional[str]:
    candidate = KUBE_BIN / name
    if candidate.exists() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which(name)


_missing = [t for t in TOOLS if tool(t) is None]
if _missing:
    pytest.skip(
        f"skipping real API server tests: {', '.join(_missing)} not found in {KUBE_BIN} or PATH "
        "(scripts/kube-control-plane.sh builds them)",
        allow_module_level=True,
    )


def host_ip() -> Optional[str]:
    """A non-loopback IPv4 address of this machine: Endpoints may not point at loopback."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True)
    match = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out.stdout)
    return match.group(1) if match else None


class Background:
    """A process whose output goes to a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, args: list, log: Path, env: Optional[dict] = None):
        self.log = log
        self.proc = subprocess.Popen(args, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                     env={**os.environ, "NO_COLOR": "1", **(env or {})})

    def logs(self) -> str:
        return read_text(self.log)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        terminate(self.proc)


def wait_for(what: str, predicate, *procs: Background, timeout: float = WAIT) -> None:
    def check():
        for p in procs:
            if not p.alive():
                pytest.fail(f"{p.log.name} exited with {p.proc.returncode} while waiting for {what}:\n{p.logs()}")
        return predicate()

    if not poll_until(check, timeout=timeout, interval=0.2):
        logs = "\n".join(f"--- {p.log.name}\n{p.logs()[-4000:]}" for p in procs)
        pytest.fail(f"timed out after {timeout}s waiting for {what}\n{logs}")


class Cluster:
    """etcd + kube-apiserver + kube-controller-manager (service accounts, tokens, garbage collection, namespaces)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.admin_token = "admin-" + uuid.uuid4().hex
        self.procs: list[Background] = []
        self.kubeconfig = self.write_kubeconfig("admin", self.admin_token)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def write_kubeconfig(self, name: str, token: str, namespace: str = "default") -> Path:
        path = self.workdir / f"{name}.kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "t",
            "clusters": [{"name": "t", "cluster": {"server": self.server, "insecure-skip-tls-verify": True}}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": "t", "context": {"cluster": "t", "user": name, "namespace": namespace}}],
        }))
        return path

    def start(self) -> "Cluster":
        w = self.workdir
        subprocess.run(["openssl", "genrsa", "-out", str(w / "sa.key"), "2048"], check=True, capture_output=True)
        subprocess.run(["openssl", "rsa", "-in", str(w / "sa.key"), "-pubout", "-out", str(w / "sa.pub")],
                       check=True, capture_output=True)
        (w / "tokens.csv").write_text(f"{self.admin_token},admin,admin,system:masters\n")
        etcd_port, peer_port = free_port(), free_port()
        self.procs.append(Background([
            tool("etcd"), "--data-dir", str(w / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
        ], w / "etcd.log"))
        args = [
            tool("kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--secure-port={self.port}", "--bind-address=127.0.0.1", f"--cert-dir={w / 'certs'}",
            "--insecure-port=0", f"--token-auth-file={w / 'tokens.csv'}", "--authorization-mode=RBAC",
            f"--service-account-key-file={w / 'sa.pub'}", f"--service-account-signing-key-file={w / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc", "--service-cluster-ip-range=10.96.0.0/16",
            # Webhooks are called through their Service's Endpoints (there is no kube-proxy here).
            "--enable-aggregator-routing=true",
        ]
        if host_ip():
            args.append(f"--advertise-address={host_ip()}")
        self.procs.append(Background(args, w / "kube-apiserver.log"))

        def ready() -> bool:
            try:
                return self.api("GET", "/readyz").status_code == 200
            except requests.RequestException:
                return False

        wait_for("kube-apiserver /readyz", ready, *self.procs, timeout=90)
        self.procs.append(Background([
            tool("kube-controller-manager"), f"--kubeconfig={self.kubeconfig}", "--leader-elect=false",
            "--controllers=serviceaccount,serviceaccount-token,garbagecollector,namespace",
            f"--service-account-private-key-file={w / 'sa.key'}", "--port=0", "--secure-port=0",
        ], w / "kube-controller-manager.log"))
        return self

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()

    def api(self, method: str, path: str, body: Optional[dict] = None, token: Optional[str] = None):
        return requests.request(method, self.server + path, json=body, verify=False, timeout=10,
                                headers={"Authorization": f"Bearer {token or self.admin_token}"})

    def kubectl(self, *args: str, stdin: Optional[str] = None, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run([tool("kubectl"), f"--kubeconfig={self.kubeconfig}", *args], input=stdin,
                             capture_output=True, text=True, timeout=60)
        if check and out.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} failed ({out.returncode}):\n{out.stderr}{out.stdout}")
        return out

    def apply(self, *docs: dict) -> None:
        self.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(docs)}))

    def get(self, *args: str) -> Optional[dict]:
        out = self.kubectl("get", *args, "-o", "json", check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def token(self, namespace: str, service_account: str, audience: str = "https://kubernetes.default.svc",
              pod: Optional[dict] = None) -> str:
        """A TokenRequest for the ServiceAccount (bound to `pod` if given), as the kubelet would project it."""
        spec: dict = {"audiences": [audience], "expirationSeconds": 3600}
        if pod is not None:
            spec["boundObjectRef"] = {"kind": "Pod", "apiVersion": "v1", "name": pod["metadata"]["name"],
                                      "uid": pod["metadata"]["uid"]}
        r = self.api("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
                     {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
        assert r.status_code == 201, r.text
        return r.json()["status"]["token"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("apiserver"))
    try:
        yield c.start()
    finally:
        c.stop()


@pytest.fixture(scope="module")
def installed(cluster) -> Cluster:
    """The chart installed with `helm install`, after config/install.yaml passed a server-side dry run."""
    cluster.kubectl("create", "namespace", SYSTEM_NS)
    out = cluster.kubectl("apply", "--server-side", "--dry-run=server", "-f", str(REPO / "config/install.yaml"),
                          check=False)
    assert out.returncode == 0, f"config/install.yaml rejected by the API server:\n{out.stderr}{out.stdout}"
    helm = os.environ.get("HELM") or str(REPO / ".venv/bin/helm")
    if not Path(helm).exists():
        helm = shutil.which("helm") or pytest.fail("helm not found (scripts/test.sh installs it into .venv)")
    out = subprocess.run([helm, "install", "tandem", str(REPO / "charts/tandem"), "--namespace", SYSTEM_NS,
                          "--kubeconfig", str(cluster.kubeconfig)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"helm install failed:\n{out.stderr}{out.stdout}"
    cluster.kubectl("wait", "--for=condition=established", "--timeout=30s", "crd",
                    "components.dapr.io", "subscriptions.dapr.io", "configurations.dapr.io",
                    "resiliencies.dapr.io", "httpendpoints.dapr.io")
    cluster.kubectl("create", "namespace", APP_NS)
    # The service accounts exist once the controller-manager made them.
    wait_for("ServiceAccount shop/default", lambda: cluster.get("serviceaccount", "default", "-n", APP_NS),
             *cluster.procs)
    return cluster


def test_install_yaml_and_chart_install_on_a_real_api_server(installed):
    crds = installed.get("crd")["items"]
    dapr = {c["metadata"]["name"]: c for c in crds if c["spec"]["group"] == "dapr.io"}
    assert sorted(dapr) == ["components.dapr.io", "configurations.dapr.io", "httpendpoints.dapr.io",
                            "resiliencies.dapr.io", "subscriptions.dapr.io"]
    subs = dapr["subscriptions.dapr.io"]["spec"]["versions"]
    assert {v["name"]: v["storage"] for v in subs} == {"v1alpha1": False, "v2alpha1": True}
    webhook = installed.get("mutatingwebhookconfiguration", "tandem-sidecar-injector")
    assert webhook["webhooks"][0]["failurePolicy"] == "Ignore"
    for name in ("tandem-operator", "tandem-sidecar-injector"):
        assert installed.get("deployment", name, "-n", SYSTEM_NS) is not None
    ports = installed.get("service", "tandem-api", "-n", SYSTEM_NS)["spec"]["ports"]
    assert [(p["port"], p["protocol"]) for p in ports] == [(443, "TCP")]


DAPR_YAML = """
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: pubsub, namespace: shop}
spec:
  type: pubsub.redis
  version: v1
  ignoreErrors: true
  initTimeout: 10s
  metadata:
  - {name: redisHost, value: "localhost:6379"}
  - name: redisPassword
    secretKeyRef: {name: redis, key: redis-password}
auth: {secretStore: kubernetes}
scopes: [billing]
---
apiVersion: dapr.io/v1alpha1
kind: Subscription
metadata: {name: orders-v1, namespace: shop}
spec: {topic: orders, route: /orders, pubsubname: pubsub, deadLetterTopic: poison, bulkSubscribe: {enabled: true}}
scopes: [web]
---
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata: {name: orders-v2, namespace: shop}
spec:
  topic: orders
  pubsubname: pubsub
  routes:
    rules:
    - {match: 'event.type == "widget"', path: /widgets}
    default: /orders
  metadata: {rawPayload: "true"}
---
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: resiliency, namespace: shop}
spec:
  policies:
    timeouts: {general: 5s}
    retries:
      retryForever: {policy: exponential, maxInterval: 15s, maxRetries: -1}
    circuitBreakers:
      simpleCB: {maxRequests: 1, timeout: 30s, trip: consecutiveFailures >= 5}
  targets:
    apps:
      billing: {timeout: general, retry: retryForever, circuitBreaker: simpleCB}
    components:
      statestore:
        outbound: {timeout: general, retry: retryForever}
---
apiVersion: v1
kind: Secret
metadata: {name: gh, namespace: shop}
stringData: {token: "Bearer not-a-real-token"}
---
apiVersion: dapr.io/v1alpha1
kind: HTTPEndpoint
metadata: {name: github, namespace: shop}
spec:
  baseUrl: https://api.github.com
  headers:
  - {name: Accept, value: application/json}
  - name: Authorization
    secretKeyRef: {name: gh, key: token}
---
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata: {name: appconfig, namespace: shop}
spec:
  tracing: {samplingRate: "1", zipkin: {endpointAddress: "http://zipkin.default.svc.cluster.local:9411/api/v2/spans"}}
  metric: {enabled: true}
  accessControl:
    defaultAction: deny
    trustDomain: public
    policies:
    - appId: web
      defaultAction: allow
      namespace: shop
      operations:
      - {name: /orders, httpVerb: [POST], action: allow}
"""


def test_dapr_yaml_validates_against_the_crds(installed):
    out = installed.kubectl("apply", "-f", "-", stdin=DAPR_YAML, check=False)
    assert out.returncode == 0, out.stderr
    stored = installed.get("subscriptions.v1alpha1.dapr.io", "orders-v1", "-n", APP_NS)
    assert stored["spec"]["route"] == "/orders"
    out = installed.kubectl("apply", "-k", str(REPO / "config/samples"), check=False)
    assert out.returncode == 0, out.stderr
    # What the schemas forbid, refused by the API server itself (kubectl's own validation is off): a Component
    # without spec.type.
    bad = {"apiVersion": "dapr.io/v1alpha1", "kind": "Component", "metadata": {"name": "bad", "namespace": APP_NS},
           "spec": {"version": "v1"}}
    out = installed.kubectl("apply", "--validate=false", "-f", "-", stdin=json.dumps(bad), check=False)
    assert out.returncode != 0 and "spec.type: Required value" in out.stderr, out.stderr


@pytest.fixture(scope="module")
def operator(installed, tandem) -> Iterator[Background]:
    token = installed.token(SYSTEM_NS, "tandem-operator")
    kubeconfig = installed.write_kubeconfig("operator", token, SYSTEM_NS)
    port, health = free_port(), free_port()
    op = Background([tandem, "operator", "--api-port", str(port), "--health-port", str(health), "--leader-elect"],
                    installed.workdir / "operator.log",
                    {"KUBECONFIG": str(kubeconfig), "POD_NAMESPACE": SYSTEM_NS, "POD_NAME": "tandem-operator-0"})
    op.api_port = port

    def ready() -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{health}/readyz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    wait_for("operator /readyz", ready, op)
    yield op
    op.stop()


def annotated_deployment(name: str, app_id: str) -> dict:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": APP_NS},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name},
                                      "annotations": {"dapr.io/enabled": "true", "dapr.io/app-id": app_id}},
                         "spec": {"containers": [{"name": "app", "image": "app:1"}]}},
        },
    }


def condition(obj: Optional[dict]) -> Optional[dict]:
    conds = ((obj or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conds if c["type"] == "Ready"), None)


def test_operator_with_the_charts_rbac_reconciles(installed, operator):
    wait_for("the operator's Lease",
             lambda: ((installed.get("lease", "tandem-operator", "-n", SYSTEM_NS) or {}).get("spec") or {})
             .get("holderIdentity") == "tandem-operator-0", operator)
    installed.apply({"apiVersion": "dapr.io/v1alpha1", "kind": "Component",
                     "metadata": {"name": "nope", "namespace": APP_NS},
                     "spec": {"type": "state.nope", "version": "v1", "metadata": []}, "scopes": ["ghost"]})
    wait_for("Ready conditions", lambda: condition(installed.get("component", "nope", "-n", APP_NS)) is not None
             and condition(installed.get("component", "pubsub", "-n", APP_NS)) is not None, operator)
    pubsub = condition(installed.get("component", "pubsub", "-n", APP_NS))
    assert pubsub["status"] == "False" and "shop/redis" in pubsub["message"], pubsub
    nope = condition(installed.get("component", "nope", "-n", APP_NS))
    assert nope["status"] == "False" and "state.nope" in nope["message"], nope
    events = installed.get("events", "-n", APP_NS)["items"]
    assert any(e["involvedObject"]["name"] == "nope" and e["type"] == "Warning" for e in events), events

    installed.apply(annotated_deployment("web", "web"))
    wait_for("Service web-dapr", lambda: installed.get("service", "web-dapr", "-n", APP_NS), operator)
    svc = installed.get("service", "web-dapr", "-n", APP_NS)
    assert svc["spec"]["clusterIP"] == "None"
    assert sorted((p["port"], p["targetPort"]) for p in svc["spec"]["ports"]) == [
        (80, 3500), (9090, 9090), (50001, 50001), (50002, 50002)]
    assert svc["spec"]["selector"] == {"app": "web"}
    assert svc["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    # The garbage collector removes it with its Deployment, through the owner reference.
    installed.kubectl("delete", "deployment", "web", "-n", APP_NS)
    wait_for("Service web-dapr garbage-collected", lambda: installed.get("service", "web-dapr", "-n", APP_NS) is None,
             operator)
    assert "ERROR" not in operator.logs(), operator.logs()


@pytest.fixture(scope="module")
def injector(installed, tandem) -> Iterator[Background]:
    ip = host_ip()
    if ip is None:
        pytest.skip("no non-loopback IPv4 address: the API server cannot be routed to the injector")
    token = installed.token(SYSTEM_NS, "tandem-injector")
    kubeconfig = installed.write_kubeconfig("injector", token, SYSTEM_NS)
    port, health = free_port(), free_port()
    inj = Background([tandem, "injector", "--port", str(port), "--health-port", str(health),
                      "--sidecar-image", "tandem:test", "--enable-mtls=true"],
                     installed.workdir / "injector.log", {"KUBECONFIG": str(kubeconfig), "POD_NAMESPACE": SYSTEM_NS})
    # The chart's Service has a selector, but no pod runs here: its Endpoints point at this process instead (no
    # endpoints controller runs to overwrite them).
    installed.apply({"apiVersion": "v1", "kind": "Endpoints",
                     "metadata": {"name": "tandem-sidecar-injector", "namespace": SYSTEM_NS},
                     "subsets": [{"addresses": [{"ip": ip}],
                                  "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]})

    def ca_bundle() -> Optional[str]:
        webhook = installed.get("mutatingwebhookconfiguration", "tandem-sidecar-injector")
        return webhook["webhooks"][0]["clientConfig"].get("caBundle")

    wait_for("the injector's caBundle", ca_bundle, inj)
    assert "BEGIN CERTIFICATE" in base64.b64decode(ca_bundle()).decode()
    yield inj
    inj.stop()


def pod(name: str, annotations: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": APP_NS,
                                                             "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "app:1", "ports": [{"containerPort": 8080}]}]}}


def test_the_api_server_calls_the_injector_for_annotated_pods(installed, injector):
    installed.apply(pod("plain", {}))
    assert [c["name"] for c in installed.get("pod", "plain", "-n", APP_NS)["spec"]["containers"]] == ["app"]

    installed.apply(pod("web", {"dapr.io/enabled": "true", "dapr.io/app-id": "web", "dapr.io/app-port": "8080",
                                "dapr.io/log-level": "debug"}))
    stored = installed.get("pod", "web", "-n", APP_NS)
    containers = {c["name"]: c for c in stored["spec"]["containers"]}
    assert sorted(containers) == ["app", "daprd"], injector.logs()
    daprd = containers["daprd"]
    assert daprd["image"] == "tandem:test"
    assert daprd["args"][:1] == ["sidecar"] and "--mode" in daprd["args"]
    # The chart's mtls.enabled, and no daprsystem Configuration saying otherwise: the sidecar gets mTLS.
    assert "--enable-mtls=true" in daprd["args"], daprd["args"]
    assert stored["metadata"]["labels"]["dapr.io/sidecar-injected"] == "true"
    app_env = {e["name"]: e.get("value") for e in containers["app"]["env"]}
    assert app_env["DAPR_HTTP_PORT"] == "3500" and app_env["DAPR_GRPC_PORT"] == "50001"

    out = installed.kubectl("apply", "-f", "-", check=False, stdin=json.dumps(
        pod("bad", {"dapr.io/enabled": "true", "dapr.io/app-id": "Not_Valid!"})))
    assert out.returncode != 0, "a pod with an invalid app-id was admitted"
    assert 'admission webhook "sidecar-injector.dapr.io" denied the request: invalid app id' in out.stderr, out.stderr


def injected_args(stored_pod: dict, ports: dict, control_plane: str) -> list:
    """The injected daprd's arguments, with the ports and operator address of this machine."""
    args = next(c for c in stored_pod["spec"]["containers"] if c["name"] == "daprd")["args"]
    out, i = [], 0
    while i < len(args):
        flag = args[i]
        if flag in ports:
            out += [flag, str(ports[flag])]
            i += 2
        elif flag == "--control-plane-address":
            out += [flag, control_plane]
            i += 2
        else:
            out.append(flag)
            i += 1
    return out


def test_injected_sidecar_gets_components_from_the_operator(installed, operator, injector, tandem, redis_prefix):
    installed.apply(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis-conn", "namespace": APP_NS},
         "stringData": {"host": REDIS_HOST}},
        {"apiVersion": "dapr.io/v1alpha1", "kind": "Component", "metadata": {"name": "orders", "namespace": APP_NS},
         "spec": {"type": "state.redis", "version": "v1", "metadata": [
             {"name": "redisHost", "secretKeyRef": {"name": "redis-conn", "key": "host"}},
             {"name": "keyPrefix", "value": redis_prefix}]},
         "scopes": ["web"]},
    )
    stored = installed.get("pod", "web", "-n", APP_NS)
    token_file = installed.workdir / "web.token"
    token_file.write_text(installed.token(APP_NS, "default", "tandem-api", pod=stored))
    ports = {"--dapr-http-port": free_port(), "--dapr-grpc-port": free_port(),
             "--dapr-internal-grpc-port": free_port(), "--dapr-public-port": free_port(),
             "--metrics-port": free_port(), "--app-port": free_port()}
    workdir = installed.workdir / "web-sidecar"
    workdir.mkdir()
    args = injected_args(stored, ports, f"127.0.0.1:{operator.api_port}")
    env = {**os.environ, "NO_COLOR": "1", "NAMESPACE": APP_NS, "POD_NAME": "web",
           "TANDEM_OPERATOR_TOKEN_FILE": str(token_file), "KUBECONFIG": str(workdir / "none"),
           "KUBERNETES_SERVICE_HOST": "", "KUBERNETES_SERVICE_PORT": ""}
    # The injected sidecar waits for its app's port (dapr.io/app-port): something listens there.
    app = socket.socket()
    app.bind(("127.0.0.1", ports["--app-port"]))
    app.listen(16)
    proc = subprocess.Popen([tandem, *args], cwd=workdir, env=env, stdout=open(workdir / "stdout.log", "wb"),
                            stderr=open(workdir / "stderr.log", "wb"))
    sc = Sidecar(proc, "web", ports["--dapr-http-port"], ports["--dapr-grpc-port"], ports["--metrics-port"],
                 workdir, None)
    try:
        wait_healthy(sc)

        def components() -> set:
            return {c["name"] for c in requests.get(sc.url("/v1.0/metadata"), timeout=2).json().get("components", [])}

        assert poll_until(lambda: "orders" in components(), timeout=WAIT), (components(), sc.stderr())
        # Out of scope: `pubsub` (billing; its Secret does not exist, which would fail web's whole list, as in
        # Dapr) and the samples' components (orders).
        assert not {"pubsub", "statestore", "localsecretstore"} & components()
        endpoints = requests.get(sc.url("/v1.0/metadata"), timeout=2).json().get("httpEndpoints", [])
        assert [e["name"] for e in endpoints] == ["github"], endpoints
        r = requests.post(sc.url("/v1.0/state/orders"), json=[{"key": "k1", "value": {"n": 1}}], timeout=5)
        assert r.status_code == 204, r.text
        assert redis_command("EXISTS", f"{redis_prefix}||k1") == 1
        assert requests.get(sc.url("/v1.0/state/orders/k1"), timeout=5).json() == {"n": 1}

        # Hot reload from kubectl: a new in-scope component arrives, a deleted one goes, without a restart.
        installed.apply({"apiVersion": "dapr.io/v1alpha1", "kind": "Component",
                         "metadata": {"name": "cache", "namespace": APP_NS},
                         "spec": {"type": "state.in-memory", "version": "v1", "metadata": []}})
        assert poll_until(lambda: "cache" in components(), timeout=WAIT), sc.stderr()
        installed.kubectl("delete", "component", "cache", "-n", APP_NS)
        assert poll_until(lambda: "cache" not in components(), timeout=WAIT), sc.stderr()
        assert sc.proc.poll() is None
    finally:
        sc.stop()
        app.close()


def mesh_sidecar(installed, operator, tandem, app_id: str, config: str, app_port: Optional[int]) -> Sidecar:
    """A kubernetes-mode sidecar with --enable-mtls for the pod `app_id`, authenticated by a token bound to it."""
    stored = installed.get("pod", app_id, "-n", APP_NS)
    workdir = installed.workdir / f"mesh-{app_id}"
    workdir.mkdir()
    token_file = workdir / "token"
    token_file.write_text(installed.token(APP_NS, "default", "tandem-api", pod=stored))
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    args = [tandem, "sidecar", "--mode", "kubernetes", "--app-id", app_id, "--config", config,
            "--control-plane-address", f"127.0.0.1:{operator.api_port}", "--enable-mtls",
            "--dapr-http-port", str(http_port), "--dapr-grpc-port", str(grpc_port),
            "--dapr-internal-grpc-port", str(free_port()), "--metrics-port", str(metrics_port),
            "--log-level", "debug"]
    if app_port:
        args += ["--app-port", str(app_port)]
    env = {**os.environ, "NO_COLOR": "1", "NAMESPACE": APP_NS, "POD_NAME": app_id,
           "TANDEM_OPERATOR_TOKEN_FILE": str(token_file), "KUBECONFIG": str(workdir / "none"),
           "KUBERNETES_SERVICE_HOST": "", "KUBERNETES_SERVICE_PORT": ""}
    proc = subprocess.Popen(args, cwd=workdir, env=env, stdout=open(workdir / "stdout.log", "wb"),
                            stderr=open(workdir / "stderr.log", "wb"))
    sc = Sidecar(proc, app_id, http_port, grpc_port, metrics_port, workdir, None)
    wait_healthy(sc)
    return sc


def test_operator_issues_workload_certificates_and_sidecars_prove_who_calls(installed, operator, tandem,
                                                                            tmp_path):
    """The operator as certificate authority for pods of a real API server: the trust bundle is generated into
    the chart's Secret and ConfigMap; sidecars get SPIFFE certificates for the app of the pod their token is bound
    to, call each other over mTLS, renew their 10-second certificates under traffic without losing a call, and a
    caller claiming another app id in its headers is judged by its certificate."""
    from conftest import start_app

    secret = installed.get("secret", "dapr-trust-bundle", "-n", SYSTEM_NS)
    assert secret and {"ca.crt", "issuer.crt", "issuer.key"} <= set(secret["data"]), secret
    roots = installed.get("configmap", "dapr-trust-bundle", "-n", SYSTEM_NS)
    assert roots["data"]["ca.crt"] == base64.b64decode(secret["data"]["ca.crt"]).decode()

    db = str(tmp_path / "nr.db")
    nr = {"component": "sqlite", "version": "v1", "configuration": {"connectionString": db, "updateInterval": "2s"}}
    installed.apply(
        {"apiVersion": "dapr.io/v1alpha1", "kind": "Configuration",
         "metadata": {"name": "daprsystem", "namespace": SYSTEM_NS},
         "spec": {"mtls": {"enabled": True, "workloadCertTTL": "10s", "allowedClockSkew": "1m"}}},
        {"apiVersion": "dapr.io/v1alpha1", "kind": "Configuration", "metadata": {"name": "meshopen", "namespace": APP_NS},
         "spec": {"nameResolution": nr}},
        {"apiVersion": "dapr.io/v1alpha1", "kind": "Configuration", "metadata": {"name": "meshlocked", "namespace": APP_NS},
         "spec": {"nameResolution": nr, "accessControl": {"defaultAction": "deny", "trustDomain": "public", "policies": [
             {"appId": "alpha", "namespace": APP_NS, "trustDomain": "public", "defaultAction": "allow"}]}}},
    )
    for name, config in (("alpha", "meshopen"), ("beta", "meshlocked"), ("mallory", "meshopen")):
        installed.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": name, "namespace": APP_NS, "annotations": {"dapr.io/app-id": name, "dapr.io/config": config}},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]}})
    # The operator's cache has the Configurations before certificates are asked for.
    wait_for("daprsystem in the operator's cache", lambda: installed.get("configuration", "daprsystem", "-n", SYSTEM_NS),
             operator)
    time.sleep(1)
    alpha_app = start_app("echo_http.py", "alpha", tmp_path)
    beta_app = start_app("echo_http.py", "beta", tmp_path)
    sidecars = []
    try:
        alpha = mesh_sidecar(installed, operator, tandem, "alpha", "meshopen", alpha_app.port)
        beta = mesh_sidecar(installed, operator, tandem, "beta", "meshlocked", beta_app.port)
        mallory = mesh_sidecar(installed, operator, tandem, "mallory", "meshopen", None)
        sidecars = [alpha, beta, mallory]

        r = requests.get(alpha.url("/v1.0/invoke/beta/method/hello"), headers={"dapr-caller-app-id": "root"},
                         timeout=15)
        assert r.status_code == 200, (r.text, beta.stderr()[-3000:])
        assert r.json()["headers"]["dapr-caller-app-id"] == "alpha"

        r = requests.get(mallory.url("/v1.0/invoke/beta/method/hello"), headers={"dapr-caller-app-id": "alpha"},
                         timeout=15)
        assert r.status_code == 403, r.text
        assert "spiffe://public/ns/shop/mallory" in r.json()["message"]

        # Rotation under traffic: 10 s certificates renewed at 7 s; 25 s of calls, none lost.
        failures, calls = [], 0
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            r = requests.post(alpha.url("/v1.0/invoke/beta/method/tick"), data=str(calls), timeout=15)
            calls += 1
            if r.status_code != 200:
                failures.append((r.status_code, r.text))
            time.sleep(0.05)
        assert not failures, failures[:5]
        for sc in (alpha, beta):
            renewals = sc.stderr().count("workload certificate renewed") + sc.stdout().count(
                "workload certificate renewed")
            assert renewals >= 2, (sc.app_id, renewals, sc.stderr()[-2000:])
        # A first call over a new connection, long after the first certificates expired: both sides present
        # renewed ones.
        r = requests.get(beta.url("/v1.0/invoke/alpha/method/late"), timeout=15)
        assert r.status_code == 200, r.text
        assert r.json()["headers"]["dapr-caller-app-id"] == "beta"
    finally:
        for sc in sidecars:
            sc.stop()
        alpha_app.stop()
        beta_app.stop()


def test_the_operator_refuses_certificates_to_tokens_bound_to_no_pod(installed, operator):
    token = installed.token(APP_NS, "default", "tandem-api")
    r = requests.post(f"http://127.0.0.1:{operator.api_port}/v1/certificate", json={"csr": "x"},
                      headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 403, r.text
    assert r.json()["errorCode"] == "ERR_PERMISSION_DENIED" and "not bound to a pod" in r.json()["message"]
    r = requests.get(f"http://127.0.0.1:{operator.api_port}/v1/resources?appId=web",
                     headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 403, r.text
