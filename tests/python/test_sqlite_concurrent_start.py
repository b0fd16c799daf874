"""Sidecars started at the same moment share new SQLite files: the name-resolution database and a state.sqlite
store, as `tandem run` apps do with .tandem/. When two connections switch a new file to WAL, SQLite can answer
SQLITE_BUSY ("database is locked") at once instead of waiting out the busy timeout. tandem retries that, so every
sidecar starts. Before the fix, about one sidecar in a hundred exited at start-up. This is a race, so the test
is a probe rather than proof: without the retry, one run of these rounds failed about one time in five."""

from __future__ import annotations

import time

import pytest
import requests

from conftest import component, poll_until

ROUNDS = 10
SIDECARS = 8


def config(db: str) -> dict:
    return {
        "apiVersion": "dapr.io/v1alpha1", "kind": "Configuration", "metadata": {"name": "c"},
        "spec": {"nameResolution": {"component": "sqlite", "version": "v1",
                                    "configuration": {"connectionString": db}}},
    }


def healthy(sc) -> bool:
    try:
        return requests.get(sc.url("/v1.0/healthz"), timeout=1).status_code == 204
    except requests.RequestException:
        return False


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_sidecars_creating_the_same_sqlite_files_at_once_all_start(fresh_sidecars, tmp_path, round_):
    shared = tmp_path / "shared"
    store = component("statestore", "state.sqlite", {"connectionString": str(shared / "state.db")})
    started = [fresh_sidecars.spawn(f"app{i}", [store], config=config(str(shared / "nr.db")))
               for i in range(SIDECARS)]
    deadline = time.monotonic() + 20
    running = []
    for sc in started:
        poll_until(lambda: healthy(sc) or sc.proc.poll() is not None, timeout=max(0.1, deadline - time.monotonic()))
        if sc.proc.poll() is not None and "Address already in use" in sc.stderr():
            continue  # another process took a port picked for it: says nothing about SQLite
        assert sc.proc.poll() is None and healthy(sc), f"{sc.app_id} did not start:\n{sc.stderr()[-3000:]}"
        running.append(sc)
    assert len(running) >= SIDECARS // 2, "too many port clashes to tell"
    for sc in running:
        key = f"{sc.app_id}-{round_}"
        r = requests.post(sc.url("/v1.0/state/statestore"), json=[{"key": key, "value": round_}], timeout=5)
        assert r.status_code == 204, r.text
        assert requests.get(sc.url(f"/v1.0/state/statestore/{key}"), timeout=5).json() == round_
