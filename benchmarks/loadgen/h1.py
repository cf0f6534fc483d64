"""One SSE stream per HTTP/1.1 connection, as a bare ``asyncio.Protocol``.

Why not ``asyncio`` streams or an HTTP client library: at 10,000 streams the generator's CPU is the measurement's
noise floor. A protocol object gets each read as one ``bytes`` object and does a handful of ``find`` calls and
slices on it; no reader task, no buffer copies, no per-chunk coroutine switches.
"""

from __future__ import annotations

import asyncio
import socket
import ssl as _ssl
import time
from collections.abc import Iterable
from typing import cast

from benchmarks.loadgen.stream import READ_BUFFER, StreamState

__all__ = ["ChunkedParser", "H1Stream", "build_request", "open_h1_stream"]

_MAX_HEAD = 64 * 1024
_MAX_LINE = 4096


_SIZE, _DATA, _DATA_END, _TRAILER = range(4)
_HEX = b"0123456789abcdefABCDEF"


def _chunk_size(line: bytes) -> int:
    if b";" in line:
        line = line.partition(b";")[0]  # chunk extensions are ignored
    text = line.strip()  # (the CR of the CRLF too)
    if not text or text.strip(_HEX):
        raise ValueError(f"malformed chunk size line {line!r}")
    return int(text, 16)


class ChunkedParser:
    """Incremental ``Transfer-Encoding: chunked`` parser: ``feed(bytes)`` returns the payload pieces it holds.

    Payload is handed out as soon as it arrives, even mid-chunk, so a streaming decoder sees it at once; the chunk
    framing may be split anywhere. The common read, one or more whole chunks, takes one ``find`` and one slice per
    chunk. Bare LF is accepted for CRLF (tolerant reader); a malformed size raises ``ValueError``. ``done`` turns
    True after the last chunk and its trailers.
    """

    __slots__ = ("_line", "_remaining", "_state", "done")

    def __init__(self) -> None:
        self._state = _SIZE
        self._remaining = 0
        self._line = b""  # an unfinished size or trailer line
        self.done = False

    def feed(self, data: bytes) -> list[bytes]:
        if self._state == _SIZE and not self._line:  # fast path: a read of exactly one whole chunk
            nl = data.find(b"\r\n")
            if 0 < nl <= 8:
                size_text = data[:nl]
                if not size_text.strip(_HEX):
                    end = nl + 2 + int(size_text, 16)
                    if end + 2 == len(data) and end > nl + 2 and data.endswith(b"\r\n"):
                        return [data[nl + 2:end]]
        out: list[bytes] = []
        pos, n = 0, len(data)
        while pos < n and not self.done:
            state = self._state
            if state == _DATA:
                end = pos + self._remaining
                if end >= n:  # the chunk goes on past this read
                    out.append(data[pos:] if pos else data)
                    self._remaining = end - n
                    if not self._remaining:
                        self._state = _DATA_END
                    return out
                out.append(data[pos:end])
                pos = end
                self._remaining = 0
                self._state = _DATA_END
            elif state == _DATA_END:  # the CRLF after a chunk's data, maybe split
                byte = data[pos]
                if byte == 10:
                    self._state = _SIZE
                elif byte != 13:
                    raise ValueError(f"chunk not followed by CRLF: {data[pos:pos + 16]!r}")
                pos += 1
            else:  # a size line, or a trailer line after the last chunk
                nl = data.find(b"\n", pos)
                if nl < 0:
                    self._line += data[pos:]
                    if len(self._line) > _MAX_LINE:
                        raise ValueError("chunk size or trailer line too long")
                    return out
                line = data[pos:nl]
                if self._line:
                    line, self._line = self._line + line, b""
                pos = nl + 1
                if state == _SIZE:
                    size = _chunk_size(line)
                    if not size:
                        self._state = _TRAILER
                        continue
                    end = pos + size
                    if data.startswith(b"\r\n", end):  # the whole chunk is in this read
                        out.append(data[pos:end])
                        pos = end + 2
                    else:
                        self._remaining = size
                        self._state = _DATA
                elif not line.rstrip(b"\r"):  # the blank line ending the trailers
                    self.done = True
        return out


def build_request(
    path: str,
    authority: str,
    *,
    accept_encoding: str = "identity",
    last_event_id: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """The GET that opens an SSE stream (``Cache-Control: no-cache`` as ``EventSource`` sends it)."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {authority}",
        "Accept: text/event-stream",
        f"Accept-Encoding: {accept_encoding}",
        "Cache-Control: no-cache",
    ]
    if last_event_id is not None:
        lines.append(f"Last-Event-ID: {last_event_id}")
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status and headers (names lower-cased, repeats joined with ", ") of a response head without its blank line."""
    status_line, *lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"malformed status line {status_line!r}")
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon:
            continue
        name, value = name.strip().lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return int(parts[1]), headers


_M_HEAD, _M_CHUNKED, _M_LENGTH, _M_UNTIL_CLOSE, _M_DONE = range(5)  # what the next bytes are


class H1Stream(asyncio.BufferedProtocol):
    """The client side of one HTTP/1.1 connection carrying one SSE response."""

    def __init__(self, state: StreamState, request: bytes) -> None:
        self.state = state
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()  # the transport closed
        self.received_bytes = 0  # everything read from the socket: head, chunk framing and body
        self._mode = _M_HEAD
        self._head = b""
        self._chunked = ChunkedParser()
        self._remaining = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # (uvloop's are not subclasses)
        transport.write(self.request)

    def get_buffer(self, sizehint: int) -> memoryview:
        return READ_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(READ_BUFFER[:nbytes]))

    def data_received(self, data: bytes) -> None:
        t_ns = time.perf_counter_ns()  # once per read: every event completed by this read arrived now
        self.received_bytes += len(data)
        if self._mode == _M_HEAD:
            data = self._read_head(data)
            if not data:
                return
        self._body(data, t_ns)

    def _body(self, data: bytes, t_ns: int) -> None:
        mode = self._mode
        if mode == _M_CHUNKED:
            try:
                pieces = self._chunked.feed(data)
            except ValueError as exc:
                self._fail(f"chunked framing: {exc}")
                return
            if len(pieces) == 1:  # the common read: one whole chunk
                self.state.receive(pieces[0], t_ns)
            else:
                for piece in pieces:
                    self.state.body(piece)
                self.state.deliver(t_ns)
            if self._chunked.done:
                self._finish("end")
        elif mode == _M_LENGTH:
            if len(data) >= self._remaining:
                data = data[: self._remaining]
            self._remaining -= len(data)
            self.state.receive(data, t_ns)
            if not self._remaining:
                self._finish("end")
        elif mode == _M_UNTIL_CLOSE:
            self.state.receive(data, t_ns)

    def _read_head(self, data: bytes) -> bytes:
        """Gather the response head; return the body bytes that followed it in the same read."""
        head = self._head + data if self._head else data
        while True:
            end = head.find(b"\r\n\r\n")
            if end < 0:
                if len(head) > _MAX_HEAD:
                    self._fail("response head too large")
                    return b""
                self._head = head
                return b""
            try:
                status, headers = parse_head(head[:end])
            except ValueError as exc:
                self._fail(str(exc))
                return b""
            head, body = b"", head[end + 4:]
            if 100 <= status < 200:  # an interim answer (103 Early Hints, say): the real one follows
                head = body
                continue
            break
        self._head = b""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._mode = _M_CHUNKED
        elif "content-length" in headers:
            try:
                self._remaining = int(headers["content-length"])
            except ValueError:
                self._fail(f"bad content-length {headers['content-length']!r}")
                return b""
            self._mode = _M_LENGTH
        else:
            self._mode = _M_UNTIL_CLOSE
        self.state.head(status, headers)
        if self._mode == _M_LENGTH and not self._remaining:
            self._finish("end")
            return b""
        return body

    def _finish(self, reason: str, error: str | None = None) -> None:
        self._mode = _M_DONE
        self.state.close(reason, error)
        if self.transport is not None:
            self.transport.close()  # one response per connection: nothing more to read

    def _fail(self, error: str) -> None:
        self._finish("error", error)

    def eof_received(self) -> bool | None:
        return None  # close the transport (connection_lost follows)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._mode == _M_UNTIL_CLOSE:
            self.state.close("end")  # the body was delimited by the close
        elif exc is None:
            self.state.close("eof", None if self._mode == _M_DONE else "connection closed mid-response")
        else:
            self.state.close("error", f"{type(exc).__name__}: {exc}")
        self._mode = _M_DONE
        if not self.lost.done():
            self.lost.set_result(None)

    def close(self) -> None:
        """Leave: the server sees the connection close (its disconnect path is part of what is measured)."""
        if self.transport is not None and not self.transport.is_closing():
            self.state.close("closed")
            self.transport.close()


async def open_h1_stream(
    state: StreamState,
    host: str,
    port: int,
    path: str,
    *,
    accept_encoding: str = "identity",
    last_event_id: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    ssl: _ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    rcvbuf: int | None = None,
) -> H1Stream:
    """Connect and send the request; the head arrives later (``state.opened``). Raises on connect errors.

    ``rcvbuf`` sets SO_RCVBUF before connecting, so the TCP window the server sees is small from the first byte
    (setting it after the handshake no longer lowers the advertised window scale).
    """
    loop = asyncio.get_running_loop()
    default_port = 443 if ssl is not None else 80
    authority = host if port == default_port else f"{host}:{port}"
    request = build_request(path, authority, accept_encoding=accept_encoding, last_event_id=last_event_id,
                            headers=headers)
    protocol = H1Stream(state, request)
    tls_name = (server_hostname or host) if ssl is not None else None
    if rcvbuf is None:
        await loop.create_connection(lambda: protocol, host, port, ssl=ssl, server_hostname=tls_name)
        return protocol
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, type_, proto, _, address = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await loop.sock_connect(sock, address)
        await loop.create_connection(lambda: protocol, sock=sock, ssl=ssl, server_hostname=tls_name)
    except BaseException:
        sock.close()
        raise
    return protocol
