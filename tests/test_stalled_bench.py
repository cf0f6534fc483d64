"""The stalled-subscriber benchmark still runs, and what it exists to show still holds on its numbers.

Run as a subprocess, as a user runs it, in quick mode (200 subscribers, three fresh servers). Only correctness and
memory are asserted: every healthy subscriber gets every event in order whatever the others do, stalled
subscribers are cut off, and the server's memory stays bounded. Latencies depend on the machine and its load, so
they are reported by the benchmark, never asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.live

ROOT = Path(__file__).resolve().parent.parent
CUT_OFF_REASONS = {"slow_consumer", "write_timeout"}  # the gateway's two policies for a client that stops reading


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("stalled")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.stalled", "--quick", "--out", str(out)],
        cwd=ROOT,
        timeout=120,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, f"benchmark failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    data: dict[str, Any] = json.loads((out / "stalled.json").read_text(encoding="utf-8"))
    return data


def _scenario(result: dict[str, Any], fraction: float) -> dict[str, Any]:
    return next(s for s in result["scenarios"] if s["stalled_fraction"] == fraction)


def test_three_scenarios_on_a_recorded_machine(result: dict[str, Any]) -> None:
    assert result["quick"] is True
    subscribers = result["plan"]["subscribers"]
    assert [s["stalled"] for s in result["scenarios"]] == [0, round(subscribers * 0.01), round(subscribers * 0.1)]
    assert {"nproc", "cpu", "python", "date"} <= result["machine"].keys()
    assert result["gateway_settings"]["hub"]["max_buffered_events"] == result["plan"]["max_buffered_events"]
    for s in result["scenarios"]:
        assert s["server"]["exit_code"] == 0, s["name"]


def test_every_healthy_subscriber_gets_every_event_in_order(result: dict[str, Any]) -> None:
    events = result["plan"]["events"]
    for s in result["scenarios"]:
        name = s["name"]
        assert s["healthy"] == s["subscribers"] - s["stalled"], name
        assert s["publisher"]["published"] == events, name
        assert s["publisher"]["statuses"] == {"204": events}, name
        assert s["healthy_expected"] == s["healthy"] * events, name
        assert s["healthy_delivered"] == s["healthy_expected"], name
        assert s["healthy_lost"] == 0, name
        assert s["healthy_out_of_order"] == 0, name
        assert s["healthy_errors"] == [], name
        assert s["healthy_complete_in_order"] == s["healthy"], name
        assert s["all_healthy_in_order"] is True, name
        assert s["latency_ms"]["samples"] == s["healthy_expected"], name


def test_stalled_subscribers_are_cut_off_at_10_percent(result: dict[str, Any]) -> None:
    s = _scenario(result, 0.10)
    assert s["stalled"] > 0
    assert s["stalled_cut_off"] == s["stalled"]
    assert set(s["hub_streams_closed"]) <= CUT_OFF_REASONS, s["hub_streams_closed"]
    assert s["cut_off_s_after_first_publish"]["last"] is not None


def test_no_stream_is_closed_without_stalled_subscribers(result: dict[str, Any]) -> None:
    s = _scenario(result, 0.0)
    assert s["stalled_cut_off"] == 0
    assert s["hub_streams_closed"] == {}


def test_server_memory_stays_bounded(result: dict[str, Any]) -> None:
    for s in result["scenarios"]:
        server = s["server"]
        assert server["rss_after_mib"] - server["rss_before_mib"] < 64, s["name"]
        assert server["rss_peak_mib"] - server["rss_before_mib"] < 64, s["name"]
