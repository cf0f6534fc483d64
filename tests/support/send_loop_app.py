"""A gateway with one route that streams without end; serve it with
``gateway serve --app tests.support.send_loop_app:gw``.

``GET /export`` is a plain Quart streaming response (an export, a download) whose body generator never awaits
anything: the only suspension point of its send loop is the ASGI ``send`` itself, as in any app that streams
what it already holds. Such a loop depends on ``send`` failing, or at least suspending, once the client is
gone; ``tests/test_transport_faults.py`` resets the connection under it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from quart import Response

from gateway import Gateway

CHUNK = b"x" * 4096

gw = Gateway()


@gw.route("/export")
async def export() -> Response:
    async def body() -> AsyncIterator[bytes]:
        while True:
            yield CHUNK

    return Response(body(), content_type="application/octet-stream")
