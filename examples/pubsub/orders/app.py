"""Subscribes to topic "orders" of the "pubsub" component (GET /dapr/subscribe) and prints each order."""
import json
import os
from http.server import BaseHTTPRequestHandler, HTTPServer

SUBSCRIPTIONS = [{"pubsubname": "pubsub", "topic": "orders", "route": "/orders"}]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body=b""):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/dapr/subscribe":
            self.answer(200, json.dumps(SUBSCRIPTIONS).encode())
        else:
            self.answer(404)

    def do_POST(self):
        event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        print("Subscriber received:", json.dumps(event["data"]), flush=True)
        self.answer(200, b'{"status": "SUCCESS"}')


HTTPServer(("127.0.0.1", int(os.environ.get("APP_PORT", "6011"))), Handler).serve_forever()
