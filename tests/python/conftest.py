"""Shared fixtures for tandem's Python integration tests.

Each test module starts one or more real `tandem sidecar` processes (usually once per module: startup is
cheap but not free) and talks to them over HTTP with `requests` or over gRPC with the official Dapr Python
SDK.

Binary: $TANDEM_BIN, else $CARGO_TARGET_DIR/debug/tandem, else <repo>/target/debug/tandem. Build it first:
    export CARGO_TARGET_DIR=/root/.cache/tandem-target; cargo build

How the SDK is pointed at a sidecar
-----------------------------------
`DaprClient()` first polls `GET http://<DAPR_RUNTIME_HOST>:<DAPR_HTTP_PORT>/v1.0/healthz/outbound`
(dapr/clients/health.py reads `settings.DAPR_HTTP_PORT` even when an explicit gRPC `address=` is given),
then adds a `dapr-api-token` interceptor when `settings.DAPR_API_TOKEN` is truthy — both read at client
construction. Older SDKs copied the environment into `dapr.conf.settings` once at import; 1.19 resolves
the environment on every read but lets an attribute assigned on the `settings` instance take precedence.
One pytest process talks to several sidecars, so neither process-wide environment variables nor import-time
values work. `sdk_client()` below therefore assigns `DAPR_HTTP_PORT`, `DAPR_GRPC_PORT`, `DAPR_API_TOKEN`
and `DAPR_HEALTH_TIMEOUT` on `dapr.conf.settings` while it constructs the client (passing the gRPC address
explicitly as well) and restores the previous values afterwards. This works with both SDK behaviours.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterable, Iterator, Optional

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
REDIS_HOST = os.environ.get("TANDEM_TEST_REDIS", "127.0.0.1:6379")


# --------------------------------------------------------------------------------------------------------
# Binary and ports
# --------------------------------------------------------------------------------------------------------


def tandem_bin() -> str:
    if os.environ.get("TANDEM_BIN"):
        return os.environ["TANDEM_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR") or str(REPO / "target")
    return str(Path(target) / "debug" / "tandem")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_EPHEMERAL_LOW = _ephemeral_low()
_HANDED_OUT: set[int] = set()
_PORTS = random.Random()


def free_port() -> int:
    """A port nobody listens on right now, below the kernel's ephemeral range. A port from bind(0) comes from that
    range, so between this call and the sidecar's bind any outgoing connection on the machine could take it as its
    local port (seen: "Address already in use" once the suites opened thousands of broker connections); below the
    range only a listener can, and each port is handed out once per test run."""
    low = 20000 if _EPHEMERAL_LOW > 21000 else 1024
    for _ in range(1000):
        port = _PORTS.randrange(low, _EPHEMERAL_LOW)
        if port in _HANDED_OUT or port in (25672,):  # 25672: RabbitMQ's distribution port
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tandem() -> str:
    path = tandem_bin()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(
            f"tandem binary not found at {path}; build it with `cargo build` "
            "or point TANDEM_BIN at it"
        )
    return path


# --------------------------------------------------------------------------------------------------------
# Resource YAML. JSON is valid YAML, so documents are written as JSON: no YAML library needed.
# --------------------------------------------------------------------------------------------------------


def component(name: str, type_: str, metadata: Optional[dict] = None, *, version: str = "v1",
              ignore_errors: Optional[bool] = None, scopes: Optional[list] = None) -> dict:
    spec: dict = {
        "type": type_,
        "version": version,
        "metadata": [{"name": k, "value": str(v)} for k, v in (metadata or {}).items()],
    }
    if ignore_errors is not None:
        spec["ignoreErrors"] = ignore_errors
    doc = {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": name},
        "spec": spec,
    }
    if scopes is not None:
        doc["scopes"] = scopes
    return doc


def configuration(name: str = "config", secret_scopes: Optional[list] = None) -> dict:
    spec: dict = {}
    if secret_scopes is not None:
        spec["secrets"] = {"scopes": secret_scopes}
    return {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Configuration",
        "metadata": {"name": name},
        "spec": spec,
    }


# --------------------------------------------------------------------------------------------------------
# Sidecar processes
# --------------------------------------------------------------------------------------------------------


class Sidecar:
    """A running `tandem sidecar` (or `tandem run`) process."""

    def __init__(self, proc: subprocess.Popen, app_id: str, http_port: int, grpc_port: int,
                 metrics_port: int, workdir: Path, api_token: Optional[str]):
        self.proc = proc
        self.app_id = app_id
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.workdir = workdir
        self.api_token = api_token

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def url(self, path: str) -> str:
        return self.http + path

    def stderr(self) -> str:
        return read_text(self.workdir / "stderr.log")

    def stdout(self) -> str:
        return read_text(self.workdir / "stdout.log")

    def stop(self, timeout: float = STOP_TIMEOUT) -> Optional[int]:
        """SIGTERM, wait up to `timeout` seconds, then SIGKILL. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


class SidecarFactory:
    """Starts sidecars in fresh directories under `base`; stops every one of them in `close()`."""

    def __init__(self, binary: str, base: Path):
        self.binary = binary
        self.base = base
        self.started: list[Sidecar] = []

    def _prepare(self, app_id: str, components: Iterable[dict], config: Optional[dict],
                 raw_files: Optional[dict]) -> tuple[Path, Path, Optional[Path]]:
        workdir = self.base / f"{app_id}-{uuid.uuid4().hex[:8]}"
        resources = workdir / "resources"
        resources.mkdir(parents=True)
        for i, doc in enumerate(components):
            (resources / f"{i:02d}-{doc['metadata']['name']}.yaml").write_text(json.dumps(doc, indent=2))
        for name, text in (raw_files or {}).items():
            (resources / name).write_text(text)
        config_path = None
        if config is not None:
            config_path = workdir / "config.yaml"
            config_path.write_text(json.dumps(config, indent=2))
        return workdir, resources, config_path

    def spawn(self, app_id: str, components: Iterable[dict] = (), *, config: Optional[dict] = None,
              raw_files: Optional[dict] = None, api_token: Optional[str] = None,
              env: Optional[dict] = None, extra_args: Iterable[str] = (),
              internal_port: Optional[int] = None) -> Sidecar:
        """Starts the process without waiting for readiness."""
        workdir, resources, config_path = self._prepare(app_id, components, config, raw_files)
        http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
        args = [
            self.binary, "sidecar",
            "--app-id", app_id,
            "--resources-path", str(resources),
            "--dapr-http-port", str(http_port),
            "--dapr-grpc-port", str(grpc_port),
                        "--metrics-port", str(metrics_port),
            "--dapr-internal-grpc-port", str(internal_port or free_port()),
            "--log-level", "debug",
        ]
        if config_path is not None:
            args += ["--config", str(config_path)]
        args += list(extra_args)
        proc_env = {k: v for k, v in os.environ.items() if k not in ("DAPR_API_TOKEN", "APP_API_TOKEN")}
        proc_env["NO_COLOR"] = "1"
        if api_token is not None:
            proc_env["DAPR_API_TOKEN"] = api_token
        proc_env.update(env or {})
        proc = subprocess.Popen(
            args,
            cwd=workdir,
            env=proc_env,
            stdout=open(workdir / "stdout.log", "wb"),
            stderr=open(workdir / "stderr.log", "wb"),
        )
        sc = Sidecar(proc, app_id, http_port, grpc_port, metrics_port, workdir, api_token)
        self.started.append(sc)
        return sc

    def start(self, app_id: str, components: Iterable[dict] = (), **kw) -> Sidecar:
        """Starts a sidecar and waits until GET /v1.0/healthz answers 204."""
        sc = self.spawn(app_id, components, **kw)
        wait_healthy(sc)
        return sc

    def run_to_exit(self, app_id: str, components: Iterable[dict] = (), timeout: float = 20.0,
                    **kw) -> tuple[int, str]:
        """Starts a sidecar that is expected to exit by itself; returns (exit code, stderr+stdout)."""
        return self.run_many_to_exit(app_id, components, copies=1, timeout=timeout, **kw)[0]

    def run_many_to_exit(self, app_id: str, components: Iterable[dict] = (), copies: int = 6,
                         timeout: float = 20.0, **kw) -> list[tuple[int, str]]:
        """Starts `copies` identical sidecars at once, each expected to exit by itself, and returns
        [(exit code, stderr+stdout)] for each. Several copies catch exit-code races in one run."""
        components = list(components)
        procs = [self.spawn(app_id, components, **kw) for _ in range(copies)]
        deadline = time.monotonic() + timeout
        results = []
        for sc in procs:
            try:
                rc = sc.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                sc.stop()
                pytest.fail(f"sidecar {app_id} did not exit within {timeout}s:\n{sc.stderr()}")
            results.append((rc, sc.stderr() + sc.stdout()))
        return results

    def close(self) -> None:
        for sc in self.started:
            sc.stop()
        self.started.clear()


def wait_healthy(sc: Sidecar, timeout: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if sc.proc.poll() is not None:
            pytest.fail(
                f"sidecar {sc.app_id} exited with code {sc.proc.returncode} before becoming healthy.\n"
                f"stderr:\n{sc.stderr()}\nstdout:\n{sc.stdout()}"
            )
        try:
            r = requests.get(sc.url("/v1.0/healthz"), timeout=1)
            if r.status_code == 204:
                return
            last = f"{r.status_code} {r.text}"
        except requests.RequestException as e:
            last = repr(e)
        time.sleep(0.05)
    sc.stop()
    pytest.fail(
        f"sidecar {sc.app_id} not healthy after {timeout}s (last: {last}).\n"
        f"stderr:\n{sc.stderr()}\nstdout:\n{sc.stdout()}"
    )


@pytest.fixture(scope="module")
def sidecars(tandem, tmp_path_factory) -> Iterator[SidecarFactory]:
    """Module-scoped factory: sidecars it starts live until the end of the module."""
    factory = SidecarFactory(tandem, tmp_path_factory.mktemp("sidecars"))
    yield factory
    factory.close()


@pytest.fixture
def fresh_sidecars(tandem, tmp_path) -> Iterator[SidecarFactory]:
    """Function-scoped factory for one-off sidecars (startup failures, signals)."""
    factory = SidecarFactory(tandem, tmp_path)
    yield factory
    factory.close()


# --------------------------------------------------------------------------------------------------------
# The Dapr Python SDK
# --------------------------------------------------------------------------------------------------------

_SDK_SETTINGS = ("DAPR_HTTP_PORT", "DAPR_GRPC_PORT", "DAPR_API_TOKEN", "DAPR_HEALTH_TIMEOUT",
                 "DAPR_HTTP_ENDPOINT", "DAPR_GRPC_ENDPOINT", "DAPR_RUNTIME_HOST")


@contextlib.contextmanager
def sdk_settings(sc: Sidecar, token: Optional[str]) -> Iterator[None]:
    """Points dapr.conf.settings at `sc` for the duration of the block (see the module docstring)."""
    from dapr.conf import settings

    saved = {name: settings.__dict__[name] for name in _SDK_SETTINGS if name in settings.__dict__}
    try:
        settings.DAPR_RUNTIME_HOST = "127.0.0.1"
        settings.DAPR_HTTP_ENDPOINT = None
        settings.DAPR_GRPC_ENDPOINT = None
        settings.DAPR_HTTP_PORT = sc.http_port
        settings.DAPR_GRPC_PORT = sc.grpc_port
        settings.DAPR_API_TOKEN = token
        settings.DAPR_HEALTH_TIMEOUT = 10
        yield
    finally:
        for name in _SDK_SETTINGS:
            settings.__dict__.pop(name, None)
        settings.__dict__.update(saved)


def sdk_client(sc: Sidecar, token: Optional[str] = "<sidecar's>"):
    """A `DaprClient` bound to `sc`. `token` defaults to the sidecar's own API token (if any)."""
    from dapr.clients import DaprClient

    if token == "<sidecar's>":
        token = sc.api_token
    with sdk_settings(sc, token):
        return DaprClient(address=sc.grpc_address)


# --------------------------------------------------------------------------------------------------------
# Redis (a tiny RESP client: enough to clean up test keys without another dependency)
# --------------------------------------------------------------------------------------------------------


def redis_command(*args: str):
    host, port = REDIS_HOST.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        payload = f"*{len(args)}\r\n".encode()
        for a in args:
            b = a.encode() if isinstance(a, str) else a
            payload += f"${len(b)}\r\n".encode() + b + b"\r\n"
        s.sendall(payload)
        f = s.makefile("rb")
        return _resp_read(f)


def _resp_read(f):
    line = f.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_resp_read(f) for _ in range(n)]
    raise RuntimeError(f"unexpected RESP reply {line!r}")


def redis_available() -> bool:
    try:
        return redis_command("PING") == "PONG"
    except OSError:
        return False


def redis_delete_prefix(prefix: str) -> int:
    """Deletes every key starting with `prefix`; returns how many."""
    deleted, cursor = 0, "0"
    while True:
        cursor_b, keys = redis_command("SCAN", cursor, "MATCH", prefix + "*", "COUNT", "1000")
        for k in keys:
            deleted += redis_command("DEL", k)
        cursor = cursor_b.decode()
        if cursor == "0":
            return deleted


@pytest.fixture(scope="module")
def redis_prefix() -> Iterator[str]:
    """A keyPrefix unique to the module; its keys are deleted afterwards."""
    if not redis_available():
        pytest.skip(f"no Redis server at {REDIS_HOST}")
    prefix = f"tandem-pytest-{uuid.uuid4().hex[:10]}"
    yield prefix
    redis_delete_prefix(prefix + "||")


def unique(name: str = "k") -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


def poll_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


__all__ = [
    "Sidecar", "SidecarFactory", "component", "configuration", "free_port", "poll_until",
    "redis_command", "redis_delete_prefix", "sdk_client", "unique", "REDIS_HOST",
]


# --------------------------------------------------------------------------------------------------------
# Test apps (tests/python/apps) started next to sidecars
# --------------------------------------------------------------------------------------------------------

APPS = Path(__file__).resolve().parent / "apps"


class AppProcess:
    """A test app listening on `port`."""

    def __init__(self, proc: subprocess.Popen, port: int, log: Path):
        self.proc, self.port, self.log = proc, port, log

    def stop(self) -> None:
        terminate(self.proc, timeout=5)


def terminate(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within `timeout`."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_app(script: str, name: str, workdir: Path, port: Optional[int] = None,
              env: Optional[dict] = None) -> AppProcess:
    """Starts tests/python/apps/<script> on a free port and waits until it accepts connections."""
    import sys

    port = port or free_port()
    log = workdir / f"{name}-app.log"
    proc = subprocess.Popen([sys.executable, str(APPS / script), str(port), name],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"app {name} exited with {proc.returncode}:\n{read_text(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return AppProcess(proc, port, log)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail(f"app {name} did not listen on {port}:\n{read_text(log)}")


def rss_kb(pid: int) -> int:
    """Resident memory of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# Pub/sub subscriber helpers shared by the broker suites.

def numbers(record) -> list[int]:
    if not record.exists():
        return []
    out = []
    for line in record.read_text().splitlines():
        try:
            out.append(json.loads(json.loads(line)["body"])["data"]["n"])
        except (ValueError, KeyError, TypeError):
            pass
    return out


def subscriber_app(tmp_path, name: str, topic: str):
    subs = tmp_path / f"{name}-subs.json"
    subs.write_text(json.dumps([{"pubsubname": "pubsub", "topic": topic, "route": "/ok/n"}]))
    record = tmp_path / f"{name}-record.jsonl"
    app = start_app("subscriber_http.py", name, tmp_path, env={"SUBSCRIPTIONS": str(subs), "RECORD": str(record)})
    return app, record


def bulk_publish(sc, topic: str, start: int, count: int) -> int:
    """Publishes {"n": start..start+count} in one bulk call; answers how many the sidecar acknowledged."""
    entries = [{"entryId": str(i), "event": {"n": i}, "contentType": "application/json"}
               for i in range(start, start + count)]
    r = requests.post(sc.url(f"/v1.0-alpha1/publish/bulk/pubsub/{topic}"), json=entries, timeout=30)
    if r.status_code == 204:
        return count
    failed = {f["entryId"] for f in r.json().get("failedEntries", [])}
    return count - len(failed)
