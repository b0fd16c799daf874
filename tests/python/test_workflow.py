"""Dapr Workflow through the real sidecar, driven by the official `dapr-ext-workflow` SDK (its durabletask worker
speaks `TaskHubSidecarService` on the sidecar's gRPC port): activity chaining, fan-out/fan-in, a durable timer,
an external event, terminate, suspend/resume, purge, a failing activity, a child workflow, and a sidecar restart
in the middle of a workflow that then completes from its stored history. Plus Dapr's workflow HTTP API."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import requests

from conftest import component, unique

wf = pytest.importorskip("dapr.ext.workflow")

# Set by the tests that need to hold an activity until they say so.
GATE = threading.Event()
SEEN: list[str] = []


def build_runtime(host: str, port: int) -> "wf.WorkflowRuntime":
    rt = wf.WorkflowRuntime(host=host, port=str(port))

    @rt.activity(name="double")
    def double(ctx, x: int) -> int:
        return x * 2

    @rt.activity(name="gated")
    def gated(ctx, x: int) -> int:
        SEEN.append(f"gated {x}")
        GATE.wait(30)
        return x + 1

    @rt.activity(name="explode")
    def explode(ctx, _) -> None:
        raise ValueError("the activity exploded")

    @rt.workflow(name="chain")
    def chain(ctx: wf.DaprWorkflowContext, x: int):
        a = yield ctx.call_activity(double, input=x)
        b = yield ctx.call_activity(double, input=a)
        return b

    @rt.workflow(name="fan")
    def fan(ctx: wf.DaprWorkflowContext, n: int):
        results = yield wf.when_all([ctx.call_activity(double, input=i) for i in range(n)])
        return sum(results)

    @rt.workflow(name="sleepy")
    def sleepy(ctx: wf.DaprWorkflowContext, _):
        yield ctx.create_timer(timedelta(seconds=1))
        return "woke"

    @rt.workflow(name="approval")
    def approval(ctx: wf.DaprWorkflowContext, _):
        answer = yield ctx.wait_for_external_event("approve")
        return {"approved": answer}

    @rt.workflow(name="failing")
    def failing(ctx: wf.DaprWorkflowContext, _):
        yield ctx.call_activity(explode, input=None)

    @rt.workflow(name="gate_chain")
    def gate_chain(ctx: wf.DaprWorkflowContext, x: int):
        a = yield ctx.call_activity(gated, input=x)
        b = yield ctx.call_activity(double, input=a)
        return b

    @rt.workflow(name="parent")
    def parent(ctx: wf.DaprWorkflowContext, x: int):
        r = yield ctx.call_child_workflow(chain, input=x)
        return r + 1

    return rt


@pytest.fixture(scope="module")
def env(sidecars):
    """A sidecar with an in-memory actor state store, a worker and a client."""
    sc = sidecars.start(unique("wf"), [component("statestore", "state.in-memory", {"actorStateStore": "true"})])
    rt = build_runtime("127.0.0.1", sc.grpc_port)
    rt.start()
    client = wf.DaprWorkflowClient(host="127.0.0.1", port=str(sc.grpc_port))
    yield sc, client
    rt.shutdown()


def finish(client, iid, timeout=30):
    state = client.wait_for_workflow_completion(iid, timeout_in_seconds=timeout)
    assert state is not None
    if state.failure_details is not None:
        print("failure:", state.failure_details.error_type, state.failure_details.message)
    return state


def test_activities_chain_and_the_result_is_the_workflow_output(env):
    _, client = env
    iid = client.schedule_new_workflow(workflow="chain", input=3)
    state = finish(client, iid)
    assert state.runtime_status == wf.WorkflowStatus.COMPLETED
    assert state.serialized_output == "12"
    assert state.serialized_input == "3"
    assert state.name == "chain"


def test_fan_out_fan_in_waits_for_every_activity(env):
    _, client = env
    state = finish(client, client.schedule_new_workflow(workflow="fan", input=10))
    assert state.runtime_status == wf.WorkflowStatus.COMPLETED
    assert state.serialized_output == str(sum(2 * i for i in range(10)))


def test_a_durable_timer_fires(env):
    _, client = env
    state = finish(client, client.schedule_new_workflow(workflow="sleepy"))
    assert state.serialized_output == '"woke"'


def test_an_external_event_resumes_the_workflow(env):
    _, client = env
    iid = client.schedule_new_workflow(workflow="approval", instance_id=unique("appr"))
    client.wait_for_workflow_start(iid, timeout_in_seconds=30)
    client.raise_workflow_event(iid, "approve", data=True)
    state = finish(client, iid)
    assert state.runtime_status == wf.WorkflowStatus.COMPLETED
    assert state.serialized_output == '{"approved": true}'


def test_terminate_ends_a_waiting_workflow(env):
    _, client = env
    iid = client.schedule_new_workflow(workflow="approval")
    client.wait_for_workflow_start(iid, timeout_in_seconds=30)
    client.terminate_workflow(iid, output="stopped")
    state = finish(client, iid)
    assert state.runtime_status == wf.WorkflowStatus.TERMINATED


def test_suspend_holds_events_until_resume(env):
    _, client = env
    iid = client.schedule_new_workflow(workflow="approval")
    client.wait_for_workflow_start(iid, timeout_in_seconds=30)
    client.pause_workflow(iid)
    assert client.get_workflow_state(iid).runtime_status == wf.WorkflowStatus.SUSPENDED
    client.raise_workflow_event(iid, "approve", data="yes")
    # Still suspended: the event waits.
    assert client.get_workflow_state(iid).runtime_status == wf.WorkflowStatus.SUSPENDED
    client.resume_workflow(iid)
    state = finish(client, iid)
    assert state.runtime_status == wf.WorkflowStatus.COMPLETED
    assert state.serialized_output == '{"approved": "yes"}'


def test_purge_deletes_a_finished_workflow_and_refuses_a_running_one(env):
    _, client = env
    running = client.schedule_new_workflow(workflow="approval")
    client.wait_for_workflow_start(running, timeout_in_seconds=30)
    with pytest.raises(Exception):
        client.purge_workflow(running)
    done = client.schedule_new_workflow(workflow="chain", input=1)
    finish(client, done)
    client.purge_workflow(done)
    assert client.get_workflow_state(done) is None
    client.terminate_workflow(running)


def test_an_activity_that_raises_fails_the_workflow_with_its_details(env):
    _, client = env
    state = finish(client, client.schedule_new_workflow(workflow="failing"))
    assert state.runtime_status == wf.WorkflowStatus.FAILED
    assert state.failure_details is not None
    assert "the activity exploded" in state.failure_details.message


def test_a_child_workflow_result_reaches_its_parent(env):
    _, client = env
    state = finish(client, client.schedule_new_workflow(workflow="parent", input=2))
    assert state.runtime_status == wf.WorkflowStatus.COMPLETED
    assert state.serialized_output == "9"


def test_an_instance_id_is_unique_while_running(env):
    _, client = env
    iid = unique("dup")
    client.schedule_new_workflow(workflow="approval", instance_id=iid)
    with pytest.raises(Exception):
        client.schedule_new_workflow(workflow="approval", instance_id=iid)
    client.terminate_workflow(iid)


def test_the_http_api_starts_reads_raises_and_purges(env):
    sc, client = env
    iid = unique("http")
    r = requests.post(sc.url(f"/v1.0/workflows/dapr/approval/start?instanceID={iid}"), json={"a": 1})
    assert r.status_code == 202, r.text
    assert r.json() == {"instanceID": iid}
    client.wait_for_workflow_start(iid, timeout_in_seconds=30)
    r = requests.get(sc.url(f"/v1.0/workflows/dapr/{iid}"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["instanceID"], body["workflowName"], body["runtimeStatus"]) == (iid, "approval", "RUNNING")
    assert body["properties"]["dapr.workflow.input"] == '{"a": 1}' or body["properties"]["dapr.workflow.input"] == '{"a":1}'
    r = requests.post(sc.url(f"/v1.0/workflows/dapr/{iid}/raiseEvent/approve"), json=False)
    assert r.status_code == 202, r.text
    state = finish(client, iid)
    assert state.serialized_output == '{"approved": false}'
    assert requests.post(sc.url(f"/v1.0-beta1/workflows/dapr/{iid}/purge")).status_code == 202
    # As in Dapr, a missing instance reads back as just its id.
    r = requests.get(sc.url(f"/v1.0/workflows/dapr/{iid}"))
    assert r.status_code == 200, r.text
    assert r.json()["instanceID"] == iid and not r.json().get("runtimeStatus")


def test_http_api_errors_use_dapr_codes(env):
    sc, _ = env
    r = requests.post(sc.url("/v1.0/workflows/dapr/chain/start?instanceID=bad%20id"))
    assert r.status_code == 400 and r.json()["errorCode"] == "ERR_INSTANCE_ID_INVALID", r.text
    r = requests.post(sc.url("/v1.0/workflows/dapr/chain/start?instanceID=" + "x" * 65))
    assert r.status_code == 400 and r.json()["errorCode"] == "ERR_INSTANCE_ID_TOO_LONG", r.text
    r = requests.post(sc.url(f"/v1.0/workflows/dapr/{unique('nope')}/terminate"))
    assert r.status_code == 404 and r.json()["errorCode"] == "ERR_INSTANCE_ID_NOT_FOUND", r.text
    r = requests.post(sc.url(f"/v1.0/workflows/dapr/{unique('nope')}/raiseEvent/x"))
    assert r.status_code == 500 and r.json()["errorCode"] == "ERR_RAISE_EVENT_WORKFLOW", r.text


def test_a_sidecar_restart_mid_workflow_resumes_it_from_the_store(fresh_sidecars, tmp_path):
    """The actor store is a SQLite file that outlives the sidecar: the workflow is stuck in an activity when the
    sidecar is killed; a new sidecar on the same file and ports resumes it and it completes."""
    db = tmp_path / "wf.db"
    comps = [component("statestore", "state.sqlite", {"connectionString": str(db), "actorStateStore": "true"})]
    app_id = unique("wfdur")
    sc = fresh_sidecars.start(app_id, comps)
    GATE.clear()
    SEEN.clear()
    rt = build_runtime("127.0.0.1", sc.grpc_port)
    rt.start()
    client = wf.DaprWorkflowClient(host="127.0.0.1", port=str(sc.grpc_port))
    iid = client.schedule_new_workflow(workflow="gate_chain", input=5)
    deadline = time.monotonic() + 30
    while "gated 5" not in SEEN and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "gated 5" in SEEN
    sc.proc.kill()
    sc.proc.wait()
    # The activity now ends, but its answer has no sidecar to go to: the next sidecar runs it again.
    GATE.set()
    rt.shutdown()

    sc2 = fresh_sidecars.start(app_id, comps)
    rt2 = build_runtime("127.0.0.1", sc2.grpc_port)
    rt2.start()
    try:
        client2 = wf.DaprWorkflowClient(host="127.0.0.1", port=str(sc2.grpc_port))
        state = client2.wait_for_workflow_completion(iid, timeout_in_seconds=30)
        assert state is not None and state.runtime_status == wf.WorkflowStatus.COMPLETED
        assert state.serialized_output == "12"
    finally:
        rt2.shutdown()
