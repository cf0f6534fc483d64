"""Repeats of a benchmark scenario become one result: medians figure by figure, counts added up, a failed or lossy
repeat never averaged away, every repeat kept for the docs' targets table."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import report
from benchmarks.medians import combine

pytestmark = pytest.mark.unit


def _run(cpu: float, p99: float, *, delivered: int = 100, complete: bool = True, rss: float = 13.0) -> dict[str, Any]:
    return {"server_cpu_us_per_event": cpu, "delivered": delivered, "expected": 100, "out_of_order": 0,
            "complete": complete, "rss_per_idle_stream_kib": rss, "protocol": "h1",
            "latency": {"p50_ms": p99 / 2, "p99_ms": p99, "max_ms": p99 * 2}}


def test_a_single_run_is_returned_as_it_is() -> None:
    run = _run(2.0, 10.0)
    assert combine([run]) is run


def test_each_figure_is_its_own_median_and_counts_add_up() -> None:
    combined = combine([_run(3.0, 5.0, rss=14.0), _run(1.0, 30.0, rss=12.0), _run(2.0, 10.0, rss=13.0)])
    assert combined["server_cpu_us_per_event"] == 2.0
    assert combined["latency"]["p99_ms"] == 10.0  # the median p99, although its run is not the median CPU's
    assert combined["latency"]["max_ms"] == 20.0
    assert combined["rss_per_idle_stream_kib"] == 13.0
    assert (combined["delivered"], combined["expected"], combined["complete"]) == (300, 300, True)
    assert combined["repeats"] == 3
    assert [r["server_cpu_us_per_event"] for r in combined["runs"]] == [3.0, 1.0, 2.0]
    assert [r["p99_ms"] for r in combined["runs"]] == [5.0, 30.0, 10.0]


def test_a_repeat_that_lost_events_or_failed_makes_the_result_incomplete() -> None:
    lossy = combine([_run(2.0, 10.0), _run(2.0, 10.0, delivered=99, complete=False), _run(2.0, 10.0)])
    assert lossy["complete"] is False
    assert lossy["expected"] - lossy["delivered"] == 1
    failed = combine([_run(2.0, 10.0), {"error": "TimeoutError: boom"}, _run(4.0, 20.0)])
    assert failed["complete"] is False
    assert failed["server_cpu_us_per_event"] == 3.0
    assert failed["runs"][1] == {"error": "TimeoutError: boom"}
    all_failed = combine([{"error": "a"}, {"error": "b"}])
    assert all_failed["error"] == "a"
    assert all_failed["repeats"] == 2


def test_no_runs_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one run"):
        combine([])


def test_the_targets_table_shows_every_repeat_beside_the_median() -> None:
    row = combine([_run(3.0, 5.0), _run(1.0, 30.0), _run(2.0, 10.0)])
    assert report._each(row, "server_cpu_us_per_event") == " (median of 3.00 / 1.00 / 2.00)"
    assert report._each(row, "p99_ms") == " (median of 5 / 30 / 10)"
    assert report._each(_run(2.0, 10.0), "p99_ms") == ""
    assert report._each(combine([_run(2.0, 10.0), {"error": "x"}]), "p99_ms") == " (median of 10 / failed)"
