"""A gateway's Prometheus metrics, read over HTTP as a scraper reads them."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.wait import wait_until


async def metric(base: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` on ``base``/metrics whose labels include ``labels``."""
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(base + "/metrics")).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def wait_metric(base: str, name: str, expected: float, timeout: float = 5.0, **labels: str) -> None:
    """Another process's state can only be observed by asking; each attempt is bounded and so is the whole."""

    async def reached() -> bool:
        return await metric(base, name, **labels) == expected

    await wait_until(reached, timeout, what=f"{name}{labels or ''} == {expected}", interval=0.05)
