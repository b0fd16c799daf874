"""The Jobs API through the real sidecar: the official Python SDK's `schedule_job` / `get_job` / `delete_job`
(and the Alpha1 names) and plain HTTP `POST|GET|DELETE /v1.0-alpha1/jobs/<name>`, with Dapr's answers to bad
input and to an existing job without `overwrite`; jobs firing on a plain HTTP app (`POST /job/<name>`, the body as
daprd builds it) and on a `dapr.ext.grpc.App` with `@app.job_event`; failure policies (constant retries, drop);
jobs surviving a restart of `tandem run` (kept in ~/.tandem/jobs.db); and two sidecars of one app sharing that
file firing each trigger once."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import grpc
import pytest
import requests

from conftest import free_port, poll_until, sdk_client, start_app, unique, wait_healthy, Sidecar

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

QUICKSTART_DATA = {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "R2-D2:Oil Change"}


def events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def job_events(path: Path, name: str) -> list[dict]:
    return [e for e in events(path) if e.get("path") == f"/job/{name}" or e.get("name") == name]


@pytest.fixture(scope="module")
def env(sidecars, tmp_path_factory):
    work = tmp_path_factory.mktemp("jobs")
    record = work / "events.jsonl"
    app = start_app("binding_app_http.py", "jobs", work, env={"RECORD": str(record)})
    sc = sidecars.start(unique("jobs"), [], extra_args=["--app-port", str(app.port)])
    yield sc, record
    app.stop()


def url(sc, name: str) -> str:
    return sc.url(f"/v1.0-alpha1/jobs/{name}")


def error(resp: requests.Response) -> tuple[int, str, str]:
    body = resp.json()
    return resp.status_code, body["errorCode"], body["message"]


def gone(sc, name: str) -> bool:
    return requests.get(url(sc, name), timeout=5).status_code == 500


def test_http_schedule_get_delete_as_the_quickstart_sees_it(env):
    sc, _ = env
    r = requests.post(url(sc, "R2-D2"), json={"data": QUICKSTART_DATA, "dueTime": "1h"}, timeout=5)
    assert r.status_code == 204 and r.text == ""
    got = requests.get(url(sc, "R2-D2"), timeout=5)
    assert got.status_code == 200
    assert got.json() == {
        "name": "R2-D2", "dueTime": "1h",
        "data": {"@type": "type.googleapis.com/google.protobuf.Value", "value": QUICKSTART_DATA},
        "failurePolicy": {"constant": {"interval": "1s", "maxRetries": 3}},
    }
    # The stable path is the same API.
    assert requests.get(sc.url("/v1.0/jobs/R2-D2"), timeout=5).json()["name"] == "R2-D2"
    assert requests.delete(url(sc, "R2-D2"), timeout=5).status_code == 204
    status, code, message = error(requests.get(url(sc, "R2-D2"), timeout=5))
    assert (status, code) == (500, "DAPR_SCHEDULER_GET_JOB")
    assert message == "failed to get job due to: rpc error: code = NotFound desc = job not found: R2-D2"
    # Deleting a job that is not there succeeds, as in Dapr.
    assert requests.delete(url(sc, "R2-D2"), timeout=5).status_code == 204


def test_sdk_schedule_get_delete(env):
    from dapr.clients import ConstantFailurePolicy, DropFailurePolicy, Job
    from dapr.clients.exceptions import DaprGrpcError
    from google.protobuf.any_pb2 import Any as GrpcAny

    sc, _ = env
    name = unique("sdk")
    data = GrpcAny(value=json.dumps({"droid": "R2-D2"}).encode())
    with sdk_client(sc) as c:
        c.schedule_job(Job(name=name, schedule="@every 1h", repeats=5, due_time="1h", ttl="3h", data=data,
                           failure_policy=ConstantFailurePolicy(max_retries=7, interval_seconds=2)))
        got = c.get_job(name)
        assert (got.name, got.schedule, got.repeats, got.due_time, got.ttl) == (name, "@every 1h", 5, "1h", "3h")
        assert json.loads(got.data.value) == {"droid": "R2-D2"}
        policy = got.failure_policy
        assert (policy.max_retries, policy.interval_seconds) == (7, 2)
        # The Alpha1 names reach the same jobs.
        c.schedule_job_alpha1(Job(name=name + "-drop", due_time="1h", failure_policy=DropFailurePolicy()))
        assert isinstance(c.get_job_alpha1(name + "-drop").failure_policy, DropFailurePolicy)
        c.delete_job_alpha1(name + "-drop")
        c.delete_job(name)
        with pytest.raises(DaprGrpcError) as e:
            c.get_job(name)
        assert e.value.code() == grpc.StatusCode.INTERNAL
        assert "job not found" in e.value.details()


def test_overwrite_rules(env):
    from dapr.clients import Job
    from dapr.clients.exceptions import DaprGrpcError

    sc, _ = env
    name = unique("over")
    assert requests.post(url(sc, name), json={"schedule": "@daily"}, timeout=5).status_code == 204
    for body in [{"schedule": "@weekly", "repeats": 3}, {"schedule": "@weekly", "overwrite": False}]:
        status, code, message = error(requests.post(url(sc, name), json=body, timeout=5))
        assert (status, code) == (409, "DAPR_SCHEDULER_SCHEDULE_JOB")
        assert "job already exists" in message
    assert requests.get(url(sc, name), timeout=5).json()["schedule"] == "@daily"
    r = requests.post(url(sc, name), json={"schedule": "@weekly", "repeats": 3, "overwrite": True}, timeout=5)
    assert r.status_code == 204
    got = requests.get(url(sc, name), timeout=5).json()
    assert (got["schedule"], got["repeats"]) == ("@weekly", 3)
    with sdk_client(sc) as c:
        with pytest.raises(DaprGrpcError) as e:
            c.schedule_job(Job(name=name, schedule="@hourly"))
        assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
        c.schedule_job(Job(name=name, schedule="@hourly"), overwrite=True)
        assert c.get_job(name).schedule == "@hourly"


@pytest.mark.parametrize("path,body,want", [
    ("test", {}, (400, "DAPR_SCHEDULER_SCHEDULE_EMPTY", "Schedule is empty")),
    ("%20", {"schedule": "@daily"}, (400, "DAPR_SCHEDULER_JOB_NAME_EMPTY", "Name is empty")),
    ("test", {"name": "test1", "schedule": "@daily"}, (400, "DAPR_SCHEDULER_JOB_NAME", "Set the job name in the url only")),
    ("bad%23name", {"schedule": "@daily"}, (400, "DAPR_SCHEDULER_SCHEDULE_JOB", "job name is invalid")),
    ("test", {"schedule": "* * * * *"}, (400, "DAPR_SCHEDULER_SCHEDULE_JOB", "expected exactly 6 fields")),
    ("test", {"dueTime": "soon"}, (400, "DAPR_SCHEDULER_SCHEDULE_JOB", "due time format not recognized")),
    ("test", {"dueTime": "1s", "repeats": 2}, (400, "DAPR_SCHEDULER_SCHEDULE_JOB", "must have a schedule to repeat")),
    ("test", {"schedule": "@daily", "repeats": -1}, (400, "ERR_MALFORMED_REQUEST", "")),
    ("test", {"schedule": "@daily", "failurePolicy": {"constant": {"interval": 5}}}, (400, "ERR_MALFORMED_REQUEST", "")),
])
def test_bad_input_gets_daprs_codes(env, path, body, want):
    sc, _ = env
    r = requests.post(url(sc, path), json=body, timeout=5)
    assert r.headers["content-type"] == "application/json"
    status, code, message = error(r)
    assert (status, code) == want[:2]
    assert want[2] in message
    if code.startswith("DAPR_"):
        details = r.json()["details"]
        assert details[-1]["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
        assert details[-1]["reason"] == code and details[-1]["domain"] == "dapr.io"


def test_bad_input_over_grpc_is_invalid_argument(env):
    from dapr.proto.runtime.v1 import dapr_pb2_grpc
    from dapr.proto.runtime.v1 import jobs_pb2 as dapr_pb2

    sc, _ = env
    with grpc.insecure_channel(sc.grpc_address) as ch:
        stub = dapr_pb2_grpc.DaprStub(ch)
        for req, message in [
            (dapr_pb2.ScheduleJobRequest(), "Job is empty"),
            (dapr_pb2.ScheduleJobRequest(job=dapr_pb2.Job(name="")), "Name is empty"),
            (dapr_pb2.ScheduleJobRequest(job=dapr_pb2.Job(name="x")), "Schedule is empty"),
            (dapr_pb2.ScheduleJobRequest(job=dapr_pb2.Job(name="bad/name", schedule="@daily")), "job name is invalid"),
        ]:
            with pytest.raises(grpc.RpcError) as e:
                stub.ScheduleJob(req)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            stub.GetJobAlpha1(dapr_pb2.GetJobRequest(name=""))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details() == "Name is empty"


def test_list_and_delete_by_prefix_over_grpc(env):
    from dapr.proto.runtime.v1 import dapr_pb2_grpc
    from dapr.proto.runtime.v1 import jobs_pb2 as dapr_pb2

    sc, _ = env
    prefix = unique("pre")
    for n in ("a", "b"):
        assert requests.post(url(sc, f"{prefix}-{n}"), json={"schedule": "@daily"}, timeout=5).status_code == 204
    with grpc.insecure_channel(sc.grpc_address) as ch:
        stub = dapr_pb2_grpc.DaprStub(ch)
        names = {j.name for j in stub.ListJobsAlpha1(dapr_pb2.ListJobsRequestAlpha1()).jobs}
        assert {f"{prefix}-a", f"{prefix}-b"} <= names
        stub.DeleteJobsByPrefixAlpha1(dapr_pb2.DeleteJobsByPrefixRequestAlpha1(name_prefix=prefix))
        names = {j.name for j in stub.ListJobs(dapr_pb2.ListJobsRequest()).jobs}
        assert not any(n.startswith(prefix) for n in names)


def test_jobs_fire_on_an_http_app_with_daprs_body(env):
    from dapr.clients import Job
    from google.protobuf.any_pb2 import Any as GrpcAny

    sc, record = env
    http_job, sdk_job = unique("http"), unique("sdk")
    assert requests.post(url(sc, http_job), json={"data": QUICKSTART_DATA, "dueTime": "1s"}, timeout=5).status_code == 204
    with sdk_client(sc) as c:
        c.schedule_job(Job(name=sdk_job, due_time="1s", data=GrpcAny(value=b' {"droid": "C-3PO"}\n')))
    assert poll_until(lambda: job_events(record, http_job) and job_events(record, sdk_job), 15), events(record)
    http_event = job_events(record, http_job)[0]
    # HTTP data reaches the app as the JSON it was scheduled with (the quickstart reads its `value`).
    assert json.loads(http_event["body"]) == QUICKSTART_DATA
    assert http_event["headers"]["content-type"] == "application/json"
    # SDK data (an Any holding JSON bytes) reaches it as those bytes, trimmed.
    assert job_events(record, sdk_job)[0]["body"] == '{"droid": "C-3PO"}'
    # A one-shot job is gone once it fired.
    assert poll_until(lambda: gone(sc, http_job) and gone(sc, sdk_job), 10)


def test_a_repeating_job_fires_its_repeats(env):
    sc, record = env
    name = unique("rep")
    assert requests.post(url(sc, name), json={"schedule": "@every 1s", "repeats": 3, "data": {"n": 1}},
                         timeout=5).status_code == 204
    assert poll_until(lambda: gone(sc, name), 20)
    fired = job_events(record, name)
    assert len(fired) == 3 and all(json.loads(e["body"]) == {"n": 1} for e in fired)


def test_failure_policies(env):
    sc, record = env
    # binding_app_http answers POST /job/fail with 500: a constant policy retries it maxRetries times.
    body = {"dueTime": "0s", "failurePolicy": {"constant": {"interval": "0.2s", "maxRetries": 2}}}
    assert requests.post(url(sc, "fail"), json=body, timeout=5).status_code == 204
    assert poll_until(lambda: gone(sc, "fail"), 20)
    assert len(job_events(record, "fail")) == 3
    # Drop: one attempt only.
    before = len(job_events(record, "fail"))
    assert requests.post(url(sc, "fail"), json={"dueTime": "0s", "failurePolicy": {"drop": {}}},
                         timeout=5).status_code == 204
    assert poll_until(lambda: gone(sc, "fail"), 20)
    assert len(job_events(record, "fail")) == before + 1


def test_a_grpc_app_takes_jobs_with_the_sdk(fresh_sidecars, tmp_path):
    from dapr.clients import ConstantFailurePolicy, Job
    from google.protobuf.any_pb2 import Any as GrpcAny

    record = tmp_path / "grpc.jsonl"
    app = start_app("grpc_jobs.py", "grpc-jobs", tmp_path, env={"RECORD": str(record)})
    try:
        sc = fresh_sidecars.start(unique("grpc-jobs"), [],
                                  extra_args=["--app-port", str(app.port), "--app-protocol", "grpc"])
        with sdk_client(sc) as c:
            c.schedule_job(Job(name="grpc-job", due_time="0s", data=GrpcAny(value=b'{"droid":"BB-8"}')))
            c.schedule_job(Job(name="grpc-fail", due_time="0s",
                               failure_policy=ConstantFailurePolicy(max_retries=1, interval_seconds=0)))
        assert poll_until(lambda: job_events(record, "grpc-job"), 15), app.log.read_text()
        assert job_events(record, "grpc-job")[0]["data"] == '{"droid":"BB-8"}'
        assert poll_until(lambda: gone(sc, "grpc-fail") and gone(sc, "grpc-job"), 15)
        assert len(job_events(record, "grpc-fail")) == 2
    finally:
        app.stop()


class Run:
    """`tandem run` of one app id (no command: the sidecar alone) with its own HOME."""

    def __init__(self, tandem: str, home: Path, app_id: str, app_port: int):
        self.http, self.grpc = free_port(), free_port()
        workdir = home / f"run-{self.http}"
        workdir.mkdir()
        log = workdir / "stderr.log"
        proc = subprocess.Popen(
            [tandem, "run", "--app-id", app_id, "--app-port", str(app_port), "--dapr-http-port", str(self.http),
             "--dapr-grpc-port", str(self.grpc), "--metrics-port", str(free_port()),
             "--dapr-internal-grpc-port", str(free_port())],
            env={**os.environ, "HOME": str(home)}, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        self.sc = Sidecar(proc, app_id, self.http, self.grpc, None, workdir, None)
        wait_healthy(self.sc)

    def stop(self):
        self.sc.stop()


def test_jobs_survive_a_restart_of_tandem_run(tandem, tmp_path):
    record = tmp_path / "events.jsonl"
    app = start_app("binding_app_http.py", "persist", tmp_path, env={"RECORD": str(record)})
    app_id = unique("persist")
    try:
        first = Run(tandem, tmp_path, app_id, app.port)
        assert requests.post(url(first.sc, "kept"), json={"schedule": "@daily", "data": {"k": 1}}, timeout=5).status_code == 204
        assert requests.post(url(first.sc, "later"), json={"dueTime": "3s", "data": {"late": True}}, timeout=5).status_code == 204
        first.stop()
        assert (tmp_path / ".tandem" / "jobs.db").exists()
        second = Run(tandem, tmp_path, app_id, app.port)
        try:
            assert requests.get(url(second.sc, "kept"), timeout=5).json()["data"]["value"] == {"k": 1}
            assert poll_until(lambda: job_events(record, "later"), 20), events(record)
            assert json.loads(job_events(record, "later")[0]["body"]) == {"late": True}
        finally:
            second.stop()
    finally:
        app.stop()


def test_two_sidecars_of_one_app_fire_each_trigger_once(tandem, tmp_path):
    record = tmp_path / "events.jsonl"
    apps = [start_app("binding_app_http.py", f"twin{i}", tmp_path, env={"RECORD": str(record)}) for i in range(2)]
    app_id = unique("twins")
    runs = []
    try:
        runs = [Run(tandem, tmp_path, app_id, a.port) for a in apps]
        assert requests.post(url(runs[0].sc, "shared"), json={"schedule": "@every 1s", "repeats": 4},
                             timeout=5).status_code == 204
        # Either sidecar sees the job the other scheduled.
        assert requests.get(url(runs[1].sc, "shared"), timeout=5).status_code == 200
        assert poll_until(lambda: gone(runs[1].sc, "shared"), 30)
        assert len(job_events(record, "shared")) == 4
    finally:
        for r in runs:
            r.stop()
        for a in apps:
            a.stop()
