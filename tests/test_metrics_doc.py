"""docs/observability.md names every metric family the gateway registers, so the reference cannot fall behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

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
