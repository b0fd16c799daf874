#!/usr/bin/env python3
"""Instructions a release sidecar spends per state GET, counted by valgrind's callgrind (deterministic, unlike
timings on a shared machine). Prints the total instructions of one sidecar process that served N GETs of one key.
Run it for two N and divide the difference by the difference of N to get the cost of one request:

    cargo build --release
    for n in 500 2500; do scripts/callgrind-state.py target/release/tandem memory $n; done
    for n in 500 2500; do scripts/callgrind-state.py target/release/tandem guarded $n; done

Store `memory` is state.in-memory; `guarded` is the same behind a Resiliency outbound policy (timeout, retry,
circuit breaker). Needs valgrind and the `requests` package (.venv)."""
import re
import socket
import subprocess
import sys
import tempfile
import time

import requests

binary, store, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
d = tempfile.mkdtemp()
open(f"{d}/c.yaml","w").write("""apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: memory}
spec: {type: state.in-memory, version: v1}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: guarded}
spec: {type: state.in-memory, version: v1}
---
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: bench}
spec:
  policies:
    timeouts: {quick: 5s}
    retries: {few: {policy: constant, duration: 10ms, maxRetries: 3}}
    circuitBreakers: {cb: {maxRequests: 1, timeout: 30s, trip: consecutiveFailures > 5}}
  targets:
    components:
      guarded: {outbound: {timeout: quick, retry: few, circuitBreaker: cb}}
""")
def port():
    s=socket.socket(); s.bind(("127.0.0.1",0)); p=s.getsockname()[1]; s.close(); return p
hp, gp, ip = port(), port(), port()
out = f"{d}/cg.out"
p = subprocess.Popen(["valgrind","--tool=callgrind",f"--callgrind-out-file={out}", binary,"sidecar","--app-id","cg","--log-level","warn","--enable-metrics=false",
    "--dapr-http-port",str(hp),"--dapr-grpc-port",str(gp),"--dapr-internal-grpc-port",str(ip),"--resources-path",d],
    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
sess = requests.Session()
for _ in range(600):
    try:
        if sess.get(f"http://127.0.0.1:{hp}/v1.0/healthz", timeout=2).status_code == 204: break
    except Exception: pass
    time.sleep(0.2)
sess.post(f"http://127.0.0.1:{hp}/v1.0/state/{store}", json=[{"key":"k","value":{"a":1}}], timeout=30)
for i in range(n):
    r = sess.get(f"http://127.0.0.1:{hp}/v1.0/state/{store}/k", timeout=30)
    assert r.status_code == 200, r.text
p.terminate(); _, err = p.communicate(timeout=120)
m = re.search(rb"Collected : (\d+)", err)
print(store, n, int(m.group(1)) if m else err[-500:])
import shutil  # noqa: E402

shutil.rmtree(d, ignore_errors=True)
