"""Pub/sub through the real sidecar: the official Python SDK publishes (publish_event, publish_events) and
subscribes (streaming `subscribe()`, `dapr.ext.grpc.App`), a plain HTTP app subscribes programmatically
(`GET /dapr/subscribe`) and declaratively (Subscription resources with CEL routing rules). What each app gets is
checked against Dapr's CloudEvent envelope and delivery rules: RETRY redelivers, DROP and 404 drop (to the
dead-letter topic when there is one), rawPayload skips the envelope, and bad input gets Dapr's error codes.

The broker here is `pubsub.in-memory`; Redis Streams (at-least-once across a SIGKILL, competing consumers) is in
test_pubsub_redis.py."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import grpc
import pytest
import requests

from conftest import component, poll_until, sdk_client, start_app

SUBSCRIPTIONS = [
    {"pubsubname": "pubsub", "topic": "orders", "route": "/ok/orders"},
    {"pubsubname": "pubsub", "topic": "flaky", "route": "/flaky/2/flaky"},
    {"pubsubname": "pubsub", "topic": "drops", "route": "/status/DROP/drops", "deadLetterTopic": "dead"},
    {"pubsubname": "pubsub", "topic": "gone", "route": "/code/404/gone", "deadLetterTopic": "dead"},
    {"pubsubname": "pubsub", "topic": "dead", "route": "/ok/dead"},
    {"pubsubname": "pubsub", "topic": "raw", "route": "/ok/raw", "metadata": {"rawPayload": "true"}},
    {"pubsubname": "pubsub", "topic": "bulk", "route": "/ok/bulk"},
    {"pubsubname": "pubsub", "topic": "path/with/slashes", "route": "/ok/slashes"},
    {"pubsubname": "pubsub", "topic": "batched", "route": "/bulk/batched", "deadLetterTopic": "dead",
     "bulkSubscribe": {"enabled": True, "maxMessagesCount": 50, "maxAwaitDurationMs": 300}},
]

DECLARATIVE = {
    "apiVersion": "dapr.io/v2alpha1",
    "kind": "Subscription",
    "metadata": {"name": "routed"},
    "spec": {
        "pubsubname": "pubsub",
        "topic": "routed",
        "routes": {
            "rules": [
                {"match": 'event.type == "widget"', "path": "/ok/widgets"},
                {"match": "event.data.price > 100", "path": "/ok/expensive"},
            ],
            "default": "/ok/routed-default",
        },
    },
}

DECLARATIVE_NO_DEFAULT = {
    "apiVersion": "dapr.io/v1alpha1",
    "kind": "Subscription",
    "metadata": {"name": "v1style"},
    "spec": {"pubsubname": "pubsub", "topic": "v1topic", "route": "/ok/v1"},
}

# RETRY answers are retried by the component's inbound policy (fast), before the broker's own redelivery.
RESILIENCY = {
    "apiVersion": "dapr.io/v1alpha1",
    "kind": "Resiliency",
    "metadata": {"name": "pubsub-inbound"},
    "spec": {
        "policies": {"retries": {"quick": {"policy": "constant", "duration": "50ms", "maxRetries": 5}}},
        "targets": {"components": {"pubsub": {"inbound": {"retry": "quick"}}}},
    },
}


class Deliveries:
    """What the HTTP subscriber app recorded, one delivery per line."""

    def __init__(self, path: Path):
        self.path = path

    def all(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            d = json.loads(line)
            try:
                d["event"] = json.loads(d["body"])
            except ValueError:
                d["event"] = None
            out.append(d)
        return out

    def at(self, route_prefix: str) -> list[dict]:
        return [d for d in self.all() if d["path"].startswith(route_prefix)]

    def wait(self, route_prefix: str, n: int, timeout: float = 10.0) -> list[dict]:
        assert poll_until(lambda: len(self.at(route_prefix)) >= n, timeout), (
            f"expected {n} deliveries at {route_prefix}, got {self.at(route_prefix)}"
        )
        return self.at(route_prefix)


@pytest.fixture(scope="module")
def env(sidecars, tmp_path_factory):
    work = tmp_path_factory.mktemp("pubsub")
    subs = work / "subscriptions.json"
    subs.write_text(json.dumps(SUBSCRIPTIONS))
    record = work / "deliveries.jsonl"
    app = start_app("subscriber_http.py", "subscriber", work, env={"SUBSCRIPTIONS": str(subs), "RECORD": str(record)})
    scoped = component("scoped", "pubsub.in-memory", {
        "publishingScopes": "subscriber=allowed",
        "allowedTopics": "allowed,other",
    })
    sc = sidecars.start(
        "subscriber",
        [component("pubsub", "pubsub.in-memory"), scoped, DECLARATIVE, DECLARATIVE_NO_DEFAULT, RESILIENCY],
        extra_args=["--app-port", str(app.port)],
    )
    yield sc, Deliveries(record)
    app.stop()


def test_sdk_publish_reaches_the_http_app_as_daprs_cloudevent(env):
    sc, got = env
    with sdk_client(sc) as c:
        c.publish_event("pubsub", "orders", json.dumps({"orderId": 7}), data_content_type="application/json")
        c.publish_event("pubsub", "orders", "plain words")
    d = got.wait("/ok/orders", 2)
    events = [x["event"] for x in d]
    as_json = next(e for e in events if e["datacontenttype"] == "application/json")
    assert as_json["data"] == {"orderId": 7}
    for e in events:
        assert e["source"] == "subscriber"
        assert e["type"] == "com.dapr.event.sent"
        assert e["specversion"] == "1.0"
        assert e["topic"] == "orders" and e["pubsubname"] == "pubsub"
        assert e["id"] and e["time"].endswith("Z")
        assert e["traceparent"] == e["traceid"] and e["traceparent"].startswith("00-")
    text = next(e for e in events if e["datacontenttype"] != "application/json")
    assert text["datacontenttype"] == "text/plain" and text["data"] == "plain words"
    assert all(x["content_type"] == "application/cloudevents+json" for x in d)


def test_http_publish_keeps_a_cloudevent_and_applies_overrides(env):
    sc, got = env
    ce = {"id": "my-own-id", "source": "elsewhere", "type": "custom.type", "specversion": "1.0",
          "datacontenttype": "application/json", "data": {"k": "v"}}
    r = requests.post(sc.url("/v1.0/publish/pubsub/orders"), data=json.dumps(ce),
                      headers={"content-type": "application/cloudevents+json"})
    assert r.status_code == 204, r.text
    r = requests.post(sc.url("/v1.0/publish/pubsub/orders?metadata.cloudevent.id=override-id"
                             "&metadata.cloudevent.type=overridden"), data="x", headers={"content-type": "text/plain"})
    assert r.status_code == 204, r.text
    events = {x["event"]["id"]: x["event"] for x in got.wait("/ok/orders", 4)}
    mine = events["my-own-id"]
    assert mine["source"] == "elsewhere" and mine["type"] == "custom.type" and mine["data"] == {"k": "v"}
    assert mine["topic"] == "orders" and mine["pubsubname"] == "pubsub"
    assert events["override-id"]["type"] == "overridden"


def test_declarative_subscription_routes_by_cel_rules(env):
    sc, got = env
    publish = lambda data, **md: requests.post(
        sc.url("/v1.0/publish/pubsub/routed"), json=data,
        params={f"metadata.{k}": v for k, v in md.items()})
    assert publish({"price": 1}, **{"cloudevent.type": "widget"}).status_code == 204
    assert publish({"price": 500}).status_code == 204
    assert publish({"price": 5}).status_code == 204
    assert got.wait("/ok/widgets", 1)[0]["event"]["data"] == {"price": 1}
    assert got.wait("/ok/expensive", 1)[0]["event"]["data"] == {"price": 500}
    assert got.wait("/ok/routed-default", 1)[0]["event"]["data"] == {"price": 5}
    # A v1alpha1 Subscription's single route.
    assert requests.post(sc.url("/v1.0/publish/pubsub/v1topic"), data="v1").status_code == 204
    got.wait("/ok/v1", 1)


def test_retry_is_redelivered_until_the_app_takes_it(env):
    sc, got = env
    assert requests.post(sc.url("/v1.0/publish/pubsub/flaky"), json={"n": 1}).status_code == 204
    d = got.wait("/flaky/", 3)
    ids = {x["event"]["id"] for x in d}
    assert len(ids) == 1, "the same event was delivered again"
    assert sorted(x["attempt"] for x in d)[:3] == [1, 2, 3]
    time.sleep(0.5)
    assert len(got.at("/flaky/")) == 3, "a taken event is not delivered again"


def test_drop_and_404_go_to_the_dead_letter_topic_with_the_original_event(env):
    sc, got = env
    before = len(got.at("/ok/dead"))
    assert requests.post(sc.url("/v1.0/publish/pubsub/drops"), data="drop me",
                         headers={"content-type": "text/plain"}).status_code == 204
    assert requests.post(sc.url("/v1.0/publish/pubsub/gone"), data="gone",
                         headers={"content-type": "text/plain"}).status_code == 204
    dropped = got.wait("/status/DROP/", 1)[0]["event"]
    gone = got.wait("/code/404/", 1)[0]["event"]
    dead = got.wait("/ok/dead", before + 2)
    dead_ids = {x["event"]["id"] for x in dead}
    assert dropped["id"] in dead_ids and gone["id"] in dead_ids
    original = next(x["event"] for x in dead if x["event"]["id"] == dropped["id"])
    # The original envelope, as published to "drops": not re-wrapped for the dead-letter topic.
    assert original["topic"] == "drops" and original["data"] == "drop me"
    time.sleep(0.3)
    assert len(got.at("/status/DROP/")) == 1 and len(got.at("/code/404/")) == 1, "dropped events are not retried"


def test_raw_payload_both_ways(env):
    sc, got = env
    r = requests.post(sc.url("/v1.0/publish/pubsub/raw?metadata.rawPayload=true"), data=b"\x00raw bytes",
                      headers={"content-type": "application/octet-stream"})
    assert r.status_code == 204, r.text
    e = got.wait("/ok/raw", 1)[0]["event"]
    import base64
    assert base64.b64decode(e["data_base64"]) == b"\x00raw bytes"
    assert e["datacontenttype"] == "application/octet-stream" and e["topic"] == "raw"


def test_topics_may_contain_slashes(env):
    sc, got = env
    assert requests.post(sc.url("/v1.0/publish/pubsub/path/with/slashes"), data="s").status_code == 204
    assert got.wait("/ok/slashes", 1)[0]["event"]["topic"] == "path/with/slashes"


def test_bulk_publish_from_the_sdk_and_http(env):
    sc, got = env
    with sdk_client(sc) as c:
        resp = c.publish_events("pubsub", "bulk", [json.dumps({"i": i}) for i in range(5)],
                                data_content_type="application/json")
        assert resp.failed_entries == []
    entries = [{"entryId": str(i), "event": {"j": i}, "contentType": "application/json"} for i in range(3)]
    entries.append({"entryId": "t", "event": "some text", "contentType": "text/plain"})
    r = requests.post(sc.url("/v1.0-alpha1/publish/bulk/pubsub/bulk"), json=entries)
    assert r.status_code == 204, r.text
    r = requests.post(sc.url("/v1.0/publish/bulk/pubsub/bulk"), json=entries[:1])
    assert r.status_code == 204, r.text
    d = got.wait("/ok/bulk", 10)
    datas = [x["event"]["data"] for x in d]
    assert {"i": 4} in datas and {"j": 2} in datas and "some text" in datas


def test_metadata_lists_every_subscription_with_its_kind(env):
    sc, _ = env
    subs = requests.get(sc.url("/v1.0/metadata")).json()["subscriptions"]
    by_topic = {s["topic"]: s for s in subs}
    assert by_topic["orders"]["type"] == "PROGRAMMATIC"
    assert by_topic["drops"]["deadLetterTopic"] == "dead"
    routed = by_topic["routed"]
    assert routed["type"] == "DECLARATIVE"
    assert routed["rules"][0] == {"match": 'event.type == "widget"', "path": "/ok/widgets"}
    assert routed["rules"][-1] == {"path": "/ok/routed-default"}
    from dapr.proto import api_v1, api_service_v1
    with grpc.insecure_channel(sc.grpc_address) as ch:
        md = api_service_v1.DaprStub(ch).GetMetadata(api_v1.GetMetadataRequest())
    kinds = {s.topic: s for s in md.subscriptions}
    assert kinds["routed"].type == api_v1.PubsubSubscriptionType.DECLARATIVE
    assert kinds["orders"].type == api_v1.PubsubSubscriptionType.PROGRAMMATIC
    assert [r.path for r in kinds["routed"].rules.rules] == ["/ok/widgets", "/ok/expensive", "/ok/routed-default"]
    assert {c.name: c.type for c in md.registered_components}["pubsub"] == "pubsub.in-memory"


def test_bad_input_gets_daprs_errors(env):
    sc, _ = env
    r = requests.post(sc.url("/v1.0/publish/nope/orders"), data="x")
    assert (r.status_code, r.json()["errorCode"]) == (404, "ERR_PUBSUB_NOT_FOUND")
    r = requests.post(sc.url("/v1.0/publish/pubsub"), data="x")
    assert (r.status_code, r.json()["errorCode"]) == (404, "ERR_TOPIC_NAME_EMPTY")
    r = requests.post(sc.url("/v1.0/publish/pubsub/orders?metadata.rawPayload=perhaps"), data="x")
    assert (r.status_code, r.json()["errorCode"]) == (400, "ERR_PUBSUB_REQUEST_METADATA")
    r = requests.post(sc.url("/v1.0/publish/pubsub/orders?metadata.ttlInSeconds=-5"), data="x")
    assert (r.status_code, r.json()["errorCode"]) == (400, "ERR_PUBSUB_REQUEST_METADATA")
    r = requests.post(sc.url("/v1.0/publish/pubsub/orders"), data="[1,2]",
                      headers={"content-type": "application/cloudevents+json"})
    assert (r.status_code, r.json()["errorCode"]) == (400, "ERR_PUBSUB_CLOUD_EVENTS_SER")
    # Scopes: this app may publish only "allowed"; "other" is allowed for the component but not this app's scope,
    # "secret" is not an allowed topic at all.
    assert requests.post(sc.url("/v1.0/publish/scoped/allowed"), data="x").status_code == 204
    for topic in ("other", "secret"):
        r = requests.post(sc.url(f"/v1.0/publish/scoped/{topic}"), data="x")
        assert (r.status_code, r.json()["errorCode"]) == (403, "ERR_PUBSUB_FORBIDDEN"), topic
    bulk = sc.url("/v1.0-alpha1/publish/bulk/pubsub/bulk")
    r = requests.post(bulk, data="{not json")
    assert (r.status_code, r.json()["errorCode"]) == (400, "ERR_PUBSUB_EVENTS_SER")
    dup = [{"entryId": "1", "event": "a", "contentType": "text/plain"}] * 2
    r = requests.post(bulk, json=dup)
    assert (r.status_code, r.json()["errorCode"]) == (400, "ERR_PUBSUB_EVENTS_SER")
    r = requests.post(bulk, json=[{"entryId": "1", "event": {"a": 1}, "contentType": "text/plain"}])
    assert (r.status_code, r.json()["errorCode"]) == (400, "ERR_PUBSUB_EVENTS_SER")
    # Bigger than --max-body-size (4 MiB by default).
    r = requests.post(sc.url("/v1.0/publish/pubsub/orders"), data=b"x" * (5 << 20))
    assert r.status_code == 400 and r.json()["errorCode"] == "ERR_BODY_READ"
    with sdk_client(sc) as c:
        with pytest.raises(grpc.RpcError) as e:
            c.publish_event("nope", "orders", "x")
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "pubsub nope is not found" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            c.publish_event("scoped", "secret", "x")
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_streaming_subscription_from_the_sdk(env):
    sc, _ = env
    with sdk_client(sc) as c:
        sub = c.subscribe("pubsub", "streamed")
        try:
            for i in range(20):
                c.publish_event("pubsub", "streamed", json.dumps({"n": i}), data_content_type="application/json")
            seen = []
            while len(seen) < 20:
                m = sub.next_message()
                if m is None:
                    continue
                assert m.topic() == "streamed" and m.pubsub_name() == "pubsub"
                seen.append(m.data()["n"])
                sub.respond_success(m)
            assert sorted(seen) == list(range(20))
            streams = [s for s in requests.get(sc.url("/v1.0/metadata")).json()["subscriptions"]
                       if s["topic"] == "streamed"]
            assert streams and streams[0]["type"] == "STREAMING"
        finally:
            sub.close()
    assert poll_until(lambda: not any(s["topic"] == "streamed" for s in
                                      requests.get(sc.url("/v1.0/metadata")).json()["subscriptions"]), 5)


def test_streaming_subscription_with_a_handler(env):
    sc, _ = env
    got, done = [], threading.Event()

    def handler(message):
        from dapr.clients.grpc._response import TopicEventResponse
        got.append(message.data())
        if len(got) >= 3:
            done.set()
        return TopicEventResponse("success")

    with sdk_client(sc) as c:
        close = c.subscribe_with_handler("pubsub", "handled", handler)
        try:
            for i in range(3):
                c.publish_event("pubsub", "handled", f"m{i}")
            assert done.wait(10), got
        finally:
            close()
    assert sorted(got) == ["m0", "m1", "m2"]


def test_a_second_initial_request_ends_the_stream(env):
    sc, _ = env
    from dapr.proto import api_v1, api_service_v1

    def requests_():
        init = api_v1.SubscribeTopicEventsRequestAlpha1(
            initial_request=api_v1.SubscribeTopicEventsRequestInitialAlpha1(pubsub_name="pubsub", topic="twice"))
        yield init
        time.sleep(0.3)
        yield init
        time.sleep(2)

    with grpc.insecure_channel(sc.grpc_address) as ch:
        stub = api_service_v1.DaprStub(ch)
        stream = stub.SubscribeTopicEventsAlpha1(requests_())
        first = next(stream)
        assert first.HasField("initial_response")
        with pytest.raises(grpc.RpcError) as e:
            next(stream)
        assert "duplicate initial request" in e.value.details()
        # Unknown pubsub: refused before any response.
        bad = stub.SubscribeTopicEventsAlpha1(iter([api_v1.SubscribeTopicEventsRequestAlpha1(
            initial_request=api_v1.SubscribeTopicEventsRequestInitialAlpha1(pubsub_name="nope", topic="t"))]))
        with pytest.raises(grpc.RpcError) as e:
            next(bad)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_grpc_app_subscriptions_with_the_sdk_app(sidecars, tmp_path):
    record = tmp_path / "grpc-events.jsonl"
    app = start_app("grpc_subscriber.py", "grpc-sub", tmp_path, env={"RECORD": str(record)})
    sc = sidecars.start("grpcsub", [component("pubsub", "pubsub.in-memory")],
                        extra_args=["--app-port", str(app.port), "--app-protocol", "grpc"])
    try:
        events = lambda: [json.loads(l) for l in record.read_text().splitlines()] if record.exists() else []
        with sdk_client(sc) as c:
            c.publish_event("pubsub", "grpc-orders", json.dumps({"o": 1}), data_content_type="application/json")
            c.publish_event("pubsub", "grpc-routed", "urgent one", publish_metadata={"cloudevent.type": "urgent"})
            c.publish_event("pubsub", "grpc-routed", "ordinary")
            c.publish_event("pubsub", "grpc-drop", "to the dead letters")
        assert poll_until(lambda: {e["route"] for e in events()} >= {"orders", "urgent", "drop", "dead"}, 10), events()
        by_route = {e["route"]: e for e in events()}
        assert json.loads(by_route["orders"]["data"]) == {"o": 1}
        assert by_route["orders"]["source"] == "grpcsub"
        assert by_route["orders"]["extensions"]["topic"] == "grpc-orders"
        assert by_route["urgent"]["data"] == "urgent one"
        assert by_route["dead"]["id"] == by_route["drop"]["id"]
        time.sleep(0.3)
        assert not any(e["data"] == "ordinary" for e in events()), "no rule matched and there is no default route"
        subs = {s["topic"]: s for s in requests.get(sc.url("/v1.0/metadata")).json()["subscriptions"]}
        assert subs["grpc-drop"]["deadLetterTopic"] == "grpc-dead" and subs["grpc-orders"]["type"] == "PROGRAMMATIC"
    finally:
        sc.stop()
        app.stop()


def test_bulk_subscribe_delivers_batches_and_settles_each_entry(env):
    sc, got = env
    dead_before = len(got.at("/ok/dead"))
    with sdk_client(sc) as c:
        resp = c.publish_events("pubsub", "batched", [f"e{i}" for i in range(20)] + ["drop"],
                                data_content_type="text/plain")
        assert resp.failed_entries == []
    batches = got.wait("/bulk/", 1)
    assert poll_until(lambda: sum(len(b["event"]["entries"]) for b in got.at("/bulk/")) >= 21, 10)
    batches = got.at("/bulk/")
    assert len(batches) < 21, "events arrived in batches, not one by one"
    first = batches[0]["event"]
    assert first["type"] == "com.dapr.event.sent.bulk" and first["topic"] == "batched"
    assert first["pubsubname"] == "pubsub" and batches[0]["content_type"] == "application/json"
    entry = first["entries"][0]
    assert entry["entryId"] and entry["contentType"] == "application/cloudevents+json"
    assert entry["event"]["type"] == "com.dapr.event.sent" and entry["event"]["topic"] == "batched"
    datas = sorted(e["event"]["data"] for b in batches for e in b["event"]["entries"])
    assert datas == sorted([f"e{i}" for i in range(20)] + ["drop"]), "each entry once: all answered"
    # The entry the app dropped went to the dead-letter topic.
    dead = got.wait("/ok/dead", dead_before + 1)
    assert any(d["event"]["data"] == "drop" and d["event"]["topic"] == "batched" for d in dead)
    # An entry without a status failed; with a dead-letter topic it goes there (as in Dapr), not back to the app.
    with sdk_client(sc) as c:
        c.publish_event("pubsub", "batched", "skip", data_content_type="text/plain")
    assert poll_until(lambda: any(d["event"]["data"] == "skip" for d in got.at("/ok/dead")), 10)
    assert sum(e["event"]["data"] == "skip" for b in got.at("/bulk/") for e in b["event"]["entries"]) == 1


def test_pubsub_metrics_have_daprs_names(env):
    sc, got = env
    assert requests.post(sc.url("/v1.0/publish/pubsub/orders"), data="counted").status_code == 204
    got.wait("/ok/orders", 1)
    def text():
        return requests.get(f"http://127.0.0.1:{sc.metrics_port}/metrics").text
    assert poll_until(lambda: 'process_status="success"' in text(), 5)
    t = text()
    assert 'dapr_component_pubsub_egress_count{app_id="subscriber",component="pubsub"' in t
    assert 'success="true",topic="orders"' in t
    assert "dapr_component_pubsub_ingress_latencies_bucket" in t
    assert 'process_status="drop"' in t, "the DROP answers of the other tests are counted"
