#!/usr/bin/env python3
"""Cluster DNS for the local node (CoreDNS' `kubernetes` plugin is not packaged where tandem is developed): answers
A queries for `<service>.<namespace>.svc.<domain>` from the API server — the ClusterIP, or for a headless Service
the ready addresses of its Endpoints — and NXDOMAIN for anything else. It re-reads Services and Endpoints every
second.

    cluster_dns.py --listen 10.244.0.1 --server https://127.0.0.1:6443 --token TOKEN
"""

from __future__ import annotations

import argparse
import threading
import time

import requests
import urllib3
from dnslib import QTYPE, RCODE, RR, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)


class Records:
    def __init__(self, server: str, token: str, domain: str):
        self.server, self.token, self.domain = server, token, domain
        self.names: dict[str, list[str]] = {}
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"

    def get(self, path: str) -> list:
        # verify=False per request: a Session's own setting loses to REQUESTS_CA_BUNDLE from the environment.
        r = self.http.get(self.server + path, timeout=5, verify=False)
        r.raise_for_status()
        return r.json()["items"]

    def refresh(self) -> None:
        endpoints = {(e["metadata"]["namespace"], e["metadata"]["name"]): e for e in self.get("/api/v1/endpoints")}
        names = {}
        for svc in self.get("/api/v1/services"):
            ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
            ip = svc["spec"].get("clusterIP")
            if ip and ip != "None":
                ips = [ip]
            else:
                subsets = (endpoints.get((ns, name)) or {}).get("subsets") or []
                ips = [a["ip"] for s in subsets for a in s.get("addresses") or []]
            names[f"{name}.{ns}.svc.{self.domain}."] = ips
        self.names = names

    def loop(self) -> None:
        while True:
            try:
                self.refresh()
            except Exception as e:  # keep serving the last answer while the API server is away
                print(f"cluster-dns: refresh failed: {e}", flush=True)
            time.sleep(1)


class Resolver(BaseResolver):
    def __init__(self, records: Records):
        self.records = records

    def resolve(self, request, handler):
        reply = request.reply()
        qname = str(request.q.qname).lower()
        ips = self.records.names.get(qname)
        if ips is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype in (QTYPE.A, QTYPE.ANY):
            for ip in ips:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(ip), ttl=5))
        return reply


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--listen", default="0.0.0.0")
    p.add_argument("--port", type=int, default=53)
    p.add_argument("--server", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--domain", default="cluster.local")
    a = p.parse_args()
    records = Records(a.server, a.token, a.domain)
    threading.Thread(target=records.loop, daemon=True).start()
    for tcp in (False, True):
        DNSServer(Resolver(records), address=a.listen, port=a.port, tcp=tcp,
                  logger=DNSLogger("-request,-reply,-truncated,-data", prefix=False)).start_thread()
    print(f"cluster-dns: serving *.svc.{a.domain} on {a.listen}:{a.port}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
