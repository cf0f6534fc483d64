"""The locustfile still drives a real gateway: streams get events, commands and publishes get 204, nothing fails.

Locust runs as a subprocess, exactly as a user runs it: it monkey-patches the standard library with gevent on
import, which must never happen inside the pytest process. Its final statistics come back through ``--json-file``,
its error messages through ``--csv``. Latencies depend on the machine and its load, so they are reported by
locust, never asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import HUB_TOKEN, ROOT, start_server

pytestmark = pytest.mark.live

LOCUSTFILE = ROOT / "benchmarks" / "locustfile.py"
HUB_STREAM = "/hub/subscribe?topic=locust"
VIEW_STREAM = "/todos/updates"


def _run_locust(host: str, out: Path) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]], str]:
    env = {**os.environ, "GATEWAY_HUB_PUBLISH_TOKEN": HUB_TOKEN}
    for name in list(env):  # a developer's own tuning must not change what this test checks
        if name.startswith("GATEWAY_LOAD_"):
            del env[name]
    proc = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "10", "-r", "10",
         "--run-time", "10s", "--host", host, "--json-file", str(out / "stats"), "--csv", str(out / "locust"),
         "--only-summary"],
        cwd=ROOT, env=env, timeout=60, capture_output=True, text=True, check=False,
    )
    stats_file = out / "stats.json"
    stats: list[dict[str, Any]] = json.loads(stats_file.read_text()) if stats_file.exists() else []
    errors_file = out / "locust_failures.csv"
    errors = errors_file.read_text() if errors_file.exists() else ""
    return proc, stats, errors


def _requests(stats: list[dict[str, Any]], method: str, name: str) -> int:
    return sum(e["num_requests"] for e in stats if e["method"] == method and e["name"] == name)


def test_locust_smoke(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    server = start_server(tmp_path, certs)
    try:
        proc, stats, errors = _run_locust(server.http, tmp_path)
    finally:
        code = server.stop()
    output = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert code == 0, f"gateway exited with {code}:\n{server.output()}"
    assert stats, output
    failures = {(e["method"], e["name"]): e["num_failures"] for e in stats if e["num_failures"]}
    assert not failures, errors
    assert proc.returncode == 0, output
    assert "Traceback" not in proc.stderr, output  # users stop cleanly when the run time is up
    assert _requests(stats, "SSE", HUB_STREAM) > 0, stats
    assert _requests(stats, "SSE", VIEW_STREAM) > 0, stats
    assert _requests(stats, "GET", HUB_STREAM) > 0, stats
    assert _requests(stats, "GET", VIEW_STREAM) > 0, stats
    assert _requests(stats, "POST", "/hub/publish") > 0, stats
    commands = sum(_requests(stats, "POST", path) for path in
                   ("/todos/add", "/todos/toggle", "/todos/delete", "/todos/clear-completed"))
    assert commands > 0, stats
