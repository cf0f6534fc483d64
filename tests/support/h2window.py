"""A raw HTTP/2 client (h2c, prior knowledge) that decides every WINDOW_UPDATE itself, for flow-control tests.

Streams start with the window given at connect (``SETTINGS_INITIAL_WINDOW_SIZE``); ``grant`` raises one stream's
window, and a stream marked ``live`` gets back every byte it reads at once, while the others keep what they were
given until a test grants more. The connection's own window is kept wide open, so only the streams' windows
matter. ``reset`` sends RST_STREAM, ``goaway`` GOAWAY. Each stream's body is read as identity-encoded SSE and its
events' data kept in order. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

CONNECTION_WINDOW = 1 << 30


@dataclass
class Received:
    """One stream's response as it arrives."""

    status: int | None = None
    body: bytes = b""
    events: list[str] = field(default_factory=list)
    ended: bool = False
    reset: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def take(self, data: bytes) -> None:
        self.body += data
        *blocks, self.body = self.body.split(b"\n\n")
        for block in blocks:
            lines = [line[5:].removeprefix(b" ") for line in block.split(b"\n") if line.startswith(b"data:")]
            if lines:
                self.events.append(b"\n".join(lines).decode())


class H2Window:
    """One h2c connection whose flow control a test drives."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, initial_window: int) -> None:
        self._reader = reader
        self._writer = writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: initial_window,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        })
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - self.conn.inbound_flow_control_window)
        self.streams: dict[int, Received] = {}
        self.live: set[int] = set()  # streams whose read bytes are given back at once
        self.closed = asyncio.Event()  # the server closed the connection
        self.terminated: int | None = None  # the error code of the server's GOAWAY, if one came
        self._flush()
        self._task = asyncio.create_task(self._read(), name="h2window-read")

    @classmethod
    async def open(cls, port: int, initial_window: int, timeout: float = 5.0) -> H2Window:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        return cls(reader, writer, initial_window)

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self._writer.is_closing():
            self._writer.write(data)

    async def subscribe(self, path: str, timeout: float = 5.0, *, live: bool = True) -> int:
        """GET ``path`` (identity) on a new stream; its id once the response head is in. A ``live`` stream's
        window is opened wide and kept so; any other keeps the connection's initial window."""
        stream_id = self.conn.get_next_available_stream_id()
        self.streams[stream_id] = received = Received()
        if live:
            self.live.add(stream_id)
        self.conn.send_headers(stream_id, [(b":method", b"GET"), (b":scheme", b"http"),
                                           (b":authority", b"127.0.0.1"), (b":path", path.encode()),
                                           (b"accept-encoding", b"identity")], end_stream=True)
        if live:
            self.conn.increment_flow_control_window(CONNECTION_WINDOW >> 4, stream_id)
        self._flush()
        async with asyncio.timeout(timeout):
            while received.status is None:
                await received.changed.wait()
                received.changed.clear()
        assert received.status == 200, f"stream {stream_id} of {path} answered {received.status}"
        return stream_id

    def grant(self, stream_id: int, increment: int, *, live: bool = False) -> None:
        """A (late) WINDOW_UPDATE of ``increment`` bytes for one stream; ``live`` also keeps it open from now on."""
        self.conn.increment_flow_control_window(increment, stream_id)
        if live:
            self.live.add(stream_id)
        self._flush()

    def reset(self, stream_id: int) -> None:
        self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        self.live.discard(stream_id)
        self.streams[stream_id].reset = True
        self._flush()

    def goaway(self) -> None:
        self.conn.close_connection()
        self._flush()

    async def events(self, stream_id: int, count: int, timeout: float = 10.0) -> list[str]:
        """The data of the stream's first ``count`` events, once that many arrived."""
        received = self.streams[stream_id]
        try:
            async with asyncio.timeout(timeout):
                while len(received.events) < count:
                    await received.changed.wait()
                    received.changed.clear()
        except TimeoutError:
            raise TimeoutError(f"stream {stream_id}: {len(received.events)} of {count} events within {timeout} s "
                               f"(last: {received.events[-1:]})") from None
        return received.events[:count]

    async def _read(self) -> None:
        try:
            while data := await self._reader.read(65536):
                self._handle(self.conn.receive_data(data))
                self._flush()
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        finally:
            self.closed.set()
            for received in self.streams.values():
                received.changed.set()

    def _handle(self, events: list[h2.events.Event]) -> None:
        for event in events:
            received = self.streams.get(getattr(event, "stream_id", 0) or 0)
            if isinstance(event, h2.events.ResponseReceived) and received is not None:
                received.status = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                size = event.flow_controlled_length
                if size:
                    self.conn.increment_flow_control_window(size)  # the connection's window stays wide open
                if received is None or received.reset:
                    continue
                received.take(event.data)
                if event.stream_id in self.live and size:
                    self.conn.increment_flow_control_window(size, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset) and received is not None:
                received.ended = True
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.terminated = int(event.error_code or 0)
            if received is not None:
                received.changed.set()

    async def close(self, timeout: float = 5.0) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self._writer.wait_closed(), timeout)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
