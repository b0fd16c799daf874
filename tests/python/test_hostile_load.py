"""A sidecar under hostile load: thousands of slowloris connections held open while tens of thousands of
requests to random paths arrive. Normal requests keep being answered, memory stays where it was, and the
metrics do not grow with the paths. (Dapr users hit each of these: an HTTP API with no header timeout, and
metric labels made of raw paths.)"""

from __future__ import annotations

import socket
import time
import uuid

import requests

from conftest import component, poll_until, rss_kb

SLOWLORIS = 2000
RANDOM_REQUESTS = 60_000
PIPELINES = 8
BATCH = 250


def pipeline(port: int, paths: list[str]) -> int:
    """Sends `paths` as pipelined GETs on one keep-alive connection, in batches; returns how many were answered."""
    answered = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        for start in range(0, len(paths), BATCH):
            batch = paths[start:start + BATCH]
            s.sendall(b"".join(f"GET {p} HTTP/1.1\r\nhost: x\r\n\r\n".encode() for p in batch))
            seen, buf = 0, b""
            while seen < len(batch):
                chunk = s.recv(1 << 16)
                if not chunk:
                    return answered + seen
                buf += chunk
                seen = buf.count(b"HTTP/1.1 ")
            answered += len(batch)
    return answered


def normal_requests_work(sc) -> bool:
    key = f"k-{uuid.uuid4().hex[:8]}"
    r = requests.post(sc.url("/v1.0/state/mem"), json=[{"key": key, "value": {"ok": True}}], timeout=10)
    if r.status_code != 204:
        return False
    r = requests.get(sc.url(f"/v1.0/state/mem/{key}"), timeout=10)
    return r.status_code == 200 and r.json() == {"ok": True}


def test_slowloris_and_random_paths_neither_stall_nor_bloat_the_sidecar(fresh_sidecars):
    sc = fresh_sidecars.start("hostile", [component("mem", "state.in-memory")])
    for _ in range(200):
        assert normal_requests_work(sc)
    pipeline(sc.http_port, [f"/warm/{i}" for i in range(2000)])
    before = rss_kb(sc.proc.pid)

    held = []
    try:
        for _ in range(SLOWLORIS):
            s = socket.create_connection(("127.0.0.1", sc.http_port), timeout=10)
            s.sendall(b"GET /v1.0/healthz HTTP/1.1\r\nhost: x\r\n")  # never finished
            held.append(s)
        assert normal_requests_work(sc), "a normal request failed while slowloris connections were held"

        token = uuid.uuid4().hex
        per = RANDOM_REQUESTS // PIPELINES
        answered = 0
        for p in range(PIPELINES):
            answered += pipeline(sc.http_port, [f"/{token}/{p}/{i}/{uuid.uuid4().hex[:6]}" for i in range(per)])
        assert answered == RANDOM_REQUESTS
        assert normal_requests_work(sc), "a normal request failed after the random-path flood"
    finally:
        for s in held:
            s.close()

    # Memory: back within a few MB of where it was once the attackers are gone.
    assert poll_until(lambda: rss_kb(sc.proc.pid) - before < 8 * 1024, timeout=20, interval=0.5), \
        f"RSS grew from {before} KiB to {rss_kb(sc.proc.pid)} KiB"
    metrics = requests.get(f"http://127.0.0.1:{sc.metrics_port}/", timeout=10).text
    assert token not in metrics
    assert len(metrics) < 200_000, f"metrics body is {len(metrics)} bytes"
    assert sc.proc.poll() is None
    print(f"RSS before {before} KiB, after {rss_kb(sc.proc.pid)} KiB")
