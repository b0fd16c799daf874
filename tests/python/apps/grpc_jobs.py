"""A gRPC app written with the official SDK's `dapr.ext.grpc.App` that takes jobs `grpc-job` and `grpc-fail`
with `@app.job_event`, recording each (name, data as text) as one JSON line in $RECORD; `grpc-fail` raises, so
the sidecar retries it by its failure policy.

Usage: RECORD=events.jsonl python grpc_jobs.py PORT [NAME]
"""

import json
import os
import sys
import threading

from dapr.ext.grpc import App

PORT = int(sys.argv[1])
RECORD = os.environ["RECORD"]
LOCK = threading.Lock()
app = App()


def record(event) -> None:
    with LOCK, open(RECORD, "a") as f:
        f.write(json.dumps({"name": event.name, "data": event.get_data_as_string()}) + "\n")


@app.job_event("grpc-job")
def job(event) -> None:
    record(event)


@app.job_event("grpc-fail")
def fail(event) -> None:
    record(event)
    raise RuntimeError("this job always fails")


app.run(PORT)
