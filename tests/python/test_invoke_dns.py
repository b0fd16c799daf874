"""Cross-namespace invocation through cluster DNS: the `kubernetes` name resolver, pointed by configuration at
a real DNS server this test runs on 127.0.0.1, resolves `app` and `app.namespace` to `<app>-dapr.<ns>.svc.
cluster.local` and spreads calls over every address of the headless Service. Sidecars listen for each other on
127.0.0.x with one shared internal port, as pods do on their own IPs."""

from __future__ import annotations

import socket

import pytest
import requests
from dnslib import QTYPE, RCODE, RR, A
from dnslib.server import BaseResolver, DNSServer

from conftest import free_port, start_app


class Zone(BaseResolver):
    def __init__(self, records: dict[str, list[str]]):
        self.records = records

    def resolve(self, request, handler):
        reply = request.reply()
        name = str(request.q.qname).lower()
        if name not in self.records:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype in (QTYPE.A, QTYPE.ANY):
            for ip in self.records[name]:
                reply.add_answer(RR(name, QTYPE.A, rdata=A(ip), ttl=5))
        return reply


def free_udp_tcp_port() -> int:
    while True:
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue


@pytest.fixture(scope="module")
def dns():
    port = free_udp_tcp_port()
    zone = Zone({
        "orders-dapr.prod.svc.cluster.local.": ["127.0.0.2", "127.0.0.3"],
        "orders-dapr.default.svc.cluster.local.": ["127.0.0.4"],
    })
    servers = [DNSServer(zone, port=port, address="127.0.0.1", tcp=tcp) for tcp in (False, True)]
    for s in servers:
        s.start_thread()
    yield port
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def cluster(sidecars, dns, tmp_path_factory):
    work = tmp_path_factory.mktemp("dns")
    config = {
        "apiVersion": "dapr.io/v1alpha1", "kind": "Configuration", "metadata": {"name": "k8s-nr"},
        "spec": {"nameResolution": {"component": "kubernetes", "configuration": {
            "clusterDomain": "cluster.local", "nameservers": [f"127.0.0.1:{dns}"], "cacheTTL": "1s"}}},
    }
    internal = free_port()
    apps = []
    for name, ip, ns in [("prod-1", "127.0.0.2", "prod"), ("prod-2", "127.0.0.3", "prod"), ("default-1", "127.0.0.4", "default")]:
        app = start_app("echo_http.py", name, work)
        apps.append(app)
        sidecars.start("orders", config=config, env={"NAMESPACE": ns}, internal_port=internal,
                       extra_args=["--app-port", str(app.port), "--dapr-internal-grpc-listen-address", ip])
    web = sidecars.start("web", config=config, env={"NAMESPACE": "default"}, internal_port=internal,
                         extra_args=["--dapr-internal-grpc-listen-address", "127.0.0.1"])
    yield web
    for app in apps:
        app.stop()


def test_app_dot_namespace_resolves_through_dns_and_spreads_over_replicas(cluster):
    seen = set()
    for _ in range(30):
        r = requests.get(cluster.url("/v1.0/invoke/orders.prod/method/where"), timeout=10)
        assert r.status_code == 200, r.text
        echo = r.json()
        assert echo["headers"]["dapr-caller-namespace"] == "default"
        seen.add(echo["app"])
    assert seen == {"prod-1", "prod-2"}


def test_bare_app_id_resolves_in_the_callers_namespace(cluster):
    r = requests.get(cluster.url("/v1.0/invoke/orders/method/where"), timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["app"] == "default-1"


def test_unknown_service_is_a_clear_error(cluster):
    r = requests.get(cluster.url("/v1.0/invoke/orders.staging/method/where"), timeout=10)
    assert r.status_code == 500
    body = r.json()
    assert body["errorCode"] == "ERR_DIRECT_INVOKE"
    assert "orders-dapr.staging.svc.cluster.local" in body["message"], body
