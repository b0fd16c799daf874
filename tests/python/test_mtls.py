"""Mutual TLS between sidecars (--enable-mtls) with workload certificates given in Dapr's environment variables
(DAPR_CERT_CHAIN, DAPR_CERT_KEY, DAPR_TRUST_ANCHORS), made here with the openssl command the way Dapr's Sentry
makes them: a root, and leaves whose only identity is a SPIFFE URI spiffe://<td>/ns/<namespace>/<app-id>.

What an attacker on the network tries, and what the callee's sidecar does:
- plain HTTP/2 to the internal port (yesterday's `curl -H 'dapr-caller-app-id: admin'`): no TLS, no answer;
- TLS without a client certificate, or with one from another authority: the handshake is refused;
- a valid certificate of another app with headers claiming the allowed app: the app sees the certificate's app id
  and the access-control policy judges that one."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
import requests

from conftest import free_port, poll_until, start_app

pytestmark = [
    pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command makes the certificates"),
    # Sidecar certificates name a SPIFFE ID, not a host: the test's own TLS clients do not check the server.
    pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning"),
]


def openssl(*args: str, cwd: Path) -> None:
    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert out.returncode == 0, f"openssl {' '.join(args)}:\n{out.stderr}"


class Authority:
    """A root CA in a folder, issuing SPIFFE leaf certificates."""

    def __init__(self, folder: Path, name: str):
        self.folder = folder
        self.name = name
        folder.mkdir(parents=True, exist_ok=True)
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=folder)
        openssl("req", "-x509", "-new", "-key", f"{name}.key", "-sha256", "-days", "2", "-subj", f"/CN={name}",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                "-out", f"{name}.crt", cwd=folder)
        self.root = (folder / f"{name}.crt").read_text()

    def issue(self, spiffe_id: str, leaf: str) -> tuple[Path, Path]:
        f = self.folder
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{leaf}.ec.key", cwd=f)
        openssl("pkcs8", "-topk8", "-nocrypt", "-in", f"{leaf}.ec.key", "-out", f"{leaf}.key", cwd=f)
        openssl("req", "-new", "-key", f"{leaf}.key", "-subj", f"/CN={leaf}", "-out", f"{leaf}.csr", cwd=f)
        (f / f"{leaf}.ext").write_text(
            f"subjectAltName=critical,URI:{spiffe_id}\nbasicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n")
        openssl("x509", "-req", "-in", f"{leaf}.csr", "-CA", f"{self.name}.crt", "-CAkey", f"{self.name}.key",
                "-CAcreateserial", "-days", "1", "-sha256", "-extfile", f"{leaf}.ext", "-out", f"{leaf}.crt", cwd=f)
        return f / f"{leaf}.crt", f / f"{leaf}.key"

    def env(self, spiffe_id: str, leaf: str) -> dict:
        crt, key = self.issue(spiffe_id, leaf)
        return {"DAPR_CERT_CHAIN": crt.read_text(), "DAPR_CERT_KEY": key.read_text(),
                "DAPR_TRUST_ANCHORS": self.root}


def config(db: str, acl: dict | None = None) -> dict:
    spec: dict = {"nameResolution": {"component": "sqlite", "version": "v1",
                                     "configuration": {"connectionString": db, "updateInterval": "2s"}}}
    if acl:
        spec["accessControl"] = acl
    return {"apiVersion": "dapr.io/v1alpha1", "kind": "Configuration", "metadata": {"name": "c"}, "spec": spec}


class Setup:
    pass


@pytest.fixture(scope="module")
def mtls(sidecars, tmp_path_factory):
    work = tmp_path_factory.mktemp("mtls")
    s = Setup()
    s.ca = Authority(work / "ca", "root")
    s.rogue = Authority(work / "rogue", "rogue")
    db = str(work / "nr.db")
    s.app = start_app("echo_http.py", "vault", work)
    acl = {"defaultAction": "deny", "trustDomain": "public", "policies": [
        {"appId": "teller", "defaultAction": "allow", "trustDomain": "public", "namespace": "default"}]}
    s.internal_port = free_port()
    s.vault = sidecars.start("vault", config=config(db, acl), internal_port=s.internal_port,
                             env=s.ca.env("spiffe://public/ns/default/vault", "vault"),
                             extra_args=["--enable-mtls", "--app-port", str(s.app.port)])
    s.teller = sidecars.start("teller", config=config(db), env=s.ca.env("spiffe://public/ns/default/teller", "teller"),
                              extra_args=["--enable-mtls"])
    s.thief = sidecars.start("thief", config=config(db), env=s.ca.env("spiffe://public/ns/default/thief", "thief"),
                             extra_args=["--enable-mtls"])
    s.thief_cert = s.ca.issue("spiffe://public/ns/default/thief", "thief-client")
    s.rogue_cert = s.rogue.issue("spiffe://public/ns/default/teller", "rogue-teller")
    yield s
    s.app.stop()


def invoke(sc, target: str, path: str, headers: dict | None = None) -> requests.Response:
    return requests.get(sc.url(f"/v1.0/invoke/{target}/method/{path}"), headers=headers or {}, timeout=15)


def test_sidecars_call_each_other_over_mtls_and_the_app_sees_the_proven_caller(mtls):
    r = invoke(mtls.teller, "vault", "balance", {"dapr-caller-app-id": "admin"})
    assert r.status_code == 200, r.text
    assert r.json()["headers"]["dapr-caller-app-id"] == "teller"
    assert r.json()["headers"]["dapr-caller-namespace"] == "default"


def test_access_control_judges_the_certificate_not_the_headers(mtls):
    r = invoke(mtls.thief, "vault", "balance", {"dapr-caller-app-id": "teller"})
    assert r.status_code == 403, r.text
    assert "spiffe://public/ns/default/thief" in r.json()["message"]


def internal_url(mtls, path: str) -> str:
    return f"https://127.0.0.1:{mtls.internal_port}/{path}"


def test_a_certificate_of_the_mesh_cannot_claim_another_identity_in_headers(mtls):
    forged = {"dapr-caller-app-id": "teller", "dapr-caller-namespace": "default",
              "tandem-caller-trust-domain": "public", "tandem-invoke": "http"}
    r = requests.get(internal_url(mtls, "balance"), headers=forged, cert=tuple(map(str, mtls.thief_cert)),
                     verify=False, timeout=10)
    assert r.status_code == 403, r.text
    assert "thief" in r.json()["message"]


def handshake(port: int, cert: tuple[Path, Path] | None) -> str:
    """Connects with TLS (and a client certificate when given), sends a request, returns what happened."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw) as tls:
                tls.sendall(b"GET /balance HTTP/1.1\r\nhost: x\r\ndapr-caller-app-id: teller\r\n"
                            b"tandem-invoke: http\r\n\r\n")
                data = tls.recv(4096)
                return "answered: " + data.decode(errors="replace") if data else "closed"
    except (ssl.SSLError, ConnectionError, OSError) as e:
        return f"refused: {e}"


def test_a_peer_without_a_certificate_or_with_a_foreign_one_is_refused(mtls):
    assert handshake(mtls.internal_port, None).startswith(("refused", "closed"))
    assert handshake(mtls.internal_port, mtls.rogue_cert).startswith(("refused", "closed"))
    # A valid certificate does get an answer (so the refusals above are about the certificate).
    assert handshake(mtls.internal_port, mtls.thief_cert).startswith("answered: HTTP/1.1 403")


def test_plain_http_to_the_internal_port_reaches_nothing(mtls):
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{mtls.internal_port}/balance",
                     headers={"dapr-caller-app-id": "teller", "tandem-invoke": "http"}, timeout=10)


def test_a_certificate_for_another_app_stops_start_up(sidecars, mtls, tmp_path):
    rc_out = sidecars.run_to_exit("cashier", env=mtls.ca.env("spiffe://public/ns/default/teller", "wrong"),
                                  extra_args=["--enable-mtls"])
    rc, out = rc_out
    assert rc != 0
    assert "spiffe://public/ns/default/teller" in out and "cashier" in out, out


def test_enable_mtls_without_a_certificate_source_stops_start_up(sidecars):
    rc, out = sidecars.run_to_exit("lonely", extra_args=["--enable-mtls"])
    assert rc != 0
    assert "DAPR_CERT_CHAIN" in out and "--control-plane-address" in out, out


def test_the_internal_port_without_mtls_warns_on_every_interface_and_tandem_run_keeps_it_local(sidecars, tandem,
                                                                                                 tmp_path):
    sc = sidecars.start("exposed")
    assert poll_until(lambda: "without mTLS" in sc.stderr() + sc.stdout(), 5), sc.stderr()
    port = free_port()
    run = subprocess.Popen([tandem, "run", "--app-id", "local", "--dapr-http-port", str(free_port()),
                            "--dapr-grpc-port", str(free_port()), "--dapr-internal-grpc-port", str(port),
                            "--metrics-port", str(free_port()), "--", "sleep", "30"],
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def listening() -> bool:
            out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
            return bool(out.strip())
        assert poll_until(listening, 15)
        out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
        local = [line.split()[3] for line in out.strip().splitlines()]
        assert local == [f"127.0.0.1:{port}"], out
    finally:
        run.terminate()
        run.wait(timeout=15)
