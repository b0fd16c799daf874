"""A plain HTTP subscriber app for pub/sub tests: lists its subscriptions at GET /dapr/subscribe, records every
event it receives (one JSON line per delivery: route, headers, body) and answers as each route says.

Usage: SUBSCRIPTIONS=subs.json RECORD=deliveries.jsonl python subscriber_http.py PORT [NAME]

Routes answer by their first path segment:
  /ok/...        204, empty body (success)
  /status/S/...  200 with {"status": S} (SUCCESS, RETRY, DROP or anything else)
  /code/N/...    HTTP status N
  /flaky/N/...   RETRY the first N deliveries of each event id, then SUCCESS
  /slow/MS/...   waits MS milliseconds, then success
  /sethealth/0|1 makes GET /health answer 503 or 200
  /bulk/...      a bulk delivery: SUCCESS for every entry but those whose data is "drop" (DROP) or "skip" (no
                 status: retried)
"""

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
SUBSCRIPTIONS = os.environ["SUBSCRIPTIONS"]
RECORD = os.environ["RECORD"]
LOCK = threading.Lock()
SEEN: dict = {}
HEALTHY = [True]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes = b"", ctype: str = "application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/dapr/subscribe":
            with open(SUBSCRIPTIONS, "rb") as f:
                self._send(200, f.read())
        elif self.path == "/health":
            self._send(200 if HEALTHY[0] else 503)
        else:
            self._send(404)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.path.startswith("/sethealth/"):
            HEALTHY[0] = self.path.endswith("/1")
            return self._send(204)
        parts = [p for p in self.path.split("?")[0].split("/") if p]
        try:
            event = json.loads(body)
        except ValueError:
            event = None
        event_id = event.get("id") if isinstance(event, dict) else None
        with LOCK:
            SEEN[event_id] = SEEN.get(event_id, 0) + 1
            attempt = SEEN[event_id]
            with open(RECORD, "a") as f:
                f.write(json.dumps({
                    "path": self.path,
                    "attempt": attempt,
                    "content_type": self.headers.get("Content-Type"),
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body.decode("utf-8", "replace"),
                }) + "\n")
        kind = parts[0] if parts else ""
        if kind == "status":
            self._send(200, json.dumps({"status": parts[1]}).encode())
        elif kind == "code":
            self._send(int(parts[1]), b"answered as asked")
        elif kind == "flaky":
            if attempt <= int(parts[1]):
                self._send(200, b'{"status":"RETRY"}')
            else:
                self._send(200, b'{"status":"SUCCESS"}')
        elif kind == "bulk":
            statuses = []
            for e in (event or {}).get("entries", []):
                data = e.get("event", {}).get("data")
                if data == "skip":
                    continue
                statuses.append({"entryId": e["entryId"], "status": "DROP" if data == "drop" else "SUCCESS"})
            self._send(200, json.dumps({"statuses": statuses}).encode())
        elif kind == "slow":
            time.sleep(int(parts[1]) / 1000)
            self._send(204)
        else:
            self._send(204)


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
    server.daemon_threads = True
    server.serve_forever()
