"""Tests for ``gateway.core.encoder_memory``: the memory model the global compression budget accounts with.

The budget is only as safe as the model is conservative, and its downgrade path (smaller window, then lower
quality) only saves memory if the model is monotonic; both are checked here, the first against the committed
measurement (``benchmarks/results/encoder_memory.json``), so re-running the benchmark on a new library version
shows at once whether the model still holds.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.core.encoder_memory import HEADROOM, WINDOW_PARAM, estimate_bytes, window_bytes
from gateway.core.encoders import ENCODERS, CodecSettings

pytestmark = pytest.mark.unit

MEASURED = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "encoder_memory.json"

# every value CodecSettings accepts: (codec, quality field, quality range, window field, window range)
RANGES = [
    ("br", "brotli_quality", range(0, 12), "brotli_lgwin", range(10, 25)),
    ("zstd", "zstd_level", range(1, 23), "zstd_window_log", range(10, 28)),
    ("gzip", "gzip_level", range(1, 10), "gzip_wbits", range(9, 16)),
]


def _measured() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(MEASURED.read_text(encoding="utf-8"))
    return data


def _settings(**values: int) -> CodecSettings:
    return CodecSettings(**values)


@pytest.mark.parametrize(("codec", "qfield", "qrange", "wfield", "wrange"), RANGES)
def test_monotonic_in_window_and_quality(
    codec: str, qfield: str, qrange: range, wfield: str, wrange: range
) -> None:
    """A smaller window or a lower quality never costs more: the budget's downgrade path depends on it."""
    table = {(q, w): estimate_bytes(codec, _settings(**{qfield: q, wfield: w})) for q in qrange for w in wrange}
    for (q, w), est in table.items():
        assert est > 0
        if w + 1 in wrange:
            assert table[q, w + 1] >= est, (codec, q, w)
        if q + 1 in qrange:
            assert table[q + 1, w] >= est, (codec, q, w)


def test_only_the_codecs_own_fields_count() -> None:
    base = CodecSettings()
    assert estimate_bytes("br", base) == estimate_bytes("br", dataclasses.replace(base, zstd_level=19, gzip_wbits=9))
    assert estimate_bytes("gzip", base) == estimate_bytes("gzip", dataclasses.replace(base, brotli_quality=11))


@pytest.mark.parametrize("settings", [CodecSettings(), CodecSettings(brotli_quality=11, brotli_lgwin=24)])
def test_identity_costs_nothing(settings: CodecSettings) -> None:
    assert estimate_bytes("identity", settings) == 0
    assert window_bytes("identity", settings) == 0


def test_unknown_codec_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown encoding"):
        estimate_bytes("deflate", CodecSettings())
    with pytest.raises(ValueError, match="unknown encoding"):
        window_bytes("deflate", CodecSettings())


def _rows(kind: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = _measured()[kind]
    return [r for r in rows if r["codec"] in ENCODERS]


def test_measurement_is_committed() -> None:
    data = _measured()
    assert {"machine", "rows", "large_renders", "allocation_only"} <= data.keys()
    assert {r["codec"] for r in data["rows"]} >= {"identity", "br", "gzip"}
    assert all(r["rss_bytes"] is not None for r in data["rows"])


@pytest.mark.parametrize("kind", ["rows", "allocation_only", "large_renders"])
def test_estimate_covers_every_measurement(kind: str) -> None:
    """Conservative against what was resident and, on the demo's stream, against what the library allocated.

    With renders as large as the window (``large_renders``) only RSS counts: the per-event buffers are allocated
    for the largest event's worst case but written only as far as the commands and output go.
    """
    short = []
    for row in _rows(kind):
        if row["codec"] == "identity":
            continue
        allocated = 0 if kind == "large_renders" else row["allocated_bytes"] or 0
        measured = max(row.get("rss_bytes") or 0, allocated)
        estimate = estimate_bytes(row["codec"], CodecSettings(**row["settings"]))
        if estimate < measured:
            short.append((row["codec"], row["settings"], estimate, measured))
    assert not short, f"the model is below the measurement for: {short}"


def test_identity_measures_as_nothing() -> None:
    """Identity's 0 is right: what it holds is a Python object, not a buffer (well under a KiB)."""
    (row,) = [r for r in _rows("rows") if r["codec"] == "identity"]
    assert row["rss_bytes"] < 1024


@pytest.mark.parametrize("codec", ["br", "zstd", "gzip"])
def test_default_settings_are_not_wildly_pessimistic(codec: str) -> None:
    """A model that overcharges the defaults would downgrade connections the machine could well afford."""
    if codec not in ENCODERS:
        pytest.skip(f"{codec} is not installed")
    defaults = CodecSettings()
    fields = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(CodecSettings)}
    (row,) = [
        r
        for r in _rows("rows")
        if r["codec"] == codec and all(fields[k] == v for k, v in r["settings"].items())
    ]
    measured = max(row["rss_bytes"], row["allocated_bytes"] or 0)
    assert estimate_bytes(codec, defaults) <= measured * (HEADROOM + 0.25)


@pytest.mark.parametrize(
    ("codec", "value", "expected"),
    [
        ("br", 10, 1008),
        ("br", 16, 65_520),
        ("br", 22, 4_194_288),
        ("br", 24, 16_777_200),
        ("zstd", 10, 1024),
        ("zstd", 17, 131_072),
        ("zstd", 27, 134_217_728),
        ("gzip", 9, 512),
        ("gzip", 15, 32_768),
    ],
)
def test_window_bytes(codec: str, value: int, expected: int) -> None:
    settings = dataclasses.replace(CodecSettings(), **{WINDOW_PARAM[codec]: value})
    assert window_bytes(codec, settings) == expected


def test_window_param_names_the_settings_fields() -> None:
    fields = {f.name for f in dataclasses.fields(CodecSettings)}
    assert set(WINDOW_PARAM) == {"br", "zstd", "gzip"}
    assert set(WINDOW_PARAM.values()) <= fields
