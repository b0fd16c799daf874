"""A gRPC app written with the official SDK's `dapr.ext.grpc.App` that takes input binding `tick` with
`@app.binding` and records each event (data, binding metadata) as one JSON line in $RECORD.

Usage: RECORD=events.jsonl python grpc_binding.py PORT [NAME]
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


@app.binding("tick")
def tick(request) -> None:
    with LOCK, open(RECORD, "a") as f:
        f.write(json.dumps({"data": request.text(), "metadata": dict(request.binding_metadata)}) + "\n")


app.run(PORT)
