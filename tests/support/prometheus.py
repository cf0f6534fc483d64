"""A real Prometheus server for tests and scripts: Debian's ``prometheus`` binary on a free loopback port, with a
configuration and a storage directory of its own, scraping the targets it is given every second.

Why a real server rather than parsing ``/metrics``: the dashboard's PromQL (``rate`` windows, ``histogram_quantile``
over summed buckets, label matchers, recording rules) only means something evaluated by Prometheus itself on
scraped series, including the labels the scrape adds (``job``, ``instance``).

Everything here is bounded: the start waits at most ``ready_timeout`` for ``/-/ready``, every HTTP call has a
timeout, and waiting for scrapes polls the query API until a deadline.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks import terminate
from tests.support.server import STRICT, free_port
from tests.support.wait import poll_until

JOB = "gateway"  # deploy/prometheus/prometheus.yml's job name: the dashboard's $job and the alerts select it
SCRAPE_INTERVAL = 1.0  # seconds: a few seconds of load then make several points of every rate() window


def require_prometheus() -> str:
    """The prometheus binary; skip without it, or fail under GATEWAY_TEST_STRICT=1. The message names the Debian
    package (``prometheus``, which .ci/run installs and whose own service it stops)."""
    path = shutil.which("prometheus")
    if path is None:
        message = "prometheus is not installed (apt-get install prometheus: .ci/run does)"
        if STRICT:
            pytest.fail(message + "; GATEWAY_TEST_STRICT=1 makes this a failure")
        pytest.skip(message)
    return path


class QueryError(RuntimeError):
    """Prometheus answered a query with an error (a PromQL syntax error, an unknown function...)."""


@dataclass
class Prometheus:
    """A running Prometheus; ``base`` is its HTTP API's root."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        answer = httpx.get(self.base + path, params=params, timeout=10)
        body = answer.json()
        if body.get("status") != "success":
            raise QueryError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's result vector (``[{"metric": {...}, "value": [t, "v"]}, ...]``)."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._get("/api/v1/query", params)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
        """A range query's matrix (``[{"metric": {...}, "values": [[t, "v"], ...]}, ...]``)."""
        data = self._get("/api/v1/query_range", {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                                 "step": f"{step:g}"})
        return list(data["result"])

    def value(self, expr: str, at: float | None = None) -> float:
        """The sum of an instant query's values; 0 when it returns nothing (a counter with no series yet)."""
        return sum(float(sample["value"][1]) for sample in self.query(expr, at))

    def last_scrape(self, job: str = JOB) -> float:
        """When the oldest of the job's targets was last scraped (its ``up`` sample's timestamp); 0 before any."""
        found = self.query(f'min(timestamp(up{{job="{job}"}}))')
        return float(found[0]["value"][1]) if found else 0.0

    def wait_scraped_after(self, instant: float, timeout: float = 10.0, job: str = JOB) -> float:
        """Wait until every target of ``job`` has been scraped after ``instant`` (a wall-clock time), so that what
        the targets had counted by then is in Prometheus; the scrape's time. A scrape is a timer, not an event this
        process can await: the query API is polled, boundedly."""
        poll_until(lambda: self.last_scrape(job) > instant, timeout, what=f"a scrape of job {job} after {instant}",
                   interval=0.1)
        return self.last_scrape(job)

    def stop(self, timeout: float = 10.0) -> int:
        return terminate(self.proc, timeout)


def config(targets: list[str], rule_files: list[Path], interval: float = SCRAPE_INTERVAL) -> str:
    """A scrape configuration: job ``gateway`` on ``targets`` every ``interval`` seconds, rules evaluated as often."""
    rules = "".join(f"  - {path}\n" for path in rule_files)
    quoted = ", ".join(f'"{t}"' for t in targets)
    return (f"global:\n  scrape_interval: {interval:g}s\n  scrape_timeout: {interval:g}s\n"
            f"  evaluation_interval: {interval:g}s\n"
            + (f"rule_files:\n{rules}" if rule_files else "")
            + f"scrape_configs:\n  - job_name: {JOB}\n    metrics_path: /metrics\n"
              f"    static_configs:\n      - targets: [{quoted}]\n")


@contextmanager
def running_prometheus(tmp: Path, targets: list[str], *, rule_files: list[Path] | None = None,
                       interval: float = SCRAPE_INTERVAL, ready_timeout: float = 30.0) -> Iterator[Prometheus]:
    """Prometheus scraping ``targets`` (``host:port``) from a fresh storage directory under ``tmp``; stopped (and
    killed if it does not stop) on exit. Its port is free at start, never 9090 (the packaged service's)."""
    binary = require_prometheus()
    directory = tmp / "prometheus"
    (directory / "data").mkdir(parents=True)
    conf = directory / "prometheus.yml"
    conf.write_text(config(targets, rule_files or [], interval))
    port = free_port()
    log = directory / "prometheus.log"
    argv = [binary, f"--config.file={conf}", f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=directory)
    server = Prometheus(proc, port, log)
    try:
        try:
            poll_until(lambda: _ready(server), ready_timeout, what="prometheus /-/ready", interval=0.1)
        except TimeoutError:
            raise RuntimeError(f"prometheus not ready within {ready_timeout} s:\n{server.output()}") from None
        yield server
    finally:
        server.stop()


def _ready(server: Prometheus) -> bool:
    if server.proc.poll() is not None:
        raise RuntimeError(f"prometheus exited with {server.proc.returncode}:\n{server.output()}")
    try:
        return httpx.get(server.base + "/-/ready", timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False


def finite(result: list[dict[str, Any]]) -> int:
    """How many finite values a query's result holds (a range query's matrix or an instant vector): a
    ``histogram_quantile`` over buckets that did not move is NaN, which Grafana draws as nothing."""
    count = 0
    for series in result:
        for _t, v in series.get("values", [series.get("value", [0, "NaN"])]):
            count += math.isfinite(float(v))
    return count


def now() -> float:
    return time.time()
