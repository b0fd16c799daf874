"""A gRPC subscriber written with the official SDK's `dapr.ext.grpc.App`: subscribes to topics with
`@app.subscribe` (routing rules included) and records each event as one JSON line in $RECORD.

Usage: RECORD=events.jsonl python grpc_subscriber.py PORT [NAME]
"""

import json
import os
import sys
import threading

from cloudevents.sdk.event import v1
from dapr.clients.grpc._response import TopicEventResponse
from dapr.ext.grpc import App, Rule

PORT = int(sys.argv[1])
RECORD = os.environ["RECORD"]
LOCK = threading.Lock()
app = App()


def record(route: str, event: v1.Event) -> None:
    with LOCK, open(RECORD, "a") as f:
        f.write(json.dumps({
            "route": route,
            "id": event.EventID(),
            "type": event.EventType(),
            "source": event.Source(),
            "content_type": event.ContentType(),
            "data": event.Data().decode("utf-8", "replace") if isinstance(event.Data(), bytes) else event.Data(),
            "extensions": {k: str(v) for k, v in event.Extensions().items()},
        }) + "\n")


@app.subscribe(pubsub_name="pubsub", topic="grpc-orders")
def orders(event: v1.Event) -> TopicEventResponse:
    record("orders", event)
    return TopicEventResponse("success")


@app.subscribe(pubsub_name="pubsub", topic="grpc-routed", rule=Rule('event.type == "urgent"', 1))
def urgent(event: v1.Event) -> TopicEventResponse:
    record("urgent", event)
    return TopicEventResponse("success")


@app.subscribe(pubsub_name="pubsub", topic="grpc-drop", dead_letter_topic="grpc-dead")
def drop(event: v1.Event) -> TopicEventResponse:
    record("drop", event)
    return TopicEventResponse("drop")


@app.subscribe(pubsub_name="pubsub", topic="grpc-dead")
def dead(event: v1.Event) -> TopicEventResponse:
    record("dead", event)
    return TopicEventResponse("success")


if __name__ == "__main__":
    app.run(PORT)
