"""Dapr's own Python quickstarts, run unchanged with `tandem run -f .` or, for one-app quickstarts (configuration),
`tandem run <flags> -- <app>` (scripts/quickstarts.py).

Needs a checkout of github.com/dapr/quickstarts in QUICKSTARTS_DIR; the apps run with this interpreter, which
has their requirements (Flask, FastAPI, uvicorn, requests, the Dapr SDK) from tests/python/requirements.txt. CI
machines cannot reach GitHub, so there this test reports itself skipped.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
QUICKSTARTS = os.environ.get("QUICKSTARTS_DIR")


@pytest.mark.skipif(not QUICKSTARTS, reason="QUICKSTARTS_DIR (a checkout of github.com/dapr/quickstarts) is not set")
def test_dapr_python_quickstarts_print_what_their_readmes_say(tandem):
    env = {**os.environ, "TANDEM_BIN": tandem,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "quickstarts.py"), QUICKSTARTS],
                       env=env, capture_output=True, text=True, timeout=900)
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    sys.path.insert(0, str(REPO / "scripts"))
    from quickstarts import DEFAULT
    assert len(DEFAULT) >= 14
    assert r.stdout.count("PASS ") == len(DEFAULT)  # every quickstart of scripts/quickstarts.py DEFAULT
