"""The SSE hub most tutorials lead to: Starlette + sse-starlette, one asyncio.Queue per subscriber.

Run by the ``sse-starlette`` peer under uvicorn (``benchmarks.peers.starlette_app:app``). Deliberately the naive
design: publishing puts the body into every subscriber's unbounded queue, and sse-starlette formats each event
once per subscriber. Nothing here is tuned; that is what the benchmark compares against.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

PING_SECONDS = 15  # sse-starlette's keep-alive comment, at the same period as the gateway's heartbeat

subscribers: dict[str, set[asyncio.Queue[str]]] = {}


def _unsubscribe(topic: str, queue: asyncio.Queue[str]) -> None:
    queues = subscribers.get(topic)
    if queues is not None:
        queues.discard(queue)
        if not queues:
            del subscribers[topic]


async def _events(topic: str, queue: asyncio.Queue[str]) -> AsyncIterator[dict[str, str]]:
    try:
        while True:
            yield {"data": await queue.get()}
    finally:
        _unsubscribe(topic, queue)


async def subscribe(request: Request) -> Response:
    topic = request.query_params.get("topic")
    if not topic:
        return PlainTextResponse("name a topic: /subscribe?topic=NAME", status_code=400)
    # Registered before the response head is sent: a client that has the head is subscribed.
    queue: asyncio.Queue[str] = asyncio.Queue()
    subscribers.setdefault(topic, set()).add(queue)
    # The background task also unsubscribes a stream whose generator never started (the client left at once).
    return EventSourceResponse(
        _events(topic, queue), ping=PING_SECONDS, background=BackgroundTask(_unsubscribe, topic, queue)
    )


async def publish(request: Request) -> Response:
    topic = request.query_params.get("topic")
    if not topic:
        return PlainTextResponse("name a topic: /publish?topic=NAME", status_code=400)
    data = (await request.body()).decode()
    for queue in subscribers.get(topic, ()):
        queue.put_nowait(data)
    return Response(status_code=204)


async def readyz(request: Request) -> Response:
    return PlainTextResponse("ready")


app = Starlette(
    routes=[
        Route("/subscribe", subscribe, methods=["GET"]),
        Route("/publish", publish, methods=["POST"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
)
