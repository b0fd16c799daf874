#!/usr/bin/env python3
"""Runs Dapr's own quickstarts (a checkout of github.com/dapr/quickstarts) unchanged against tandem, the way
their READMEs' mechanical-markdown steps run them with the Dapr CLI: `dapr run -f .` becomes `tandem run -f .`
(a quickstart of one app: its `cd <dir>` and `dapr run <flags> -- <app>` become `tandem run <flags> -- <app>` in
that directory), the step's `sleep` passes, `tandem stop` stops it, and every `expected_stdout_lines` entry of the step must
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

# The Python quickstarts whose building blocks tandem has today. conversation/python/http talks to an Ollama
# server; configuration/python/http's app needs Python 3.12 or later (it nests quotes inside an f-string).
# workflows/python/sdk needs the Redis on 127.0.0.1:6379 (its components folder's actor state store).
DEFAULT = [
    "service_invocation/python/http",
    "state_management/python/sdk",
    "state_management/python/http",
    "pub_sub/python/sdk",
    "pub_sub/python/http",
    "bindings/python/sdk",
    "bindings/python/http",
    "configuration/python/sdk",
    "conversation/python/sdk",
    "secrets_management/python/sdk",
    "secrets_management/python/http",
    "jobs/python/http",
    "jobs/python/sdk",
    "workflows/python/sdk",
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


def config_items() -> None:
    """The configuration quickstart's first step (`redis-cli MSET orderId1 "101" orderId2 "102"` in Dapr's Redis
    container), against the Redis on 127.0.0.1:6379."""
    import socket

    args = [b"MSET", b"orderId1", b"101", b"orderId2", b"102"]
    cmd = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
    with socket.create_connection(("127.0.0.1", 6379), timeout=5) as s:
        s.sendall(cmd)
        if not s.recv(64).startswith(b"+OK"):
            raise SystemExit("Redis refused MSET")


PREPARE = {"bindings/python/sdk": orders_db, "bindings/python/http": orders_db,
           "configuration/python/sdk": config_items}
VERIFY = {"bindings/python/sdk": orders_rows, "bindings/python/http": orders_rows}


def run_steps(readme: str) -> list[dict]:
    """The STEPs whose command is `dapr run -f <file>` (else the first `dapr run`, a one-app quickstart): each one's
    command, expected lines, sleep and match order."""
    steps = []
    found = list(re.finditer(r"<!-- STEP(.*?)-->\s*```(?:bash|sh)\s*(.*?)```", readme, re.S))
    wanted = "dapr run -f" if any("dapr run -f" in m.group(2) for m in found) else "dapr run "
    for m in found:
        header, command = m.group(1), m.group(2)
        if wanted not in command:
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
        steps.append({"expected": lines, "sleep": sleep, "ordered": ordered, "command": command.strip()})
        if wanted == "dapr run ":
            break
    if not steps:
        raise SystemExit("no `dapr run` step in the README")
    return steps


def single_app(qs: Path, command: str, tandem: str) -> tuple[Path, list[str], list[str]]:
    """A one-app step (`cd <dir>` then `dapr run <flags> -- <app>`): where to run, the tandem command, and how to
    stop it."""
    import shlex

    cwd, argv = qs, []
    for line in command.splitlines():
        words = shlex.split(line)
        if words[:1] == ["cd"] and len(words) == 2:
            cwd = (cwd / words[1]).resolve()
        elif words[:2] == ["dapr", "run"]:
            argv = [tandem, "run"] + words[2:]
    app_id = argv[argv.index("--app-id") + 1] if "--app-id" in argv else ""
    return cwd, argv, [tandem, "stop", "--app-id", app_id]


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
    """Runs one step (`dapr run -f <file>` as `tandem run -f <file>`, or a one-app `dapr run`): its output and the
    expected lines missing."""
    home = tempfile.mkdtemp(prefix="tandem-qs-")
    env = {**os.environ, "HOME": home}
    run_file = re.search(r"dapr run -f\s+(\S+)", step["command"])
    if run_file:
        cwd, argv = qs, [tandem, "run", "-f", run_file.group(1)]
        stop = [tandem, "stop", "-f", run_file.group(1)]
    else:
        cwd, argv, stop = single_app(qs, step["command"], tandem)
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        time.sleep(step["sleep"])
        subprocess.run(stop, cwd=cwd, env=env, capture_output=True, timeout=60)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        out.seek(0)
        output = out.read().decode(errors="replace")
    return output, check(output, step["expected"], step["ordered"])


def run_one(tandem: str, root: Path, name: str) -> tuple[bool, str]:
    qs = root / name
    steps = run_steps((qs / "README.md").read_text())
    if name in PREPARE:
        PREPARE[name]()
    seen = 0
    for step in steps:
        output, missing = run_step(tandem, qs, step)
        if missing:
            return False, f"{step['command']}: missing {missing!r}\n--- output ---\n{output[-4000:]}"
        seen += len(step["expected"])
    problem = VERIFY[name]() if name in VERIFY else ""
    if problem:
        return False, f"{problem}\n--- output ---\n{output[-4000:]}"
    return True, f"{seen} expected lines seen in {len(steps)} step(s)"


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
