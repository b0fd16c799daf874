"""A small HTTP app for invocation tests: echoes requests, answers chosen statuses, streams large bodies.

Usage: python echo_http.py PORT [NAME]
"""

import hashlib
import json
import os
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

NAME = sys.argv[2] if len(sys.argv) > 2 else "echo"
COUNTS: dict = {}
LOCK = threading.Lock()
# What GET /health answers; POST /sethealth/<0|1> changes it (for app health-check tests).
HEALTHY = [True]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    def _stream(self):
        """Yields the request body in pieces, chunked or by Content-Length."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return
                remaining = size
                while remaining:
                    piece = self.rfile.read(min(1 << 16, remaining))
                    if not piece:
                        return
                    remaining -= len(piece)
                    yield piece
                self.rfile.readline()
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            piece = self.rfile.read(min(1 << 16, remaining))
            if not piece:
                return
            remaining -= len(piece)
            yield piece

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: bytes, ctype: str = "application/json", extra: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-App", NAME)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def handle_any(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        parts = url.path.strip("/").split("/")
        if parts[0] == "upload":
            # Streams the request body through a hash without keeping it.
            h, total = hashlib.sha256(), 0
            for chunk in self._stream():
                h.update(chunk)
                total += len(chunk)
            return self._send(200, json.dumps({"bytes": total, "sha256": h.hexdigest()}).encode())
        body = self._body()
        if parts[0] == "status":
            code = int(parts[1])
            return self._send(code, f"status {code} from {NAME}".encode(), "text/plain", {"X-Status": str(code)})
        if parts[0] == "big":
            n = int(query.get("n", ["1048576"])[0])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            chunk = b"x" * (1 << 16)
            sent = 0
            while sent < n:
                part = chunk[: min(len(chunk), n - sent)]
                self.wfile.write(part)
                sent += len(part)
            return
        if parts[0] == "slow":
            time.sleep(int(query.get("ms", ["1000"])[0]) / 1000)
        if parts[0] == "flaky":
            # Fails the first `fail` calls for a key with 503, then succeeds.
            key, fail = parts[1], int(query.get("fail", ["2"])[0])
            with LOCK:
                COUNTS[key] = COUNTS.get(key, 0) + 1
                n = COUNTS[key]
            if n <= fail:
                return self._send(503, f"attempt {n} fails".encode(), "text/plain")
            return self._send(200, json.dumps({"attempts": n}).encode())
        if parts[0] == "health":
            return self._send(200 if HEALTHY[0] else 503, b"", "text/plain")
        if parts[0] == "sethealth":
            HEALTHY[0] = parts[1] == "1"
            return self._send(200, b"", "text/plain")
        if parts[0] == "count":
            with LOCK:
                return self._send(200, json.dumps({"count": COUNTS.get(parts[1], 0)}).encode())
        echo = {
            "app": NAME,
            "method": self.command,
            "path": url.path,
            "query": url.query,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body.decode("utf-8", "replace"),
        }
        return self._send(200, json.dumps(echo).encode())

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_any


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    if os.environ.get("TLS_CERT"):
        # Serve HTTPS with the given certificate (for HTTPEndpoint clientTLS tests).
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.environ["TLS_CERT"], os.environ["TLS_KEY"])
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.serve_forever()
