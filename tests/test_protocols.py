"""The demo's view and commands over every protocol the gateway serves, against a real ``gateway serve``.

Each test subscribes to ``/todos/updates`` with ``Accept-Encoding: br``, gets the complete initial state, POSTs a
command on the same protocol (answered 204) and waits for the re-render, decoding the Brotli stream chunk by
chunk: every event must be complete and decodable the moment its bytes arrive.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx
import pytest

from tests.support.h3client import H3Client
from tests.support.server import Server
from tests.support.sse_client import SSEReader

pytestmark = [pytest.mark.live, pytest.mark.asyncio]

Post = Callable[[str, bytes], Awaitable[int]]
Opened = tuple[SSEReader, Post, str, dict[str, str]]


@asynccontextmanager
async def _httpx_stream(client: httpx.AsyncClient, base: str) -> AsyncIterator[Opened]:
    async def post(path: str, body: bytes) -> int:
        response = await client.post(base + path, content=body, headers={"content-type": "application/json"})
        return response.status_code

    async with client.stream("GET", base + "/todos/updates", headers={"accept-encoding": "br"}) as response:
        assert response.status_code == 200
        headers = {k.lower(): v for k, v in response.headers.items()}
        yield SSEReader(response.aiter_raw(), headers.get("content-encoding")), post, response.http_version, headers


@asynccontextmanager
async def _h3_stream(server: Server) -> AsyncIterator[Opened]:
    async with H3Client("127.0.0.1", server.tls_port, verify=False) as client:

        async def post(path: str, body: bytes) -> int:
            response = await client.request("POST", path, headers={"content-type": "application/json"}, body=body)
            return response.status

        async with client.stream("GET", "/todos/updates", headers={"accept-encoding": "br"}) as stream:
            assert stream.status == 200
            headers = dict(stream.headers)
            yield SSEReader(stream.aiter_raw(), headers.get("content-encoding")), post, "HTTP/3", headers


def _open(protocol: str, server: Server, stack: list[httpx.AsyncClient]) -> AbstractAsyncContextManager[Opened]:
    if protocol == "h3":
        return _h3_stream(server)
    if protocol == "http/1.1":
        client = httpx.AsyncClient(http1=True, http2=False, timeout=10)
        base = server.http
    elif protocol == "h2c":
        client = httpx.AsyncClient(http1=False, http2=True, timeout=10)  # prior knowledge over cleartext
        base = server.http
    else:
        client = httpx.AsyncClient(http1=False, http2=True, verify=False, timeout=10)
        base = server.https
    stack.append(client)
    return _httpx_stream(client, base)


EXPECTED_VERSION = {"http/1.1": "HTTP/1.1", "h2c": "HTTP/2", "h2": "HTTP/2", "h3": "HTTP/3"}


@pytest.mark.parametrize("protocol", ["http/1.1", "h2c", "h2", "h3"])
async def test_view_and_command(server: Server, protocol: str) -> None:
    clients: list[httpx.AsyncClient] = []
    try:
        async with _open(protocol, server, clients) as (reader, post, http_version, headers):
            assert http_version == EXPECTED_VERSION[protocol]
            assert headers["content-type"] == "text/event-stream; charset=utf-8"
            assert headers["content-encoding"] == "br"
            assert headers["cache-control"] == "no-store"
            assert headers["x-accel-buffering"] == "no"
            if protocol != "http/1.1":  # hop-by-hop headers are malformed in HTTP/2 and HTTP/3
                assert "connection" not in headers
                assert "transfer-encoding" not in headers

            initial = await reader.next_event(timeout=10)
            assert "<footer data-total=" in initial.data  # the complete state, first
            assert initial.id is not None
            assert reader.parser.retry is not None  # the initial retry: hint

            text = f"via {protocol} {uuid.uuid4().hex[:8]}"
            assert await post("/todos/add", f'{{"text": "{text}"}}'.encode()) == 204
            changed = await reader.until(lambda e: text in e.data, timeout=10)
            assert int(changed.id or 0) > int(initial.id)
            # Each chunk decoded on its own to whole frames: nothing held back by the compressor.
            assert reader.chunks_not_on_frame_boundary == 0
    finally:
        for client in clients:
            await client.aclose()


async def test_reconnect_with_current_version_gets_no_duplicate(server: Server) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        url = server.http + "/todos/updates"
        async with client.stream("GET", url, headers={"accept-encoding": "identity"}) as response:
            reader = SSEReader(response.aiter_raw(), None)
            first = await reader.next_event()
        assert first.id is not None
        headers = {"accept-encoding": "identity", "last-event-id": first.id}
        async with client.stream("GET", url, headers=headers) as response:
            reader = SSEReader(response.aiter_raw(), None)
            text = f"after-resume {uuid.uuid4().hex[:8]}"
            post = await client.post(server.http + "/todos/add", json={"text": text})
            assert post.status_code == 204
            event = await reader.next_event()
            # Nothing was re-sent for the version the client already had: the first event is the new state.
            assert text in event.data
            assert event.id != first.id


async def test_shared_render_is_byte_identical_for_all_subscribers(server: Server) -> None:
    """Render once per version: two subscribers get the very same frame for the same id."""
    async with httpx.AsyncClient(timeout=10) as a, httpx.AsyncClient(timeout=10) as b:
        url = server.http + "/todos/updates"
        h = {"accept-encoding": "identity"}
        async with a.stream("GET", url, headers=h) as ra, b.stream("GET", url, headers=h) as rb:
            reader_a, reader_b = SSEReader(ra.aiter_raw(), None), SSEReader(rb.aiter_raw(), None)
            await reader_a.next_event()
            await reader_b.next_event()
            text = f"shared {uuid.uuid4().hex[:8]}"
            assert (await a.post(server.http + "/todos/add", json={"text": text})).status_code == 204
            ea = await reader_a.until(lambda e: text in e.data)
            eb = await reader_b.until(lambda e: text in e.data)
            assert (ea.id, ea.data) == (eb.id, eb.data)
