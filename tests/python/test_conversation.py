"""The conversation API through the real sidecar: the official Python SDK's `converse_alpha1` and
`converse_alpha2` (gRPC) and plain HTTP `POST /v1.0-alpha1|alpha2/conversation/<name>/converse`, against
`conversation.echo` and `conversation.openai` pointed at a chat-completions server this module runs; tool calls
and tool results, PII scrubbing, the JSON shape Dapr's protojson writes, Dapr's error codes for bad input, and
the metadata API listing the components."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
import requests

from conftest import component, sdk_client

KEY = "sk-python"


class FakeOpenAI(BaseHTTPRequestHandler):
    """Chat completions: answers every text it was sent (joined by newlines); calls every offered tool until a
    tool has answered. Records each request body on the server."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
        self.server.seen.append((self.path, self.headers.get("authorization"), body))
        if self.headers.get("authorization") != f"Bearer {KEY}":
            return self.answer(401, {"error": {"message": "Incorrect API key provided"}})
        texts = []
        for m in body["messages"]:
            content = m.get("content")
            parts = [content] if isinstance(content, str) else [p["text"] for p in content or []]
            for p in parts:
                texts.append(f"tool {m['tool_call_id']}: {p}" if m["role"] == "tool" else p)
        tools = body.get("tools") or []
        if tools and body["messages"][-1]["role"] != "tool":
            calls = [{"id": f"call_{i}", "type": "function",
                      "function": {"name": t["function"]["name"], "arguments": '{"city": "Paris"}'}}
                     for i, t in enumerate(tools)]
            message, finish = {"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls"
        else:
            message, finish = {"role": "assistant", "content": "\n".join(texts)}, "stop"
        self.answer(200, {"id": "1", "object": "chat.completion", "model": body["model"],
                          "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                          "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}})

    def answer(self, status, doc):
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def env(sidecars):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    server.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1"
    sc = sidecars.start("conversation", [
        component("echo", "conversation.echo"),
        component("gpt", "conversation.openai", {"key": KEY, "model": "fake-model", "endpoint": endpoint}),
        component("wrongkey", "conversation.openai", {"key": "sk-wrong", "endpoint": endpoint}),
    ])
    yield sc, server
    server.shutdown()


def sdk():
    from dapr.clients.grpc import conversation as conv
    return conv


def test_sdk_alpha1_echo(env):
    sc, _ = env
    conv = sdk()
    with sdk_client(sc) as c:
        resp = c.converse_alpha1("echo", [conv.ConversationInput(content="What is Dapr?", role="user"),
                                          conv.ConversationInput(content="my mail is a@b.com", scrub_pii=True)],
                                 context_id="chat-1")
    assert resp.context_id == "chat-1"
    assert [o.result for o in resp.outputs] == ["What is Dapr?\nmy mail is <EMAIL_ADDRESS>"]


def test_sdk_alpha2_echo_tool_calling(env):
    sc, _ = env
    conv = sdk()
    weather = conv.ConversationTools(function=conv.ConversationToolsFunction(
        name="get_weather", description="weather at a place",
        parameters={"type": "object", "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
                    "required": ["location"]}))
    with sdk_client(sc) as c:
        resp = c.converse_alpha2("echo", [conv.ConversationInputAlpha2(
            messages=[conv.create_user_message("What's the weather like in San Francisco?")])], tools=[weather])
    choice = resp.outputs[0].choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "What's the weather like in San Francisco?"
    call = choice.message.tool_calls[0]
    assert (call.id, call.function.name, call.function.arguments) == ("0", "get_weather", "location,unit")
    assert resp.outputs[0].usage.total_tokens == 2 * resp.outputs[0].usage.prompt_tokens > 0


def test_sdk_alpha2_openai_round_trip_with_a_tool(env):
    sc, server = env
    conv = sdk()
    weather = conv.ConversationTools(function=conv.ConversationToolsFunction(
        name="get_weather", parameters={"type": "object", "properties": {"city": {"type": "string"}}}))
    question = conv.create_user_message("weather in Paris?")
    with sdk_client(sc) as c:
        first = c.converse_alpha2("gpt", [conv.ConversationInputAlpha2(messages=[question])], tools=[weather],
                                  temperature=0.3)
        choice = first.outputs[0].choices[0]
        assert choice.finish_reason == "tool_calls"
        call = choice.message.tool_calls[0]
        assert (call.id, call.function.name) == ("call_0", "get_weather")
        assert first.outputs[0].model == "fake-model"
        assert first.outputs[0].usage.total_tokens == 7
        path, auth, body = server.seen[-1]
        assert (path, auth) == ("/v1/chat/completions", f"Bearer {KEY}")
        assert body["model"] == "fake-model" and body["temperature"] == 0.3 and body["tool_choice"] == "auto"
        history = [question, *first.to_assistant_messages(),
                   conv.create_tool_message(call.id, "get_weather", "sunny")]
        second = c.converse_alpha2("gpt", [conv.ConversationInputAlpha2(messages=history)], tools=[weather])
    done = second.outputs[0].choices[0]
    assert done.finish_reason == "stop"
    assert done.message.content == "weather in Paris?\ntool call_0: sunny"
    sent = server.seen[-1][2]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "call_0" and sent[2]["tool_call_id"] == "call_0"


def test_sdk_errors_carry_dapr_codes(env):
    sc, _ = env
    conv = sdk()
    msg = [conv.ConversationInputAlpha2(messages=[conv.create_user_message("hi")])]
    with sdk_client(sc) as c:
        with pytest.raises(Exception) as missing:
            c.converse_alpha2("nope", msg)
        assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "failed finding conversation component nope" in missing.value.details()
        with pytest.raises(Exception) as failed:
            c.converse_alpha2("wrongkey", msg)
        assert failed.value.code() == grpc.StatusCode.INTERNAL
        assert "401: Incorrect API key provided" in failed.value.details()


def post(sc, version, name, body):
    return requests.post(sc.url(f"/v1.0-{version}/conversation/{name}/converse"), data=body, timeout=30)


def test_http_alpha2_answers_as_daprs_protojson(env):
    sc, _ = env
    body = {
        "contextId": "c-1",
        "inputs": [{"messages": [{"ofUser": {"name": "u", "content": [{"text": "well hello there"}]}}]},
                   {"messages": [{"ofSystem": {"content": [{"text": "You are a helpful assistant"}]}}],
                    "scrubPii": True}],
        "tools": [{"function": {"name": "test_function", "description": "A test function",
                                "parameters": {"type": "object", "properties": {"param1": {"type": "string"}}}}}],
        "toolChoice": "auto", "temperature": 0.7, "promptCacheRetention": "86400s",
        "parameters": {"model": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "m"}},
    }
    r = post(sc, "alpha2", "echo", json.dumps(body))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"contextId": "c-1", "outputs": [{
        "choices": [{"finishReason": "tool_calls", "message": {
            "content": "well hello there\nYou are a helpful assistant",
            "toolCalls": [{"id": "0", "function": {"name": "test_function", "arguments": "param1"}}]}}],
        "usage": {"completionTokens": "8", "promptTokens": "8", "totalTokens": "16"}}]}


def test_http_alpha2_scrubs_pii(env):
    sc, _ = env
    body = {"inputs": [{"messages": [{"ofUser": {"content": [{"text": "well hello there from 10.8.9.1"}]}}]},
                       {"messages": [{"of_user": {"content": [{"text": "my email is test@test.com"}]}}]}],
            "scrub_pii": True}
    r = post(sc, "alpha2", "echo", json.dumps(body))
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["choices"][0]["message"]["content"] == \
        "well hello there from <IP>\nmy email is <EMAIL_ADDRESS>"


def test_http_alpha1(env):
    sc, _ = env
    r = post(sc, "alpha1", "echo", json.dumps({"inputs": [{"content": "well hello there"}]}))
    assert r.status_code == 200, r.text
    assert r.json() == {"outputs": [{"result": "well hello there"}]}
    r = post(sc, "alpha1", "gpt", json.dumps({"inputs": [{"content": "call me at +2222222222", "role": "user"}],
                                              "scrubPII": True, "contextID": "x"}))
    assert r.status_code == 200, r.text
    assert r.json() == {"contextID": "x", "outputs": [{"result": "call me at <PHONE_NUMBER>"}]}


@pytest.mark.parametrize("version,name,body,status,code,text", [
    ("alpha1", "echo", '{"metadata": {"model": "daprGPT"}}', 400, "ERR_CONVERSATION_MISSING_INPUTS",
     "missing inputs"),
    ("alpha1", "nope", '{"inputs": [{"content": "x"}]}', 400, "ERR_CONVERSATION_NOT_FOUND", "nope"),
    ("alpha2", "echo", "", 400, "ERR_CONVERSATION_MISSING_INPUTS", "missing inputs"),
    ("alpha2", "echo", '{"inputs": [{"messages": [{"invalidField": {"content": "x"}}]}]}', 400,
     "ERR_CONVERSATION_INVALID_PARMS", "message type cannot be nil"),
    ("alpha2", "echo", '{"inputs": [{"messages": [{"ofAssistant": {"toolCalls": [{"id": "call_123"}]}}]}]}', 400,
     "ERR_CONVERSATION_INVALID_PARMS", "tool types cannot be nil"),
    ("alpha2", "echo", '{"inputs": [{"messages": [{"ofUser": {}}]}], "toolChoice": "required"}', 400,
     "ERR_CONVERSATION_INVALID_PARMS", "tool choice must be"),
    ("alpha2", "echo", '{"inputs": [', 400, "ERR_MALFORMED_REQUEST", "failed deserializing HTTP body"),
    ("alpha2", "echo", '{"inputs": [{"messages": [{"ofUser": {}}]}], "promptCacheRetention": "1h"}', 400,
     "ERR_MALFORMED_REQUEST", "Duration"),
    ("alpha2", "echo", '{"inputs": [{"messages": [{"ofUser": {}, "ofSystem": {}}]}]}', 400,
     "ERR_MALFORMED_REQUEST", "more than one"),
    ("alpha2", "wrongkey", '{"inputs": [{"messages": [{"ofUser": {"content": [{"text": "x"}]}}]}]}', 500,
     "ERR_CONVERSATION_INVOKE", "401"),
])
def test_http_bad_input_gets_daprs_codes(env, version, name, body, status, code, text):
    sc, _ = env
    r = post(sc, version, name, body)
    assert r.status_code == status, r.text
    assert r.json()["errorCode"] == code
    assert text in r.json()["message"]


def test_metadata_lists_conversation_components(env):
    sc, _ = env
    listed = {c["name"]: c for c in requests.get(sc.url("/v1.0/metadata"), timeout=10).json()["components"]}
    assert listed["echo"]["type"] == "conversation.echo"
    assert listed["gpt"]["type"] == "conversation.openai"
    assert listed["gpt"]["version"] == "v1"


def test_metrics_count_conversation_calls(env):
    sc, _ = env
    r = post(sc, "alpha2", "echo", json.dumps({"inputs": [{"messages": [{"ofUser": {"content": [{"text": "x"}]}}]}]}))
    assert r.status_code == 200, r.text
    metrics = requests.get(f"http://127.0.0.1:{sc.metrics_port}/metrics", timeout=10).text
    lines = [l for l in metrics.splitlines() if l.startswith("dapr_component_conversation_count{")]
    ok = [l for l in lines if 'component="echo"' in l and 'success="true"' in l]
    assert ok and float(ok[0].split()[-1]) >= 1, lines
    failed = [l for l in lines if 'component="wrongkey"' in l and 'success="false"' in l]
    assert failed, lines
    assert "dapr_component_conversation_latencies_bucket{" in metrics
