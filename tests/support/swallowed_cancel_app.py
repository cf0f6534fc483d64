"""The drain app (``tests.support.drain_app``) whose Redis health check swallows the cancellation that ends it:
``gateway serve --app tests.support.swallowed_cancel_app:gw``.

This is what Python 3.11's ``asyncio.wait_for`` does when the awaited operation completes in the same loop turn as
the cancel (it returns the result instead of raising; bpo-42130, fixed in 3.12 by rewriting ``wait_for``).
redis-py writes every command of a client with a socket timeout through ``wait_for``, so a health check that a
shutdown cancels just as its write finishes carries on as if nothing happened. Here the check waits until it is
cancelled and then returns normally, every time, so the condition is certain instead of a millisecond-wide race.

``GATEWAY_TEST_TAKE_PORT=1``: a startup hook listens on the gateway's own plain port, so that serving fails after
the bus started (Hypercorn binds its listeners after the startup), as a port taken between the start-up check and
the bind does; the process must then exit with 2, not wait for ever on the health check.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import Any

from redis.asyncio.client import Redis

from tests.support.drain_app import gw

__all__ = ["gw"]

_held: list[socket.socket] = []


async def _ping_swallowing_cancel(self: Redis, **kwargs: Any) -> bool:
    # A health check still in flight when the link is closed; its cancellation is swallowed, as wait_for does
    # when its write completed in the same turn.
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(3600)
    return True


# A deliberate monkeypatch of a library method, with a narrower signature than its overloads.
Redis.ping = _ping_swallowing_cancel  # type: ignore[method-assign, assignment]

if os.environ.get("GATEWAY_TEST_TAKE_PORT") == "1":

    @gw.on_startup
    async def take_the_port() -> None:
        host, _, port = gw.settings.server.bind.rpartition(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen()
        _held.append(sock)
