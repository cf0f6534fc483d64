"""A keep-alive HTTP/1.1 client that POSTs events, as small and predictable as the streams' side.

An HTTP client library would do, but its own overhead (connection pools, header objects, retries it decides on)
would land in the latency being measured: ``t`` is stamped just before the POST is written, so everything between
that stamp and the bytes leaving is counted against the server. This client writes one buffer and reads one
response; several can run side by side for "as fast as accepted" bursts, each on its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as _ssl
from collections.abc import Iterable

from benchmarks.loadgen.h1 import parse_head

__all__ = ["Publisher"]


class Publisher:
    """``await connect()``, then ``await post(path, body, headers)`` as often as needed, then ``close()``.

    Every call is bounded by ``timeout``. A request that failed leaves the connection closed (its state is
    unknown), and the next ``post`` reconnects. A reused connection that the server had closed while idle (its
    keep-alive timeout) is retried once on a fresh one, only when not a byte of the answer had come back.
    """

    def __init__(self, host: str, port: int, *, timeout: float = 10.0, ssl: _ssl.SSLContext | None = None,
                 server_hostname: str | None = None) -> None:
        self.host, self.port = host, port
        self.timeout = timeout
        self.ssl = ssl
        self.server_hostname = server_hostname
        default_port = 443 if ssl is not None else 80
        self.authority = host if port == default_port else f"{host}:{port}"
        self.last_headers: dict[str, str] = {}  # of the last response: e.g. the gateway's Event-Id
        self.last_body = b""
        self.requests = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def connect(self) -> None:
        async with asyncio.timeout(self.timeout):
            tls_name = (self.server_hostname or self.host) if self.ssl is not None else None
            self._reader, self._writer = await asyncio.open_connection(
                self.host, self.port, ssl=self.ssl, server_hostname=tls_name
            )

    async def post(self, path: str, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> int:
        """POST ``body`` (``Content-Type: application/json`` unless ``headers`` name one); return the status."""
        extra = list(headers)
        lines = [f"POST {path} HTTP/1.1", f"Host: {self.authority}", f"Content-Length: {len(body)}"]
        if not any(name.lower() == "content-type" for name, _ in extra):
            lines.append("Content-Type: application/json")
        lines.extend(f"{name}: {value}" for name, value in extra)
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        reused = self.connected
        try:
            return await self._exchange(request)
        except _IdleClosed:
            if not reused:
                raise ConnectionError("the server closed the connection without answering") from None
            return await self._exchange(request)

    async def _exchange(self, request: bytes) -> int:
        try:
            async with asyncio.timeout(self.timeout):
                if not self.connected:
                    await self.connect()
                assert self._reader is not None
                assert self._writer is not None
                try:
                    self._writer.write(request)
                    await self._writer.drain()
                except (ConnectionResetError, BrokenPipeError) as exc:
                    raise _IdleClosed(str(exc)) from None
                status, headers, keep = await self._response(self._reader)
        except BaseException:
            self.close()
            raise
        self.requests += 1
        self.last_headers = headers
        if not keep:
            self.close()
        return status

    async def _response(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bool]:
        """Read one answer (skipping interim 1xx ones); its body is kept in ``last_body`` and discarded after."""
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if not exc.partial:
                    raise _IdleClosed from None
                raise
            status, headers = parse_head(head[:-4])
            if not 100 <= status < 200:
                break
        keep = "close" not in headers.get("connection", "").lower()
        if status in (204, 304):
            self.last_body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).partition(b";")[0].strip(), 16)
                if not size:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                        pass
                    break
                parts.append((await reader.readexactly(size + 2))[:-2])
            self.last_body = b"".join(parts)
        elif "content-length" in headers:
            self.last_body = await reader.readexactly(int(headers["content-length"]))
        else:
            self.last_body = await reader.read()  # delimited by the close
            keep = False
        return status, headers, keep

    def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()


class _IdleClosed(ConnectionError):
    """The connection ended before a single byte of the answer: the server had closed it while idle."""
