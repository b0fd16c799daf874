"""No acknowledged message is lost through a SIGKILL, over every broker on this machine: 10,000 messages are bulk
published while the subscriber's sidecar is killed with SIGKILL mid-delivery and started again; every message the
publisher's sidecar acknowledged must reach the app (duplicates are allowed; their number is printed).

Brokers: Redis Streams (127.0.0.1:6379), the SQLite file of `tandem run`, RabbitMQ (127.0.0.1:5672, guest/guest),
NATS JetStream (127.0.0.1:4222), Mosquitto (127.0.0.1:1883) and Kafka (tansu on 127.0.0.1:9092, started by
scripts/kafka-broker.sh). A broker that does not answer is reported skipped.
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
    if broker == "kafka":
        # One consumer group for both lives of the subscriber; `oldest`, so the group's first reader sees the probes
        # published before it joined. The read-ahead holds the whole run, so no partition is ever paused.
        md = {"brokers": "127.0.0.1:9092", "authType": "none", "consumerGroup": f"{topic}-group",
              "initialOffset": "oldest", "channelBufferSize": "20000", "sessionTimeout": "6s",
              "heartbeatInterval": "1s"}
        return lambda: component("pubsub", "pubsub.kafka", md)
    raise ValueError(broker)


BROKERS = [
    pytest.param("redis", marks=pytest.mark.skipif(not redis_available(), reason=f"no Redis at {REDIS_HOST}")),
    pytest.param("sqlite"),
    pytest.param("rabbitmq", marks=pytest.mark.skipif(not answers(5672), reason="no RabbitMQ on 127.0.0.1:5672")),
    pytest.param("jetstream", marks=pytest.mark.skipif(not answers(4222), reason="no NATS on 127.0.0.1:4222")),
    pytest.param("mqtt", marks=pytest.mark.skipif(not answers(1883), reason="no MQTT broker on 127.0.0.1:1883")),
    pytest.param("kafka", marks=pytest.mark.skipif(not answers(9092), reason="no Kafka broker on 127.0.0.1:9092")),
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


def publish_singly(sc, topic: str, start: int, count: int) -> int:
    """Publishes {"n": start..start+count} one request at a time; answers how many the sidecar acknowledged."""
    acknowledged = 0
    for i in range(start, start + count):
        r = requests.post(sc.url(f"/v1.0/publish/pubsub/{topic}"), json={"n": i}, timeout=30)
        acknowledged += r.status_code == 204
    return acknowledged


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

    # tansu 0.6 answers a fetch that starts inside a record batch from the next batch on, losing the rest of that
    # batch, and a restarted consumer resumes at its group's committed offset, wherever that falls: published one
    # at a time, each Kafka record is a batch of its own, so the broker's loss cannot pass for the sidecar's.
    publish = publish_singly if broker == "kafka" else bulk_publish

    def publish_all():
        for start in range(0, total, batch):
            if publish(publisher, topic, start, batch) == batch:
                acknowledged.extend(range(start, start + batch))
            time.sleep(0.02)

    writer = threading.Thread(target=publish_all)
    writer.start()
    try:
        assert poll_until(lambda: len(numbers(record)) >= 2500, 60), "deliveries did not start"
        sub.proc.kill()  # SIGKILL, mid-delivery: what was read and not yet acknowledged stays with the broker
        sub.proc.wait()
        delivered_before = len(numbers(record))
        # tansu 0.6 keeps a member that died while another joins as the group's leader with every partition, and
        # never reassigns them (Kafka would once the dead member's session expires): for Kafka the sidecar comes
        # back after the killed one's session (6 s) has expired, when tansu hands the partitions over.
        time.sleep(8 if broker == "kafka" else 1)
        sub = sidecars.start(app_id, [make()], extra_args=["--app-port", str(app.port)])
        writer.join()
        assert len(acknowledged) == total, "the publisher's sidecar acknowledged every entry"
        assert poll_until(lambda: set(numbers(record)) >= set(acknowledged), 120), (
            f"missing {len(set(acknowledged) - set(numbers(record)))} of {total}; the restarted sidecar said:\n"
            + sub.stderr()[-3000:]
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
