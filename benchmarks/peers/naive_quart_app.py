"""The naive floor on our own stack: a Quart app on Hypercorn, one asyncio.Queue per subscriber, nothing else.

Run by the ``naive-quart`` and ``naive-quart-br`` peers (``hypercorn 'benchmarks.peers.naive_quart_app:create_app()'``
and ``...:create_app(brotli=True)``). It is what the gateway's hub would be without its machinery: no shared
framing, no backpressure, no bounded mailboxes, no heartbeats, no drain. Publishing puts the body into every
subscriber's unbounded queue and each stream frames (and, with Brotli, compresses) every event itself.

The Brotli variant gives each stream its own compressor (quality 4, 64 KiB window, as the gateway's default) and
flushes it after every event, so each event is decodable the moment it arrives. It compresses only for a client
whose ``Accept-Encoding`` names ``br``; the plain variant never compresses, whatever the client offers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import brotli
from quart import Quart, Response, request

BROTLI_QUALITY = 4
BROTLI_LGWIN = 16


def sse_frame(data: str) -> bytes:
    """One SSE event carrying ``data`` (split on every line break, as the SSE grammar requires)."""
    lines = data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return ("".join(f"data: {line}\n" for line in lines) + "\n").encode()


def _accepts_br(header: str) -> bool:
    for item in header.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() == "br":
            return params.replace(" ", "").lower() not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def create_app(*, brotli_streams: bool = False) -> Quart:
    """The app; with ``brotli_streams`` a stream is Brotli-compressed when its client accepts ``br``."""
    app = Quart(__name__)
    app.config["RESPONSE_TIMEOUT"] = None  # Quart cuts responses after 60 s by default: a stream lives forever
    subscribers: dict[str, set[asyncio.Queue[str]]] = {}

    def unsubscribe(topic: str, queue: asyncio.Queue[str]) -> None:
        queues = subscribers.get(topic)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del subscribers[topic]

    async def plain(topic: str, queue: asyncio.Queue[str]) -> AsyncIterator[bytes]:
        try:
            while True:
                yield sse_frame(await queue.get())
        finally:
            unsubscribe(topic, queue)

    async def compressed(topic: str, queue: asyncio.Queue[str]) -> AsyncIterator[bytes]:
        compressor = brotli.Compressor(quality=BROTLI_QUALITY, lgwin=BROTLI_LGWIN)
        try:
            while True:
                frame = sse_frame(await queue.get())
                yield compressor.process(frame) + compressor.flush()
        finally:
            unsubscribe(topic, queue)

    @app.get("/subscribe")
    async def subscribe() -> Response | tuple[str, int]:
        topic = request.args.get("topic")
        if not topic:
            return "name a topic: /subscribe?topic=NAME", 400
        # Registered before the response head is sent: a client that has the head is subscribed.
        queue: asyncio.Queue[str] = asyncio.Queue()
        subscribers.setdefault(topic, set()).add(queue)
        use_br = brotli_streams and _accepts_br(request.headers.get("Accept-Encoding", ""))
        body = compressed(topic, queue) if use_br else plain(topic, queue)
        response = Response(body, content_type="text/event-stream; charset=utf-8")
        response.headers["Cache-Control"] = "no-store"
        if brotli_streams:
            response.headers["Vary"] = "Accept-Encoding"
        if use_br:
            response.headers["Content-Encoding"] = "br"
        return response

    @app.post("/publish")
    async def publish() -> Response:
        topic = request.args.get("topic")
        if not topic:
            return Response("name a topic: /publish?topic=NAME", status=400)
        data = (await request.body).decode()
        for queue in subscribers.get(topic, ()):
            queue.put_nowait(data)
        return Response(status=204)

    @app.get("/readyz")
    async def readyz() -> str:
        return "ready"

    return app
