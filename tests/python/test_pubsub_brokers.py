"""No acknowledged message is lost through a SIGKILL, over every broker on this machine: 10,000 messages are bulk
published while the subscriber's sidecar is killed with SIGKILL mid-delivery and started again; every message the
publisher's sidecar acknowledged must reach the app (duplicates are allowed; their number is printed).

Brokers: Redis Streams (127.0.0.1:6379), the SQLite file of `tandem run`, RabbitMQ (127.0.0.1:5672, guest/guest),
NATS JetStream (127.0.0.1:4222) and Mosquitto (127.0.0.1:1883). A broker that does not answer is reported skipped.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import uuid

import pytest
import requests

from conftest import (REDIS_HOST, bulk_publish, component, numbers, poll_until, redis_available, redis_command,
                      subscriber_app)


def answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


def nats_request(subject: str, payload: dict) -> dict:
    """One request over NATS's text protocol (the JetStream API is request/reply on `$JS.API.*`)."""
    body = json.dumps(payload).encode()
    with socket.create_connection(("127.0.0.1", 4222), timeout=5) as s:
        f = s.makefile("rb")
        f.readline()  # INFO
        inbox = f"_INBOX.{uuid.uuid4().hex}"
        s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":false}\r\n'
                  + f"SUB {inbox} 1\r\nPUB {subject} {inbox} {len(body)}\r\n".encode() + body + b"\r\nPING\r\n")
        while True:
            line = f.readline()
            if not line:
                raise OSError("NATS closed the connection")
            if line.startswith(b"MSG"):
                size = int(line.split()[-1])
                reply = f.read(size + 2)[:size]
                return json.loads(reply)
            if line.startswith(b"-ERR"):
                raise OSError(line.decode().strip())


def broker_component(broker: str, topic: str, tmp_path):
    """A function making the `pubsub` component of `broker`, identical for every sidecar of the test."""
    if broker == "redis":
        md = {"redisHost": REDIS_HOST, "processingTimeout": "2s", "redeliverInterval": "500ms"}
        return lambda: component("pubsub", "pubsub.redis", md)
    if broker == "sqlite":
        # The embedded broker of `tandem run`: one SQLite file every sidecar opens.
        md = {"connectionString": str(tmp_path / "pubsub.db"), "processingTimeout": "2s", "redeliverInterval": "500ms"}
        return lambda: component("pubsub", "pubsub.sqlite", md)
    if broker == "rabbitmq":
        # Dapr's defaults delete a group's queue when its last subscriber goes and do not persist messages; a
        # no-loss setup keeps the queue and persists.
        md = {"connectionString": "amqp://guest:guest@127.0.0.1:5672", "durable": "true",
              "deletedWhenUnused": "false", "deliveryMode": "2", "redeliverInterval": "500ms"}
        return lambda: component("pubsub", "pubsub.rabbitmq", md)
    if broker == "jetstream":
        # As in Dapr, the topic's stream exists before the component uses it.
        return lambda: component("pubsub", "pubsub.jetstream",
                                 {"natsURL": "nats://127.0.0.1:4222", "streamName": topic, "ackWait": "3s"})
    if broker == "mqtt":
        # The client id is the app id (consumerID's default): the restarted sidecar takes over the session the
        # broker kept (cleanSession false), with what it had sent and not had acknowledged.
        return lambda: component("pubsub", "pubsub.mqtt3", {"url": "tcp://127.0.0.1:1883", "qos": "1"})
    raise ValueError(broker)


BROKERS = [
    pytest.param("redis", marks=pytest.mark.skipif(not redis_available(), reason=f"no Redis at {REDIS_HOST}")),
    pytest.param("sqlite"),
    pytest.param("rabbitmq", marks=pytest.mark.skipif(not answers(5672), reason="no RabbitMQ on 127.0.0.1:5672")),
    pytest.param("jetstream", marks=pytest.mark.skipif(not answers(4222), reason="no NATS on 127.0.0.1:4222")),
    pytest.param("mqtt", marks=pytest.mark.skipif(not answers(1883), reason="no MQTT broker on 127.0.0.1:1883")),
]


def setup_broker(broker: str, topic: str):
    if broker == "jetstream":
        r = nats_request(f"$JS.API.STREAM.CREATE.{topic}", {"name": topic, "subjects": [topic], "storage": "file"})
        assert "error" not in r, r


def cleanup_broker(broker: str, topic: str, app_id: str):
    if broker == "redis":
        redis_command("DEL", topic)
    elif broker == "jetstream":
        nats_request(f"$JS.API.STREAM.DELETE.{topic}", {})
    elif broker == "rabbitmq" and shutil.which("rabbitmqctl"):
        subprocess.run(["rabbitmqctl", "-q", "delete_queue", f"{app_id}-{topic}"], capture_output=True, timeout=60)


def probe(sc, topic: str) -> bool:
    r = requests.post(sc.url(f"/v1.0/publish/pubsub/{topic}"), json={"n": -1}, timeout=10)
    assert r.status_code == 204, r.text
    return True


@pytest.mark.parametrize("broker", BROKERS)
def test_no_acknowledged_message_is_lost_through_a_sigkill(sidecars, tmp_path, broker):
    total, batch = 10_000, 250
    topic = f"tandem-kill-{uuid.uuid4().hex[:10]}"
    app_id = f"killsub-{uuid.uuid4().hex[:6]}"
    setup_broker(broker, topic)
    make = broker_component(broker, topic, tmp_path)
    app, record = subscriber_app(tmp_path, "killsub", topic)
    sub = sidecars.start(app_id, [make()], extra_args=["--app-port", str(app.port)])
    publisher = sidecars.start(f"killpub-{uuid.uuid4().hex[:6]}", [make()])
    # The subscription is live at the broker before the run (RabbitMQ drops what reaches an exchange with no queue
    # bound, as with Dapr): probes are published until the app has one.
    assert poll_until(lambda: probe(publisher, topic) and -1 in numbers(record), 30, interval=0.5), sub.stderr()
    acknowledged: list[int] = []

    def publish_all():
        for start in range(0, total, batch):
            if bulk_publish(publisher, topic, start, batch) == batch:
                acknowledged.extend(range(start, start + batch))
            time.sleep(0.02)

    writer = threading.Thread(target=publish_all)
    writer.start()
    try:
        assert poll_until(lambda: len(numbers(record)) >= 2500, 60), "deliveries did not start"
        sub.proc.kill()  # SIGKILL, mid-delivery: what was read and not yet acknowledged stays with the broker
        sub.proc.wait()
        delivered_before = len(numbers(record))
        time.sleep(1)
        sub = sidecars.start(app_id, [make()], extra_args=["--app-port", str(app.port)])
        writer.join()
        assert len(acknowledged) == total, "the publisher's sidecar acknowledged every entry"
        assert poll_until(lambda: set(numbers(record)) >= set(acknowledged), 120), (
            f"missing {len(set(acknowledged) - set(numbers(record)))} of {total}"
        )
        got = [n for n in numbers(record) if n >= 0]
        duplicates = len(got) - len(set(got))
        print(f"\n{broker}: {total} published, {len(set(got))} delivered, {duplicates} duplicates "
              f"({delivered_before} delivered before the SIGKILL)")
        assert delivered_before < total, "the kill happened mid-delivery"
    finally:
        writer.join()
        sub.stop()
        publisher.stop()
        app.stop()
        cleanup_broker(broker, topic, app_id)
