"""Against a live gateway: a hub client naming a view's topic changes nothing for the view.

View changes and hub events live in separate bus namespaces. Before they did, an anonymous
``GET /hub/subscribe?topic=todos`` on the demo made fan-out fail on every ``gw.publish("todos")`` (it decoded the
view's empty payload as a hub event), log a traceback, resubscribe and sleep: every view was then 500 ms late.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from tests.support.server import HUB_TOKEN, Server
from tests.support.sse_client import SSEReader

pytestmark = [pytest.mark.live, pytest.mark.asyncio]

ROUNDS = 8


@asynccontextmanager
async def stream(client: httpx.AsyncClient, url: str) -> AsyncIterator[SSEReader]:
    async with client.stream("GET", url, headers={"Accept-Encoding": "identity"}) as response:
        assert response.status_code == 200
        yield SSEReader(response.aiter_raw(), response.headers.get("content-encoding"))


async def _latencies(client: httpx.AsyncClient, server: Server, view: SSEReader) -> list[float]:
    """Command POSTed -> the view's next render read, ``ROUNDS`` times (seconds)."""
    found = []
    for _ in range(ROUNDS):
        text = f"namespaces {uuid.uuid4().hex}"
        started = time.perf_counter()
        response = await client.post(server.http + "/todos/add", json={"text": text})
        assert response.status_code == 204, response.text
        await view.until(lambda e, text=text: text in e.data, timeout=5)
        found.append(time.perf_counter() - started)
    return found


async def test_a_hub_subscriber_on_a_view_topic_changes_nothing_for_the_view(server: Server) -> None:
    async with httpx.AsyncClient(timeout=10) as client, stream(client, server.http + "/todos/updates") as view:
        await view.next_event()  # the current state
        before = await _latencies(client, server, view)
        async with stream(client, server.http + "/hub/subscribe?topic=todos") as intruder:
            await intruder.more()  # its response started: it is attached to fan-out
            during = await _latencies(client, server, view)
            # The first event the hub client gets is the hub event published now, not one of the view changes.
            response = await client.post(server.http + "/hub/publish", json={"topic": "todos", "data": "hub"},
                                         headers={"authorization": f"Bearer {HUB_TOKEN}"})
            assert response.status_code == 204, response.text
            event = await intruder.next_event(timeout=5)
            assert (event.data, event.id) == ("hub", response.headers["event-id"])
    log = server.output()
    assert "Traceback" not in log, log[-3000:]
    assert "skipped" not in log
    # The defect made every change wait out a 500 ms resubscription; without it both medians are a few ms.
    assert statistics.median(during) < max(0.25, 3 * statistics.median(before)), (before, during)
