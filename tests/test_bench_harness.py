"""``make bench`` must not rot: a quick comparison of the gateway and nchan, end to end, JSON and page included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.server import ROOT, require_binary

pytestmark = pytest.mark.live


def test_quick_comparison_runs_and_writes_the_page(tmp_path: Path) -> None:
    require_binary("nginx")
    out, docs = tmp_path / "comparison.json", tmp_path / "docs"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "comparison", "--quick", "--peers", "gateway,nchan",
         "--scenarios", "burst,ticker,bytes", "--repeats", "2", "--out", str(out), "--docs", str(docs)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results["peers"]) == {"gateway", "gateway-uvloop", "nchan"}, results.get("skipped")
    for name, entry in results["peers"].items():
        for key, row in entry["burst"].items():
            assert "error" not in row, f"{name} {key}: {row}"
            assert row["complete"], f"{name} {key}: {row['delivered']} of {row['expected']} delivered"
            assert row["out_of_order"] == 0
            assert row["server_cpu_us_per_event"] > 0
            assert len(row["runs"]) == row["repeats"] == 2  # the figures are medians of two repeats
    assert results["peers"]["gateway"]["burst"]["br-300"]["content_encoding"] == "br"
    # the small burst of the gateway and nchan: both servers up, in turns (benchmarks.__main__._side_by_side)
    assert results["side_by_side"] == {"burst": ["identity-100", ["gateway", "nchan"]]}
    for name in ("gateway", "nchan"):
        assert results["peers"][name]["burst"]["identity-100"]["subscribers"] == 100
    ticker = results["peers"]["gateway"]["ticker"]
    assert set(ticker) == {"identity", "br", "zstd"}
    for encoding, row in ticker.items():  # the same steady pace for each encoding, every event delivered
        assert row["complete"], f"ticker {encoding}: {row}"
        assert row["content_encoding"] == encoding
        assert row["rate_per_s"] == results["plan"]["ticker_rate"]
        assert len(row["runs"]) == 2
    encodings = results["peers"]["gateway"]["bytes"]["encodings"]
    assert encodings["br"]["wire_bytes_per_event"] < encodings["identity"]["wire_bytes_per_event"]
    page = (docs / "benchmarks.md").read_text()
    assert "| nchan | identity | 300 |" in page
    assert "## Ticker:" in page
    assert "(ticker: 100 streams, 50 events/s)" in page  # the Brotli target is read on the ticker
    assert "ran side by side" in page
    assert (docs / "benchmarks.png").stat().st_size > 10_000


def test_quick_scaleout_runs_every_setup_and_writes_the_page(tmp_path: Path) -> None:
    """The scale-out scenario: one process, one on Redis, two workers on Redis; nothing lost, nothing reordered."""
    require_binary("redis-server")
    out, docs = tmp_path / "scaleout.json", tmp_path
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "scaleout", "--quick", "--out", str(out), "--docs", str(docs)],
        cwd=ROOT, capture_output=True, text=True, timeout=400, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results["setups"]) == {"memory-1", "redis-1", "redis-2"}
    for name, entry in results["setups"].items():
        assert entry["median"]["all_complete_in_order"], name
        for scenario in ("burst", "broadcast"):
            row = entry["runs"][0][scenario]
            assert row["complete"], f"{name} {scenario}: {row['delivered']} of {row['expected']} delivered"
            assert row["out_of_order"] == 0, f"{name} {scenario}"
    page = (docs / "scaleout.md").read_text()
    assert "| redis-2 (--workers 2 on the Redis bus) |" in page
