"""An app whose handler records the context it ran with, one JSON line per run, in ``GATEWAY_TEST_RECORDS``.

Served by ``gateway serve --app tests.support.context_app:gw``. ``GATEWAY_TEST_STALL=1`` makes the handler hang
after recording (it started, it never finishes: the test then kills the process, and another runs it again).

Its life cycle is recorded too: an ``on_startup`` hook opens the app's "client" (``GATEWAY_TEST_FAIL_STARTUP=1``
makes it fail instead), a lifespan context manager holds a second one, and ``on_shutdown`` records the close.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import orjson

from gateway import CommandContext, Gateway
from gateway.api import StreamRequest

gw = Gateway()
clients: dict[str, bool] = {}


def _record(entry: dict[str, object]) -> None:
    with (Path(os.environ["GATEWAY_TEST_RECORDS"]) / f"{os.getpid()}.jsonl").open("ab") as out:
        out.write(orjson.dumps(entry) + b"\n")
        out.flush()
        os.fsync(out.fileno())


@gw.on_startup
async def open_client() -> None:
    if os.environ.get("GATEWAY_TEST_FAIL_STARTUP") == "1":
        raise ConnectionError("no database at db.invalid")
    clients["db"] = True
    _record({"hook": "startup"})


@gw.lifespan
@contextlib.asynccontextmanager
async def cache() -> AsyncIterator[None]:
    clients["cache"] = True
    yield
    _record({"hook": "lifespan-exit", "db_closed": "db" not in clients})


@gw.on_shutdown
async def close_client() -> None:
    clients.pop("db", None)
    _record({"hook": "shutdown"})


@gw.command("/items/{item}/touch")
async def touch(item: int, note: str, ctx: CommandContext) -> None:
    identity = ctx.identity
    _record({"item": item, "note": note, "command_id": ctx.command_id, "idempotency_key": ctx.idempotency_key,
             "client": ctx.client, "headers": dict(ctx.headers), "cookies": dict(ctx.cookies),
             "subject": identity.subject if identity else None, "claims": dict(identity.claims) if identity else None,
             "path_params": dict(ctx.path_params), "delivery": ctx.delivery, "clients": sorted(clients)})
    if os.environ.get("GATEWAY_TEST_STALL") == "1":
        await asyncio.Event().wait()


@gw.view("/rooms/{room}/updates", topics=["rooms"])
async def room(request: StreamRequest) -> str:
    return f"room={request.path_params['room']}"


@gw.view("/boards/{board}/cards/{n}", topics=["boards"])
async def card(request: StreamRequest, n: int) -> str:
    return f"board={request.path_params['board']} n={n!r}"
