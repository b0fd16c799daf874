"""Publishes ten orders to topic "orders" of the "pubsub" component through its sidecar."""
import json
import os
import time
import urllib.request

url = f"http://localhost:{os.environ.get('DAPR_HTTP_PORT', '3500')}/v1.0/publish/pubsub/orders"
for order_id in range(1, 11):
    body = json.dumps({"orderId": order_id}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as resp:
        print("Published data:", body.decode(), "status", resp.status, flush=True)
    time.sleep(0.2)
