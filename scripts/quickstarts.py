#!/usr/bin/env python3
"""Runs Dapr's own quickstarts (a checkout of github.com/dapr/quickstarts) unchanged against tandem, the way
their READMEs' mechanical-markdown steps run them with the Dapr CLI: `dapr run -f .` becomes `tandem run -f .`,
the step's `sleep` passes, `tandem stop -f .` stops it, and every `expected_stdout_lines` entry of the step must
appear in the output (in order unless the step says `match_order: none`).

Usage: scripts/quickstarts.py QUICKSTARTS_DIR [QUICKSTART ...]
  TANDEM_BIN   the tandem binary (default: $CARGO_TARGET_DIR/release/tandem)
  The apps run with the `python3` first on PATH, which must have each quickstart's requirements installed.

Exit status 0 when every quickstart printed what its README says; each is reported on one line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The Python quickstarts whose building blocks tandem has today. The others (jobs, workflows) need building blocks
# still to come; conversation/python/http talks to an Ollama server.
DEFAULT = [
    "service_invocation/python/http",
    "state_management/python/sdk",
    "state_management/python/http",
    "pub_sub/python/sdk",
    "pub_sub/python/http",
    "bindings/python/sdk",
    "bindings/python/http",
    "conversation/python/sdk",
]

# The bindings quickstart's README first starts PostgreSQL in Docker with bindings/db/orders.sql (database
# `orders`, table `orders`), then checks the rows with psql. Here the PostgreSQL on 127.0.0.1:5432 stands in for
# that container: the same database and table are made (emptied if there), and the rows checked after the run.
PSQL = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-tA"]


def orders_db() -> None:
    has = subprocess.run(PSQL + ["-c", "select 1 from pg_database where datname='orders'"],
                         capture_output=True, text=True, check=True).stdout.strip()
    if not has:
        subprocess.run(PSQL + ["-c", "create database orders"], capture_output=True, check=True)
    subprocess.run(PSQL + ["-d", "orders", "-c", "drop table if exists orders",
                           "-c", "create table orders ( orderid int, customer text, price float )"],
                   capture_output=True, check=True)


def orders_rows() -> str:
    """The README's last step: the rows the app wrote through the output binding."""
    rows = subprocess.run(PSQL + ["-d", "orders", "-c", "select orderid, customer, price from orders order by 1"],
                          capture_output=True, text=True, check=True).stdout
    want = ["1|John Smith|100.32", "2|Jane Bond|15.4", "3|Tony James|35.56"]
    missing = [w for w in want if w not in rows]
    return f"rows missing from table orders: {missing!r}; found:\n{rows}" if missing else ""


PREPARE = {"bindings/python/sdk": orders_db, "bindings/python/http": orders_db}
VERIFY = {"bindings/python/sdk": orders_rows, "bindings/python/http": orders_rows}


def run_file_steps(readme: str) -> list[dict]:
    """The STEPs whose command is `dapr run -f <file>`: each one's run file, expected lines, sleep and match order."""
    steps = []
    for m in re.finditer(r"<!-- STEP(.*?)-->\s*```bash\s*(.*?)```", readme, re.S):
        header, command = m.group(1), m.group(2)
        if "dapr run -f" not in command:
            continue
        lines, in_list = [], False
        sleep, ordered = 15, True
        for raw in header.splitlines():
            if raw.strip().startswith("expected_stdout_lines:"):
                in_list = True
                continue
            if in_list and raw.strip().startswith("- "):
                item = raw.strip()[2:].strip()
                if len(item) >= 2 and item[0] == item[-1] == "'":
                    item = item[1:-1].replace("''", "'")  # YAML's single-quoted scalar
                elif len(item) >= 2 and item[0] == item[-1] == '"':
                    item = item[1:-1].replace('\\"', '"')
                lines.append(item)
                continue
            in_list = False
            if raw.strip().startswith("sleep:"):
                sleep = int(raw.split(":", 1)[1])
            if raw.strip().startswith("match_order:") and "none" in raw:
                ordered = False
        run_file = re.search(r"dapr run -f\s+(\S+)", command).group(1)
        steps.append({"expected": lines, "sleep": sleep, "ordered": ordered, "file": run_file})
    if not steps:
        raise SystemExit("no `dapr run -f` step in the README")
    return steps


def check(output: str, expected: list[str], ordered: bool) -> list[str]:
    missing, at = [], 0
    for line in expected:
        i = output.find(line, at if ordered else 0)
        if i < 0:
            missing.append(line)
        elif ordered:
            at = i + len(line)
    return missing


def run_step(tandem: str, qs: Path, step: dict) -> tuple[str, list[str]]:
    """Runs one `dapr run -f <file>` step as `tandem run -f <file>`: its output and the expected lines missing."""
    home = tempfile.mkdtemp(prefix="tandem-qs-")
    env = {**os.environ, "HOME": home}
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([tandem, "run", "-f", step["file"]], cwd=qs, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        time.sleep(step["sleep"])
        subprocess.run([tandem, "stop", "-f", step["file"]], cwd=qs, env=env, capture_output=True, timeout=60)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        out.seek(0)
        output = out.read().decode(errors="replace")
    return output, check(output, step["expected"], step["ordered"])


def run_one(tandem: str, root: Path, name: str) -> tuple[bool, str]:
    qs = root / name
    steps = run_file_steps((qs / "README.md").read_text())
    if name in PREPARE:
        PREPARE[name]()
    seen = 0
    for step in steps:
        output, missing = run_step(tandem, qs, step)
        if missing:
            return False, f"run -f {step['file']}: missing {missing!r}\n--- output ---\n{output[-4000:]}"
        seen += len(step["expected"])
    problem = VERIFY[name]() if name in VERIFY else ""
    if problem:
        return False, f"{problem}\n--- output ---\n{output[-4000:]}"
    return True, f"{seen} expected lines seen in {len(steps)} run file(s)"


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(sys.argv[1]).resolve()
    names = sys.argv[2:] or DEFAULT
    target = os.environ.get("CARGO_TARGET_DIR") or str(Path(__file__).resolve().parents[1] / "target")
    tandem = os.environ.get("TANDEM_BIN") or str(Path(target) / "release" / "tandem")
    ok = True
    for name in names:
        good, detail = run_one(tandem, root, name)
        ok &= good
        print(f"{'PASS' if good else 'FAIL'} {name}: {detail}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
