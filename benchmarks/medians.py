"""One result from several repeats of a scenario: the median of each figure, every repeat kept beside it.

A burst to 100 streams measures about a quarter of a second of server CPU, and a broadcast's p99 is one sample of
a tail that moves with whatever else the machine does; on a small VM one run of either can land on the other side
of a target's line from the next. The median of three repeats, taken figure by figure, is what the tables show;
``runs`` keeps each repeat's CPU, p50 and p99 so the spread is in the results too.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

__all__ = ["combine"]

# Figures that are a median over the repeats; anything else comes from the repeat whose CPU per event is the median.
_MEDIAN = ("server_cpu_us_per_event", "server_cpu_s", "delivered_per_s", "seconds", "publish_seconds",
           "generator_cpu_share", "wire_bytes_per_event", "open_seconds", "rss_before_mib", "rss_idle_mib",
           "rss_per_idle_stream_kib")
# Counts that add up over the repeats: "delivered 300,000/300,000" says that none of the three lost an event.
_SUM = ("delivered", "expected", "out_of_order", "late_publishes")


def _median(values: Sequence[float]) -> float:
    return round(float(statistics.median(values)), 2)


def _brief(run: dict[str, Any]) -> dict[str, Any]:
    if "error" in run:
        return {"error": run["error"]}
    latency = run.get("latency", {})
    return {"server_cpu_us_per_event": run.get("server_cpu_us_per_event"), "p50_ms": latency.get("p50_ms"),
            "p99_ms": latency.get("p99_ms"), "complete": run.get("complete")}


def combine(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The repeats of one scenario as one result (a single run is returned as it is).

    A repeat that failed leaves the others' medians standing but makes the result incomplete, as a lost event
    does: a failure is never averaged away.
    """
    if not runs:
        raise ValueError("combine() needs at least one run")
    if len(runs) == 1:
        return runs[0]
    ok = [run for run in runs if "error" not in run]
    if not ok:
        return {**runs[0], "repeats": len(runs), "runs": [_brief(run) for run in runs]}
    ok_sorted = sorted(ok, key=lambda run: float(run.get("server_cpu_us_per_event", 0.0)))
    result = dict(ok_sorted[(len(ok_sorted) - 1) // 2])
    for name in _MEDIAN:
        values = [run[name] for run in ok if isinstance(run.get(name), (int, float))]
        if len(values) == len(ok):
            result[name] = _median(values)
    latencies = [run["latency"] for run in ok if isinstance(run.get("latency"), dict)]
    if len(latencies) == len(ok):
        result["latency"] = {
            key: _median([lat[key] for lat in latencies]) if all(
                isinstance(lat.get(key), (int, float)) for lat in latencies) else value
            for key, value in latencies[0].items()
        }
    for name in _SUM:
        if all(isinstance(run.get(name), int) for run in ok):
            result[name] = sum(run[name] for run in ok)
    result["complete"] = len(ok) == len(runs) and all(run.get("complete", True) for run in ok)
    result["repeats"] = len(runs)
    result["runs"] = [_brief(run) for run in runs]
    return result
