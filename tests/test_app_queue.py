"""What an idle stream no longer holds: the request queue of the ``app_queue`` correction (the semantics of the
``asyncio.Queue`` it replaces, its listener, and a live gateway whose idle streams hear their disconnect without a
task waiting on ``receive()``), and the HTTP/1.1 ``can_read`` event of ``h11_can_read``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.web.hypercorn.app_queue import AppQueue, listen
from gateway.web.hypercorn.h11_can_read import LightEvent
from tests.support.metrics import metric
from tests.support.raw_stream import RawStream
from tests.support.server import ROOT, start_server
from tests.support.wait import wait_until

STEP = 5.0  # seconds any single wait below may take


def _message(n: int) -> dict[str, Any]:
    return {"type": "http.request", "n": n}


@pytest.mark.unit
@pytest.mark.asyncio
async def test_messages_come_out_in_order_and_a_get_waits_for_one() -> None:
    queue = AppQueue(10)
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)  # the getter is parked
    assert not getter.done()
    await queue.put(_message(1))
    await queue.put(_message(2))
    assert (await asyncio.wait_for(getter, STEP))["n"] == 1
    assert (await queue.get())["n"] == 2


@pytest.mark.unit
@pytest.mark.asyncio
async def test_a_full_queue_holds_the_putter_until_a_get() -> None:
    queue = AppQueue(2)
    await queue.put(_message(1))
    await queue.put(_message(2))
    putter = asyncio.create_task(queue.put(_message(3)))
    await asyncio.sleep(0)
    assert not putter.done()
    assert (await queue.get())["n"] == 1
    await asyncio.wait_for(putter, STEP)
    assert [(await queue.get())["n"] for _ in range(2)] == [2, 3]


@pytest.mark.unit
@pytest.mark.asyncio
async def test_a_getter_cancelled_after_its_wake_up_passes_it_on() -> None:
    queue = AppQueue(10)
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    await queue.put(_message(1))  # wakes ``first`` ...
    first.cancel()  # ... which is cancelled before it runs: the message must reach ``second``
    assert (await asyncio.wait_for(second, STEP))["n"] == 1
    with pytest.raises(asyncio.CancelledError):
        await first


@pytest.mark.unit
@pytest.mark.asyncio
async def test_a_listener_gets_the_waiting_messages_then_every_put() -> None:
    queue = AppQueue(10)
    await queue.put(_message(1))
    heard: list[int] = []

    assert listen(queue.get, lambda m: heard.append(m["n"]))
    await queue.put(_message(2))
    assert heard == [1, 2]


@pytest.mark.unit
@pytest.mark.asyncio
async def test_a_full_queue_releases_its_putter_to_a_listener() -> None:
    queue = AppQueue(1)
    await queue.put(_message(1))
    putter = asyncio.create_task(queue.put(_message(2)))
    await asyncio.sleep(0)
    heard: list[int] = []
    listen(queue.get, lambda m: heard.append(m["n"]))
    await asyncio.wait_for(putter, STEP)
    assert heard == [1, 2]


@pytest.mark.unit
@pytest.mark.asyncio
async def test_listen_refuses_another_receive() -> None:
    other: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    assert not listen(other.get, lambda m: None)


@pytest.mark.live
@pytest.mark.asyncio
async def test_an_idle_stream_listens_without_a_task(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    """Idle streams wait on no ``receive()`` task, and each still hears its client leave: the stream closes
    (``gateway_streams_active`` drops) as soon as its connection does."""
    srv = start_server(tmp_path, certs, args=["--app", "tests.support.watchers_app:gw"])
    streams: list[RawStream] = []
    try:
        async with httpx.AsyncClient(base_url=srv.http, timeout=STEP) as client:
            before = (await client.get("/tasks")).json()["tasks"]
            streams = [await RawStream.open(srv.http_port, "/hub/subscribe?topic=idle") for _ in range(5)]
            await wait_until(lambda: _active(srv.http, 5), STEP, what="5 streams active")
            report = (await client.get("/tasks")).json()
            assert report["watchers"] == 0
            # A connection task and a request task each, nothing more (+2: fan-out resubscribes for the new topic).
            assert report["tasks"] - before <= 2 * 5 + 2
            streams.pop().close()
            await wait_until(lambda: _active(srv.http, 4), STEP, what="a closed client's stream closed")
    finally:
        for stream in streams:
            stream.close()
        srv.stop()


async def _active(base: str, count: int) -> bool:
    return bool(await metric(base, "gateway_streams_active", kind="hub") == count)


@pytest.mark.unit
@pytest.mark.asyncio
async def test_a_light_event_wakes_its_waiters_as_asyncio_event_does() -> None:
    event = LightEvent()
    waiters = [asyncio.create_task(event.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not event.is_set()
    assert not any(w.done() for w in waiters)
    await event.set()
    await event.clear()  # a waiter woken before the clear still returns
    await asyncio.wait_for(asyncio.gather(*waiters), STEP)
    assert event._waiters is None  # nothing held once nobody waits
    await event.set()
    await asyncio.wait_for(event.wait(), STEP)  # set: returns at once


@pytest.mark.live  # in a process of its own: the corrections patch Hypercorn's classes for the whole process
def test_an_http1_connection_holds_a_light_can_read() -> None:
    result = subprocess.run([sys.executable, "-c", CAN_READ], capture_output=True, text=True, timeout=60,
                            cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["EventWrapper", "LightEvent"]


CAN_READ = """
import asyncio
from hypercorn.config import Config
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.protocol.h11 import H11Protocol
from gateway.web import hypercorn as corrections

def can_read():
    return type(H11Protocol(None, Config(), WorkerContext(None), None, None, False, None, None, None).can_read)

print(can_read().__name__)
corrections.install(accept_unverified=False)
print(can_read().__name__)
"""
