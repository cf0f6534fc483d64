"""Hypercorn's HTTP/2 server protocol in process, without sockets, driven by an ``h2`` client.

``H2Harness`` builds a real ``TCPServer`` (for its send lock and ``protocol_send``) around a fake writer, a real
``H2Protocol`` with its send task, and an ASGI app that parks every request and hands its ``send`` to the test. The
test speaks for the client (``client``: an ``h2`` connection whose bytes ``deliver`` feeds to the server) and reads
what the server wrote, one transport write at a time (``Transport.writes``), so it can hold fan-out's h2 direct
writes (``gateway.web.hypercorn.h2_direct``) to Hypercorn's own state step by step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio.task_group import TaskGroup
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.events import RawData
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.typing import ConnectionState

Send = Callable[[dict[str, Any]], Awaitable[None]]


class Transport:
    """The connection's transport: records each write; its buffer size and closing state are the test's."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False
        self.buffered = 0

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered


class Writer:
    """What ``TCPServer`` writes Hypercorn's own bytes through."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    async def drain(self) -> None:
        return None

    def write_eof(self) -> None:
        self.transport.closing = True

    def close(self) -> None:
        self.transport.closing = True

    async def wait_closed(self) -> None:
        return None


class H2Harness:
    """One server-side h2 connection and its client, in this event loop (use ``async with``)."""

    def __init__(self, initial_window: int = 65_535) -> None:
        self.transport = Transport()
        self.sends: asyncio.Queue[Send] = asyncio.Queue()
        self._done = asyncio.Event()
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                            header_encoding=None))
        self.client.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: initial_window,
            h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.received: dict[int, bytes] = {}
        self.events: list[h2.events.Event] = []
        self._read = 0  # transport writes already given to the client

    async def __aenter__(self) -> H2Harness:
        loop = asyncio.get_running_loop()
        config, context = Config(), WorkerContext(None)
        self._group = TaskGroup(loop)
        await self._group.__aenter__()
        self.server = TCPServer(ASGIWrapper(self._app), loop, config, context, {},  # type: ignore[arg-type]
                                None,  # type: ignore[arg-type]
                                Writer(self.transport))  # type: ignore[arg-type]
        self.protocol = H2Protocol(ASGIWrapper(self._app), config, context, self._group,  # type: ignore[arg-type]
                                   ConnectionState({}), False, ("127.0.0.1", 1), ("127.0.0.1", 2),
                                   self.server.protocol_send)
        self.server.protocol = self.protocol  # type: ignore[assignment]
        await self.protocol.initiate()
        self.client.initiate_connection()
        await self.deliver()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._done.set()
        from hypercorn.events import Closed

        await self.protocol.handle(Closed())
        await self._group.__aexit__(None, None, None)  # type: ignore[arg-type]

    async def _app(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        if scope["type"] != "http":
            return
        await self.sends.put(send)
        await self._done.wait()

    async def deliver(self) -> None:
        """Hand the client's pending bytes to the server, then read what it wrote."""
        data = self.client.data_to_send()
        if data:
            await self.protocol.handle(RawData(data=data))
        self.read()

    def read(self) -> int:
        """Feed the server's new transport writes to the client; how many writes there were."""
        new = self.transport.writes[self._read:]
        self._read = len(self.transport.writes)
        for data in new:
            for event in self.client.receive_data(data):
                self.events.append(event)
                if isinstance(event, h2.events.DataReceived):
                    self.received[event.stream_id] = self.received.get(event.stream_id, b"") + event.data
        return len(new)

    async def open(self, path: str = "/s", timeout: float = 5.0) -> tuple[int, Send]:
        """A GET on a new stream, answered 200 by its app; the stream id and the app's ``send``."""
        stream_id = self.client.get_next_available_stream_id()
        self.client.send_headers(stream_id, [(b":method", b"GET"), (b":scheme", b"http"),
                                             (b":authority", b"127.0.0.1"), (b":path", path.encode())],
                                 end_stream=True)
        await self.deliver()
        send = await asyncio.wait_for(self.sends.get(), timeout)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        self.read()
        return stream_id, send
