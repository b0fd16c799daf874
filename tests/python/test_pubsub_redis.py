"""At-least-once delivery over Redis Streams (`pubsub.redis`) through real sidecars (the SIGKILL no-loss test over
every broker is in test_pubsub_brokers.py):

* two sidecars of one app id compete for a topic (each message handled by one of them), and when one is killed
  the other, or its replacement, gets what it left;
* a streaming subscription closed with events unanswered, then opened again, gets every event.

Needs the Redis on 127.0.0.1:6379."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
import requests

from conftest import (REDIS_HOST, bulk_publish, component, numbers, poll_until, redis_available, redis_command,
                      sdk_client, start_app, subscriber_app)

pytestmark = pytest.mark.skipif(not redis_available(), reason=f"no Redis at {REDIS_HOST}")


def redis_pubsub(**extra: str) -> dict:
    md = {"redisHost": REDIS_HOST, "processingTimeout": "2s", "redeliverInterval": "500ms"}
    md.update(extra)
    return component("pubsub", "pubsub.redis", md)


@pytest.fixture
def topic():
    t = f"tandem-test-{uuid.uuid4().hex[:10]}"
    yield t
    redis_command("DEL", t)


def test_two_sidecars_of_one_app_compete_and_survive_a_kill(sidecars, tmp_path, topic):
    app_id = f"workers-{uuid.uuid4().hex[:6]}"
    (app_a, rec_a), (app_b, rec_b) = subscriber_app(tmp_path, "wa", topic), subscriber_app(tmp_path, "wb", topic)
    publisher = sidecars.start("workpub", [redis_pubsub()])
    a = sidecars.start(app_id, [redis_pubsub()], extra_args=["--app-port", str(app_a.port)])
    b = sidecars.start(app_id, [redis_pubsub()], extra_args=["--app-port", str(app_b.port)])
    for start in range(0, 1000, 200):
        assert bulk_publish(publisher, topic, start, 200) == 200
    union = lambda: set(numbers(rec_a)) | set(numbers(rec_b))
    assert poll_until(lambda: union() >= set(range(1000)), 60), f"missing {set(range(1000)) - union()}"
    got_a, got_b = numbers(rec_a), numbers(rec_b)
    assert got_a and got_b, "both sidecars took a share"
    assert len(got_a) + len(got_b) == 1000, "each message was handled by one sidecar"
    # One of them dies; the other (and the survivors' reclaim) still get everything.
    b.proc.kill()
    b.proc.wait()
    for start in range(1000, 2000, 200):
        assert bulk_publish(publisher, topic, start, 200) == 200
    assert poll_until(lambda: union() >= set(range(2000)), 60), f"missing {len(set(range(2000)) - union())}"
    a.stop()
    app_a.stop()
    app_b.stop()


def test_a_streaming_subscription_closed_and_reopened_loses_nothing(sidecars, topic):
    sc = sidecars.start("streamer", [redis_pubsub()])
    with sdk_client(sc) as c:
        for i in range(20):
            c.publish_event("pubsub", topic, json.dumps({"n": i}), data_content_type="application/json")
        first = c.subscribe("pubsub", topic)
        taken = set()
        try:
            while len(taken) < 5:
                m = first.next_message()
                if m is not None:
                    taken.add(m.data()["n"])
                    first.respond_success(m)
            # One more is read and never answered: the stream closes with it in flight.
            while first.next_message() is None:
                pass
        finally:
            first.close()
        second = c.subscribe("pubsub", topic)
        try:
            deadline = time.monotonic() + 30
            while taken != set(range(20)) and time.monotonic() < deadline:
                m = second.next_message()
                if m is not None:
                    taken.add(m.data()["n"])
                    second.respond_success(m)
        finally:
            second.close()
    assert taken == set(range(20)), f"missing {set(range(20)) - taken}"


def test_shutdown_neither_drops_nor_dead_letters_what_is_in_flight(sidecars, tmp_path, topic):
    """SIGTERM while the app is still handling an event (longer than the grace period): the sidecar exits, the
    event is neither acknowledged nor sent to the dead-letter topic, and the next sidecar of the app gets it."""
    subs = tmp_path / "subs.json"
    subs.write_text(json.dumps([
        {"pubsubname": "pubsub", "topic": topic, "route": "/slow/3000/t", "deadLetterTopic": f"{topic}-dead"},
        {"pubsubname": "pubsub", "topic": f"{topic}-dead", "route": "/ok/dead"},
    ]))
    record = tmp_path / "record.jsonl"
    app = start_app("subscriber_http.py", "slowapp", tmp_path, env={"SUBSCRIPTIONS": str(subs), "RECORD": str(record)})
    app_id = f"slow-{uuid.uuid4().hex[:6]}"
    args = ["--app-port", str(app.port), "--dapr-graceful-shutdown-seconds", "1"]
    sc = sidecars.start(app_id, [redis_pubsub()], extra_args=args)
    deliveries = lambda prefix: [json.loads(l) for l in record.read_text().splitlines()
                                 if json.loads(l)["path"].startswith(prefix)] if record.exists() else []
    try:
        r = requests.post(sc.url(f"/v1.0/publish/pubsub/{topic}"), json={"n": 1})
        assert r.status_code == 204
        assert poll_until(lambda: len(deliveries("/slow/")) == 1, 10)
        sc.proc.terminate()
        assert sc.proc.wait(timeout=15) == 0, sc.stderr()
        sc = sidecars.start(app_id, [redis_pubsub()], extra_args=args)
        assert poll_until(lambda: len(deliveries("/slow/")) >= 2, 20), "the event came back after the restart"
        time.sleep(3.5)
        assert deliveries("/ok/dead") == [], "nothing was dead-lettered because of the shutdown"
    finally:
        sc.stop()
        app.stop()
        redis_command("DEL", f"{topic}-dead")


def test_subscriptions_pause_while_the_app_is_unhealthy(sidecars, tmp_path, topic):
    app, record = subscriber_app(tmp_path, "healthapp", topic)
    sc = sidecars.start(f"health-{uuid.uuid4().hex[:6]}", [redis_pubsub()], extra_args=[
        "--app-port", str(app.port), "--enable-app-health-check", "--app-health-check-path", "/health",
        "--app-health-probe-interval", "1", "--app-health-threshold", "1"])
    try:
        assert requests.post(sc.url(f"/v1.0/publish/pubsub/{topic}"), json={"n": 0}).status_code == 204
        assert poll_until(lambda: numbers(record) == [0], 10)
        requests.post(f"http://127.0.0.1:{app.port}/sethealth/0")
        assert poll_until(lambda: "pausing its subscriptions" in sc.stderr(), 10), sc.stderr()
        assert requests.post(sc.url(f"/v1.0/publish/pubsub/{topic}"), json={"n": 1}).status_code == 204
        time.sleep(2)
        assert numbers(record) == [0], "nothing is delivered while the app is unhealthy"
        requests.post(f"http://127.0.0.1:{app.port}/sethealth/1")
        assert poll_until(lambda: numbers(record) == [0, 1], 15), "delivery resumes once the app is healthy"
    finally:
        sc.stop()
        app.stop()
