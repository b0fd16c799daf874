#!/usr/bin/env python3
"""Runs Dapr's workflow tutorials (tutorials/workflow/python of a github.com/dapr/quickstarts checkout) unchanged
with `tandem run -f .` and drives each as its .http file does: start the workflow through the app, raise the
approval event where the tutorial waits for one, then poll Dapr's workflow HTTP API until the instance ends.
workflow-management's workflow never ends: it is suspended, resumed, terminated and purged instead.

Usage: TANDEM_BIN=... scripts/workflow-tutorials.py CHECKOUT/tutorials/workflow/python [TUTORIAL ...]
The apps run with the `python3` first on PATH, which needs dapr>=1.19 (or dapr-ext-workflow), fastapi, uvicorn.
Exit status 0 when every tutorial ended as its README says."""
import os, re, signal, subprocess, sys, time, uuid

import requests
ROOT = sys.argv[1]
TANDEM = os.environ["TANDEM_BIN"]
ORDER = {"id": None, "description": "Rubber ducks", "quantity": 100, "total_price": 500}
CASES = {
    "fundamentals": (5254, 3554, "/start/One", None),
    "task-chaining": (5255, 3555, "/start", None),
    "fan-out-fan-in": (5256, 3556, "/start", ["which", "word", "is", "the", "shortest"]),
    "monitor-pattern": (5257, 3557, "/start/0", None),
    "external-system-interaction": (5258, 3558, "/start", "ORDER"),
    "child-workflows": (5259, 3559, "/start", ["Item 1", "Item 2"]),
    "combined-patterns": (5260, 3560, "/start", "COMBINED"),
    "resiliency-and-compensation": (5264, 3564, "/start/1", None),
    "workflow-management": (5262, 3562, "/start/0", None),
    "versioning": (5263, 3561, "/start", None),
}
# The workflow outputs the READMEs show, as patterns (the monitor's count is random); the others must complete.
EXPECTED = {
    "fundamentals": r'"One Two Three"',
    "fan-out-fan-in": r'"is"',
    "monitor-pattern": r'"Status is healthy after \d+ times\."',
}
names = sys.argv[2:] or list(CASES)
ok = True
for name in names:
    app, dapr, path, body = CASES[name]
    if body == "ORDER":
        body = dict(ORDER, id=str(uuid.uuid4()))
    if body == "COMBINED":
        body = {"id": str(uuid.uuid4()), "order_item": {"product_id": "RBD001", "product_name": "Rubber Duck",
                "quantity": 10, "total_price": 15.0}, "customer_info": {"id": "Customer1", "country": "The Netherlands"}}
    d = os.path.join(ROOT, name)
    log = open(f"/tmp/tut-{name}.log", "w")
    p = subprocess.Popen([TANDEM, "run", "-f", "."], cwd=d, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for _ in range(60):
            try:
                requests.get(f"http://localhost:{app}/", timeout=1); break
            except Exception:
                time.sleep(0.5)
        time.sleep(2)
        r = requests.post(f"http://localhost:{app}{path}", json=body, timeout=30)
        iid = r.json().get("instance_id") if r.headers.get("content-type", "").startswith("application/json") else None
        if iid is None:
            try: iid = r.json()
            except Exception: iid = r.text
        if isinstance(iid, dict): iid = iid.get("instance_id")
        state = None
        if name == "workflow-management":
            seen = []
            for op, verb in (("suspend", "post"), ("resume", "post"), ("terminate", "post")):
                getattr(requests, verb)(f"http://localhost:{app}/{op}/{iid}", timeout=10)
                time.sleep(1)
                seen.append(requests.get(f"http://localhost:{dapr}/v1.0/workflows/dapr/{iid}", timeout=5).json()["runtimeStatus"])
            requests.delete(f"http://localhost:{app}/purge/{iid}", timeout=10)
            gone = requests.get(f"http://localhost:{dapr}/v1.0/workflows/dapr/{iid}", timeout=5).json()["runtimeStatus"]
            good = seen == ["SUSPENDED", "RUNNING", "TERMINATED"] and gone == ""
            ok &= good
            print(f"{'PASS' if good else 'FAIL'} {name}: {seen} then purged ({gone!r})", flush=True)
            continue
        for i in range(60):
            s = requests.get(f"http://localhost:{dapr}/v1.0/workflows/dapr/{iid}", timeout=5).json()
            state = s
            if name == "external-system-interaction" and s.get("runtimeStatus") == "RUNNING" and i == 4:
                requests.post(f"http://localhost:{dapr}/v1.0/workflows/dapr/{iid}/raiseEvent/approval-event",
                              json={"order_id": iid, "is_approved": True}, timeout=5)
            if s.get("runtimeStatus") in ("COMPLETED", "FAILED", "TERMINATED"):
                break
            time.sleep(1)
        output = state.get("properties", {}).get("dapr.workflow.output")
        good = state.get("runtimeStatus") == "COMPLETED" and (
            name not in EXPECTED or re.fullmatch(EXPECTED[name], output or "") is not None)
        ok &= good
        print(f"{'PASS' if good else 'FAIL'} {name}: {state.get('runtimeStatus')} output={output!r} "
              f"failure={state.get('properties', {}).get('dapr.workflow.failure.error_message')!r}", flush=True)
    except Exception as e:
        ok = False
        print(f"FAIL {name}: {e}", flush=True)
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        try: p.wait(15)
        except Exception: os.killpg(p.pid, signal.SIGKILL)
        time.sleep(1)
sys.exit(0 if ok else 1)
