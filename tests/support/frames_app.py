"""A gateway that reports the coroutines each of its asyncio tasks holds (``GET /frames``): for every task, the
qualified names along its chain of awaits, outermost first (a frame an idle stream keeps alive is one name); how
many parsed stream requests are alive (``requests``); and how many request headers the scope of each open hub
stream still holds (``hub_headers``)."""

from __future__ import annotations

import asyncio
import gc
import inspect
from typing import Any

from hypercorn.protocol.http_stream import HTTPStream

from gateway import Gateway
from gateway.web.asgi_util import StreamRequest

gw = Gateway()


def _chain(awaited: Any) -> list[str]:
    names: list[str] = []
    while awaited is not None:
        if type(awaited).__name__ == "coroutine_wrapper":  # ``__await__`` of a coroutine: the coroutine inside
            awaited = next((o for o in gc.get_referents(awaited) if inspect.iscoroutine(o)), None)
            continue
        if not inspect.iscoroutine(awaited):
            break
        names.append(awaited.cr_code.co_qualname)
        awaited = awaited.cr_await
    return names


def _alive(kind: type) -> list[Any]:
    frozen = gc.get_freeze_count()
    gc.unfreeze()  # the gateway's GC policy freezes what lives long: frozen objects are not listed
    try:
        return [obj for obj in gc.get_objects() if type(obj) is kind]
    finally:
        if frozen:
            gc.freeze()


@gw.route("/frames")
async def frames() -> dict[str, Any]:
    scopes = [stream.scope for stream in _alive(HTTPStream) if hasattr(stream, "scope")]
    return {"tasks": [_chain(task.get_coro()) for task in asyncio.all_tasks()], "requests": len(_alive(StreamRequest)),
            "hub_headers": [len(scope["headers"]) for scope in scopes if scope["path"] == "/hub/subscribe"]}
