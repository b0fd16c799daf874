"""A plain HTTP app for input binding tests: answers OPTIONS /<route> with 200 for the routes in $WANT (comma
separated) and 404 for the rest, records every POST as one JSON line in $RECORD (path, headers, body), and answers
POST /route-answer with the body in $ANSWER (a Dapr routing object), POST /fail (and /job/fail, a job) with 500,
anything else with 200.

Usage: WANT=/tick,/custom RECORD=events.jsonl [ANSWER='{...}'] python binding_app_http.py PORT [NAME]
"""

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
WANT = set(filter(None, os.environ.get("WANT", "").split(",")))
RECORD = os.environ["RECORD"]
ANSWER = os.environ.get("ANSWER", "")
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes = b""):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_OPTIONS(self):
        self._send(200 if self.path in WANT else 404)

    def do_GET(self):
        self._send(404 if self.path.startswith("/missing") else 200, b'{"got":"' + self.path.encode() + b'"}')

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        with LOCK, open(RECORD, "a") as f:
            f.write(json.dumps({
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode("utf-8", "replace"),
            }) + "\n")
        if self.path == "/route-answer":
            self._send(200, ANSWER.encode())
        elif self.path in ("/fail", "/job/fail"):
            self._send(500, b"no")
        else:
            self._send(200, b'{"success": true}')


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
