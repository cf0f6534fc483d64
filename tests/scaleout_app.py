"""An app whose state lives outside the process, as it must when several gateway processes serve it.

Served by ``gateway serve --app tests.scaleout_app:gw`` with a Redis bus. The counter lives in Redis (next to the
bus, under the test's namespace), so whichever process renders the view renders the same state. Every handler run
is recorded in a file per process (``GATEWAY_TEST_RECORDS`` directory): the tests count executions there, and a
record written just before a crash is still on disk.

``GATEWAY_TEST_STALL=1`` makes ``/slow`` hang forever before doing anything: the process accepted the command and
started it, but its handler never finishes (then the test kills it).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from gateway import Gateway

gw = Gateway()
_client: redis.asyncio.Redis | None = None


def _redis() -> redis.asyncio.Redis:
    global _client
    if _client is None:
        # Retried on connection errors: after a Redis restart the pooled connections are stale.
        _client = redis.asyncio.Redis.from_url(
            gw.settings.bus.url.partition("?")[0], socket_timeout=2,
            retry=Retry(ExponentialBackoff(cap=1.0), 5), retry_on_error=[redis.ConnectionError, redis.TimeoutError])
    return _client


def _counter_key() -> str:
    namespace = gw.settings.bus.url.partition("namespace=")[2] or "gateway"
    return "{" + namespace + "}:app:count"


def _record(kind: str, n: int) -> None:
    directory = Path(os.environ["GATEWAY_TEST_RECORDS"])
    with (directory / f"{os.getpid()}.log").open("a") as out:
        out.write(f"{kind} {n}\n")
        out.flush()
        os.fsync(out.fileno())


@gw.command("/count/add")
async def add(n: int, by: int = 1) -> None:
    _record("add", n)
    await _redis().incrby(_counter_key(), by)
    await gw.publish("count")


@gw.command("/slow")
async def slow(n: int) -> None:
    if os.environ.get("GATEWAY_TEST_STALL") == "1":
        await asyncio.Event().wait()
    _record("slow", n)
    await gw.publish("count")


@gw.command("/record")
async def record(n: int) -> None:
    """No state but the record: for counting executions under faults."""
    _record("record", n)


@gw.view("/count/updates", topics=["count"])
async def count() -> str:
    value = await _redis().get(_counter_key())
    return f"count={int(value or 0)}"
