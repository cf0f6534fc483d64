"""An HTTP/1.1 SSE stream over a bare socket: every byte counted, and full control over reading.

httpx hides what the tests need to see or to do here: the bytes on the wire (chunk framing included), a receive
buffer made small on purpose, a client that simply stops reading, and the end of a response.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from gateway.core.sse import ParsedEvent, SSEParser
from tests.support.sse_client import Decoder


class RawStream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""  # the body of a non-200 answer
        self.wire_bytes = 0
        self.decoded = b""
        self.parser = SSEParser()
        self.decoder: Decoder | None = None
        self.ended = False
        self.wire: bytearray | None = None  # the body's content-coded bytes, unchunked, when kept (keep_wire)
        self._pending: list[ParsedEvent] = []

    @classmethod
    async def open(cls, port: int, path: str, accept_encoding: str = "identity", *,
                   headers: dict[str, str] | None = None, rcvbuf: int | None = None,
                   mss: int | None = None, timeout: float = 10, keep_wire: bool = False) -> RawStream:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the advertised TCP window is small from the start
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if mss is not None:  # an Ethernet-sized MSS keeps the server's send buffer from autotuning to megabytes
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
        sock.setblocking(False)
        async with asyncio.timeout(timeout):
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            reader, writer = await asyncio.open_connection(sock=sock)
            extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept-Encoding: {accept_encoding}\r\n"
                         f"{extra}\r\n".encode())
            await writer.drain()
            stream = cls(reader, writer)
            head = await reader.readuntil(b"\r\n\r\n")
            stream.wire_bytes += len(head)
            status, *lines = head.decode("latin-1").split("\r\n")
            stream.status = int(status.split()[1])
            stream.headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
            if stream.status != 200:
                stream.body = await reader.readexactly(int(stream.headers.get("content-length", "0")))
                return stream
        assert stream.headers.get("transfer-encoding") == "chunked"
        stream.decoder = Decoder(stream.headers.get("content-encoding"))
        if keep_wire:
            stream.wire = bytearray()
        return stream

    async def read_frames(self, count: int, timeout: float = 60) -> list[ParsedEvent]:
        """Read until ``count`` more frames arrived, then parse them all at once: the cheap path for tests that
        hold a thousand streams (the gateway writes whole frames per chunk, so frames are counted per chunk)."""
        frames = 0
        raw = []
        async with asyncio.timeout(timeout):
            while frames < count:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                chunk = (await self.reader.readexactly(size + 2))[:-2]
                if not size:
                    break
                assert self.decoder is not None
                text = self.decoder.decode(chunk)
                raw.append(text)
                frames += text.count(b"\n\n")
        return self.parser.feed(b"".join(raw))

    async def _chunk(self) -> bool:
        size_line = await self.reader.readuntil(b"\r\n")
        size = int(size_line.strip(), 16)
        chunk = await self.reader.readexactly(size + 2)
        self.wire_bytes += len(size_line) + len(chunk)
        if size == 0:
            self.ended = True
            return False
        assert self.decoder is not None
        if self.wire is not None:
            self.wire += chunk[:-2]
        text = self.decoder.decode(chunk[:-2])
        self.decoded += text
        self._pending.extend(self.parser.feed(text))
        return True

    async def next_parsed(self, timeout: float = 10) -> ParsedEvent:
        async with asyncio.timeout(timeout):
            while not self._pending:
                if not await self._chunk():
                    raise EOFError("the response ended")
        return self._pending.pop(0)

    async def next_event(self, timeout: float = 10) -> tuple[str, int]:
        """The next event's data and the wire bytes it took since the previous one."""
        start = self.wire_bytes
        event = await self.next_parsed(timeout)
        return event.data, self.wire_bytes - start

    async def until_end(self, timeout: float = 10) -> list[ParsedEvent]:
        """Every remaining event, up to the end of the response."""
        async with asyncio.timeout(timeout):
            while await self._chunk():
                pass
        events, self._pending = self._pending, []
        return events

    def close(self) -> None:
        """Close now: asyncio would only close the socket on a later loop iteration, which a test that then
        blocks (waiting for a server process, say) never gives it; the server would not see the client leave."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.writer.close()
