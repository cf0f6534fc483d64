"""The compression benchmark still runs, and the claims the defaults rest on still hold on its numbers.

Run as a subprocess, as a user runs it, in quick mode. Only sizes are asserted: they are deterministic (seeded
workloads, fixed library versions), while timings depend on the machine and its load.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.compression import ROWS
from gateway.core.encoders import ENCODERS

pytestmark = pytest.mark.live

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("compression")
    subprocess.run(
        [sys.executable, "-m", "benchmarks.compression", "--quick", "--out", str(out)],
        cwd=ROOT,
        check=True,
        timeout=120,
        capture_output=True,
    )
    data: dict[str, Any] = json.loads((out / "compression.json").read_text(encoding="utf-8"))
    data["plotted"] = (out / "compression.png").is_file()
    return data


def _rows(result: dict[str, Any], workload: str) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in result["workloads"][workload]["rows"]}


@pytest.mark.parametrize("workload", ["todo", "ticker"])
def test_every_row_for_both_workloads(result: dict[str, Any], workload: str) -> None:
    expected = {row.id for row in ROWS if row.codec is None or row.codec in ENCODERS}
    rows = _rows(result, workload)
    assert set(rows) == expected
    for row in rows.values():
        assert row["events"] == result["workloads"][workload]["events"]
        assert row["first_event_bytes"] > 0
        assert row["median_bytes"] > 0
        assert row["ratio"] > 0
        assert row["cpu_us_median"] >= 0
    assert {"nproc", "cpu", "python", "brotli", "zstandard", "date"} <= result["machine"].keys()


def test_quick_run_plots_beside_its_json(result: dict[str, Any]) -> None:
    """A quick run writes its plot next to its JSON (never over docs/compression.png), when matplotlib is there."""
    assert result["quick"] is True
    assert result["plotted"] == (importlib.util.find_spec("matplotlib") is not None)


def test_default_brotli_sends_a_todo_change_as_its_diff(result: dict[str, Any]) -> None:
    """The point of a connection-long window: a ~15 KB re-render costs tens of bytes, not kilobytes."""
    row = _rows(result, "todo")["br-q4-w16"]
    assert row["median_bytes"] < 120
    assert row["ratio"] > 100


def test_a_window_smaller_than_one_render_loses_the_diff(result: dict[str, Any]) -> None:
    rows = _rows(result, "todo")
    default = rows["br-q4-w16"]["median_bytes"]
    for small in ("br-q4-w10", "br-q4-w12"):
        assert rows[small]["median_bytes"] >= 5 * default, small
