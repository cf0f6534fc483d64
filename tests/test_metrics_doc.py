"""docs/observability.md names every metric family the gateway registers, so the reference cannot fall behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.core.stream import CloseReason
from gateway.metrics import Metrics

pytestmark = pytest.mark.unit

DOC = Path(__file__).resolve().parent.parent / "docs" / "observability.md"


def test_every_metric_family_is_in_the_reference() -> None:
    text = DOC.read_text()
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    try:
        missing = []
        for family in registry.collect():
            name = family.name + ("_total" if family.type == "counter" else "")
            if f"| `{name}` |" not in text:
                missing.append(name)
        assert not missing, f"docs/observability.md's metric table lacks {missing}"
    finally:
        metrics.process.close()


def test_every_close_reason_is_in_the_reference() -> None:
    """The ``reason`` label of gateway_streams_closed_total (and of the streams' access lines) takes every
    ``CloseReason``; the reference lists them all."""
    rows = [line for line in DOC.read_text().splitlines()
            if line.startswith(("| `gateway_streams_closed_total` |", "| `gateway.streams` |"))]
    assert len(rows) == 2
    for row in rows:
        missing = [r.value for r in CloseReason if f"`{r.value}`" not in row]
        assert not missing, f"docs/observability.md's row {row[:40]}... lacks the reasons {missing}"
