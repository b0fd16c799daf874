"""`tandem run -f`: Dapr's multi-app run files, and the CLI verbs (`list`, `stop`, `invoke`, `publish`,
`version`, `completion`) run against the real binary.

The two-app test runs a Node.js HTTP app and a Python gRPC app (the official SDK's `dapr.ext.grpc.App`), each
with its own sidecar started by one `tandem run -f`; they call each other through their sidecars and share a
state store. Every test gets its own HOME, so the registry of running apps (~/.tandem/run) and the embedded
defaults are its own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests

from conftest import free_port, poll_until

NODE = shutil.which("node")
REPO = Path(__file__).resolve().parents[2]

WEB_APP = r"""
const http = require('http');
const dapr = `http://127.0.0.1:${process.env.DAPR_HTTP_PORT}`;
const server = http.createServer(async (req, res) => {
  let body = '';
  for await (const chunk of req) body += chunk;
  if (req.url === '/order') {
    const { item } = JSON.parse(body);
    // web -> inventory (a gRPC app) through web's sidecar, then the state inventory wrote, read through web's.
    const r = await fetch(`${dapr}/v1.0/invoke/inventory/method/reserve`, { method: 'POST', body: JSON.stringify({ item }) });
    const reserved = await r.json();
    const s = await fetch(`${dapr}/v1.0/state/statestore/stock-${item}`);
    const stock = s.status === 200 ? await s.json() : null;
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ reserved, stock, env: process.env.GREETING, app: process.env.APP_ID }));
  } else if (req.url === '/hello') {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('hello from web');
  } else {
    res.writeHead(404); res.end();
  }
});
server.listen(Number(process.env.APP_PORT), '127.0.0.1', () => console.log(`web listening on ${process.env.APP_PORT}`));
process.on('SIGTERM', async () => {
  // Apps are stopped before sidecars: the sidecar must still answer here.
  let status = 'down';
  try { status = String((await fetch(`${dapr}/v1.0/healthz`)).status); } catch (e) {}
  console.log(`web stopping; sidecar answers ${status}`);
  process.exit(0);
});
"""

INVENTORY_APP = r"""
import json, os, sys
from dapr.clients import DaprClient
from dapr.ext.grpc import App, InvokeMethodRequest, InvokeMethodResponse

app = App()

@app.method(name="reserve")
def reserve(request: InvokeMethodRequest) -> InvokeMethodResponse:
    item = json.loads(request.text())["item"]
    with DaprClient() as d:
        d.save_state("statestore", f"stock-{item}", json.dumps(41))
        hello = d.invoke_method("web", "hello", http_verb="GET").text()
    print(f"reserved {item}", flush=True)
    return InvokeMethodResponse(json.dumps({"item": item, "by": "inventory", "web_said": hello,
                                            "env": os.environ.get("GREETING")}), "application/json")

print("inventory serving", flush=True)
app.run(int(os.environ["APP_PORT"]))
"""


def component_yaml(name, type_, metadata):
    return json.dumps({"apiVersion": "dapr.io/v1alpha1", "kind": "Component", "metadata": {"name": name},
                       "spec": {"type": type_, "version": "v1",
                                "metadata": [{"name": k, "value": v} for k, v in metadata.items()]}})


def env_for(home: Path) -> dict:
    return {**os.environ, "HOME": str(home), "PYTHONPATH": ""}


def cli(tandem, home, *args, timeout=60):
    return subprocess.run([tandem, *args], env=env_for(home), capture_output=True, text=True, timeout=timeout)


def listed(tandem, home):
    r = cli(tandem, home, "list", "-o", "json")
    assert r.returncode == 0, r.stderr
    return {a["appId"]: a for a in json.loads(r.stdout)}


class Run:
    """A `tandem run -f` in the background, its output collected in a file."""

    def __init__(self, tandem, home: Path, target: str, cwd: Path):
        self.out = home / "run.out"
        self.proc = subprocess.Popen([tandem, "run", "-f", target], cwd=cwd, env=env_for(home),
                                     stdout=open(self.out, "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def wait(self, timeout=60) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def project(tmp_path):
    """A two-app project (plus a sidecar-only app) laid out as a Dapr user lays it out."""
    root = tmp_path / "project"
    (root / "web").mkdir(parents=True)
    (root / "inventory").mkdir()
    (root / "shared").mkdir()
    (root / "lonely" / ".dapr" / "resources").mkdir(parents=True)
    (root / "web" / "app.js").write_text(WEB_APP)
    (root / "inventory" / "app.py").write_text(INVENTORY_APP)
    db = tmp_path / "shared-state.db"
    (root / "shared" / "statestore.yaml").write_text(
        component_yaml("statestore", "state.sqlite", {"connectionString": str(db), "keyPrefix": "none"}))
    (root / "lonely" / ".dapr" / "resources" / "env.yaml").write_text(
        component_yaml("localenv", "secretstores.local.env", {}))
    web_port, inv_port = free_port(), free_port()
    (root / "dapr.yaml").write_text(textwrap.dedent(f"""\
        version: 1
        name: shop
        common:
          resourcesPath: ./shared
          env:
            GREETING: from-common
        apps:
          - appID: web
            appDirPath: ./web/
            appPort: {web_port}
            command: ["{NODE}", "app.js"]
          - appDirPath: ./inventory/
            appPort: {inv_port}
            appProtocol: grpc
            daprdLogDestination: console
            command: ["{sys.executable}", "app.py"]
            env:
              GREETING: from-inventory
          - appDirPath: ./lonely
            unixDomainSocket: /tmp
        """))
    return root


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed")
def test_a_run_file_starts_two_apps_that_call_each_other_and_share_state(tandem, tmp_path, project):
    run = Run(tandem, tmp_path, ".", project)
    try:
        assert poll_until(lambda: set(listed(tandem, tmp_path)) == {"web", "inventory", "lonely"}, 60), run.text()
        apps = listed(tandem, tmp_path)
        assert apps["web"]["runTemplatePath"] == str(project / "dapr.yaml")
        assert apps["web"]["runTemplateName"] == "shop"
        assert apps["web"]["appPid"] > 0 and apps["lonely"]["appPid"] == 0
        assert apps["inventory"]["command"].endswith("app.py")
        assert len({apps[a]["cliPid"] for a in apps}) == 1, "one tandem run -f holds them all"

        # web (HTTP, Node) -> inventory (gRPC, Python) -> state + web again; web reads what inventory wrote.
        def ordered():
            r = cli(tandem, tmp_path, "invoke", "--app-id", "web", "--method", "order", "--data", '{"item":"book"}')
            return r if r.returncode == 0 else None
        assert poll_until(ordered, 30), run.text()
        r = ordered()
        body = json.loads(r.stdout.splitlines()[0])
        assert body["reserved"] == {"item": "book", "by": "inventory", "web_said": "hello from web",
                                    "env": "from-inventory"}, body
        assert body["stock"] == 41, "web reads the state inventory saved: one store, shared"
        assert (body["env"], body["app"]) == ("from-common", "web")
        assert "App invoked successfully" in r.stdout

        # The sidecar-only app took its resources from <appDir>/.dapr/resources, over common's.
        meta = requests.get(f"http://127.0.0.1:{apps['lonely']['httpPort']}/v1.0/metadata", timeout=10).json()
        assert [c["name"] for c in meta["components"]] == ["localenv"], meta

        out = run.text()
        assert "apps[2].unixDomainSocket is ignored: Unix domain sockets are not supported yet" in out
        assert 'Validating config and starting app "web"' in out
        assert 'Started Dapr with app id "inventory"' in out
        assert "== APP - web == web listening on" in out
        assert "== APP - inventory == reserved book" in out
        # web's sidecar logs to a file (the default); inventory's to the console, as its entry says.
        assert "Starting Dapr with id inventory" in out and "Starting Dapr with id web" not in out
        web_logs = list((project / "web" / ".dapr" / "logs").glob("web_daprd_*.log"))
        assert web_logs and "Starting Dapr with id web" in web_logs[0].read_text()
        web_app_log = list((project / "web" / ".dapr" / "logs").glob("web_app_*.log"))
        assert web_app_log and "== APP - web == web listening" in web_app_log[0].read_text()
        assert not list((project / "inventory" / ".dapr" / "logs").glob("*daprd*"))

        # Stopping one app of the file leaves the others running.
        r = cli(tandem, tmp_path, "stop", "--app-id", "lonely")
        assert r.returncode == 0 and "app stopped successfully: lonely" in r.stdout, r.stdout + r.stderr
        assert set(listed(tandem, tmp_path)) == {"web", "inventory"}
        assert run.proc.poll() is None

        # SIGTERM stops apps first (web's sidecar still answers while web stops), then the sidecars.
        run.proc.send_signal(signal.SIGTERM)
        assert run.wait(60) == 0, run.text()
        out = run.text()
        assert "Received signal to stop Dapr and app processes" in out
        assert "web stopping; sidecar answers 204" in out, out
        assert out.count("Exited App successfully") >= 2, out
        assert "Exited Dapr successfully" in web_logs[0].read_text()
        assert listed(tandem, tmp_path) == {}
    finally:
        run.kill()


def test_stop_by_run_file_stops_everything_and_the_exit_status_tells_failures(tandem, tmp_path):
    d = tmp_path / "p"
    for a in ("ok", "fails", "waits"):
        (d / a).mkdir(parents=True)
    (d / "dapr.yaml").write_text(textwrap.dedent(f"""\
        version: 1
        apps:
          - appDirPath: ok
            command: ["{sys.executable}", "-c", "print('done')"]
          - appDirPath: waits
            command: ["{sys.executable}", "-c", "import time; time.sleep(600)"]
        """))
    run = Run(tandem, tmp_path, "dapr.yaml", d)
    try:
        assert poll_until(lambda: "waits" in listed(tandem, tmp_path), 60), run.text()
        # `ok` ran to its end: its sidecar went with it, the rest runs on.
        assert poll_until(lambda: "ok" not in listed(tandem, tmp_path), 30), run.text()
        r = cli(tandem, tmp_path, "stop", "-f", str(d))
        assert r.returncode == 0 and "Dapr and app processes stopped successfully" in r.stdout, r.stdout + r.stderr
        assert run.wait(30) == 0, run.text()
        assert "== APP - ok == done" in run.text()
        assert listed(tandem, tmp_path) == {}
    finally:
        run.kill()
    r = cli(tandem, tmp_path, "stop", "-f", str(d))
    assert r.returncode == 1 and "couldn't find apps with run file" in r.stderr

    # An app that fails makes the whole run fail.
    (d / "dapr.yaml").write_text(textwrap.dedent(f"""\
        version: 1
        apps:
          - appDirPath: fails
            appLogDestination: console
            command: ["{sys.executable}", "-c", "import sys; sys.exit(3)"]
        """))
    run = Run(tandem, tmp_path, str(d), tmp_path)
    try:
        assert run.wait(60) == 1, run.text()
        assert "The App process exited with error code: exit status 3" in run.text()
        assert not list((d / "fails" / ".dapr" / "logs").glob("fails_app_*")), "console only, as asked"
    finally:
        run.kill()


def test_a_malformed_run_file_names_the_key_and_line(tandem, tmp_path):
    (tmp_path / "a").mkdir()
    cases = {
        "version: 1\napps:\n  - appDirPath: a\n    appPort: eighty\n": ["apps[0].appPort", "line 4"],
        "version: 1\napps:\n  - appDirPath: a\n    daprHTTPPort: 99999\n": ["apps[0].daprHTTPPort", "99999 is not a port", "line 4"],
        "version: 1\napps:\n  - appDirPath: missing\n": ["apps[0].appDirPath", "does not exist"],
        "apps:\n  - appDirPath: a\n": ["required field 'version'"],
        "version: 1\napps:\n  - appDirPath: a\n    appProtocol: carrier-pigeon\n": ["apps[0] (a)", "--app-protocol"],
    }
    for text, wants in cases.items():
        (tmp_path / "dapr.yaml").write_text(text)
        r = cli(tandem, tmp_path, "run", "-f", str(tmp_path))
        assert r.returncode == 1, (text, r.stdout, r.stderr)
        for w in wants:
            assert w in r.stderr, (text, r.stderr)
    r = cli(tandem, tmp_path, "run", "-f", str(tmp_path / "nothing-here"))
    assert r.returncode == 1 and "nothing-here" in r.stderr


def test_a_single_tandem_run_is_listed_and_stopped_by_app_id(tandem, tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [tandem, "run", "--app-id", "solo", "--dapr-http-port", str(port), "--dapr-grpc-port", "0",
         "--dapr-internal-grpc-port", "0", "--metrics-port", "0", "--",
         sys.executable, "-c", "import time; print('solo up', flush=True); time.sleep(600)"],
        env=env_for(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert poll_until(lambda: "solo" in listed(tandem, tmp_path), 30)
        solo = listed(tandem, tmp_path)["solo"]
        assert solo["httpPort"] == port and solo["cliPid"] == proc.pid == solo["daprdPid"]
        r = cli(tandem, tmp_path, "list")
        assert r.stdout.splitlines()[0].split() == ["APP", "ID", "HTTP", "PORT", "GRPC", "PORT", "APP", "PORT",
                                                    "COMMAND", "AGE", "CREATED", "DAPRD", "PID", "CLI", "PID",
                                                    "APP", "PID"]
        # invoke a method the app does not serve: the sidecar's answer is an error, and says so.
        r = cli(tandem, tmp_path, "invoke", "-a", "solo", "-m", "nothing", "-v", "get")
        assert r.returncode == 1 and "error invoking app solo" in r.stderr
        # The embedded `pubsub` takes the event; an unknown pubsub is an error that says so.
        r = cli(tandem, tmp_path, "publish", "--publish-app-id", "solo", "--pubsub", "pubsub", "--topic", "t",
                "--data", '{"a":1}')
        assert r.returncode == 0 and "Event published successfully" in r.stdout, r.stdout + r.stderr
        r = cli(tandem, tmp_path, "publish", "--publish-app-id", "solo", "--pubsub", "nope", "--topic", "t",
                "--data", '{"a":1}')
        assert r.returncode == 1 and "Error publishing topic t" in r.stderr, r.stderr
        r = cli(tandem, tmp_path, "stop", "--app-id", "solo")
        assert r.returncode == 0, r.stderr
        out, _ = proc.communicate(timeout=30)
        assert "solo up" in out and "Exited Dapr successfully" in out
        assert listed(tandem, tmp_path) == {}
    finally:
        if proc.poll() is None:
            proc.kill()
    r = cli(tandem, tmp_path, "stop", "--app-id", "solo")
    assert r.returncode == 1 and "couldn't find app id solo" in r.stderr
    r = cli(tandem, tmp_path, "list")
    assert r.stdout.strip() == "No Dapr instances found."


def test_version_and_completions(tandem, tmp_path):
    r = cli(tandem, tmp_path, "version", "-o", "json")
    v = json.loads(r.stdout)
    assert set(v) == {"Cli version", "Runtime version"} and v["Cli version"] == v["Runtime version"]
    r = cli(tandem, tmp_path, "version")
    assert r.stdout.startswith("CLI version: ") and "Runtime version: " in r.stdout
    assert cli(tandem, tmp_path, "version", "-o", "xml").returncode == 1
    r = cli(tandem, tmp_path, "completion", "bash")
    assert r.returncode == 0 and "_tandem()" in r.stdout and "--run-file" in r.stdout
    # The script is valid bash that defines the completion.
    check = subprocess.run(["bash", "-c", f"source <({tandem} completion bash) && complete -p tandem"],
                           capture_output=True, text=True, env=env_for(tmp_path))
    assert check.returncode == 0 and "tandem" in check.stdout, check.stderr


def test_nothing_outlives_a_killed_run(tandem, tmp_path):
    d = tmp_path / "p"
    (d / "sleeper").mkdir(parents=True)
    (d / "dapr.yaml").write_text(textwrap.dedent(f"""\
        version: 1
        apps:
          - appDirPath: sleeper
            command: ["{sys.executable}", "-c", "import time; time.sleep(600)"]
        """))
    run = Run(tandem, tmp_path, ".", d)
    try:
        assert poll_until(lambda: "sleeper" in listed(tandem, tmp_path), 60), run.text()
        e = listed(tandem, tmp_path)["sleeper"]
        os.kill(e["cliPid"], signal.SIGKILL)
        run.proc.wait(timeout=10)

        def gone(pid):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            # An exited child not yet reaped by init still answers; its state says it is over.
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"

        assert poll_until(lambda: gone(e["daprdPid"]) and gone(e["appPid"]), 15), "sidecar or app outlived the run"
        assert listed(tandem, tmp_path) == {}
    finally:
        run.kill()


def test_readmes_publish_subscribe_demo_needs_nothing_else(tandem, tmp_path):
    """examples/pubsub (README's demo): two apps with their own sidecars exchange ten orders through the embedded
    `pubsub` component (a SQLite file in ~/.tandem), with no broker installed. The app port is made free first."""
    import shutil
    d = tmp_path / "pubsub"
    shutil.copytree(REPO / "examples" / "pubsub", d)
    run_file = d / "dapr.yaml"
    run_file.write_text(run_file.read_text().replace("appPort: 6011", f"appPort: {free_port()}"))
    run = Run(tandem, tmp_path, "dapr.yaml", d)
    try:
        assert poll_until(lambda: run.text().count("Subscriber received") >= 10, 60), run.text()
        out = run.text()
        for i in range(1, 11):
            assert f'== APP - checkout == Published data: {{"orderId": {i}}} status 204' in out, out
            assert f'== APP - orders == Subscriber received: {{"orderId": {i}}}' in out, out
        assert (tmp_path / ".tandem" / "pubsub.db").exists()
        assert cli(tandem, tmp_path, "stop", "-f", str(d)).returncode == 0
        assert run.wait(30) == 0, run.text()
    finally:
        run.kill()
