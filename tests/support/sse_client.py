"""Reading a live SSE response in tests: decode each chunk as it arrives and parse events from it.

Decoding chunk by chunk (with the real brotli/zstandard/zlib decoders, not the HTTP client's) is what proves
the server flushed every event: a chunk that ends mid-frame, or a frame that only decodes once more bytes
arrive, shows up here as a missing event.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from typing import Any

import brotli
import zstandard

from gateway.core.sse import ParsedEvent, SSEParser


class Decoder:
    """Streaming decoder for one ``Content-Encoding``."""

    def __init__(self, encoding: str | None) -> None:
        self.encoding = (encoding or "identity").lower()
        self._d: Any
        if self.encoding == "br":
            self._d = brotli.Decompressor()
        elif self.encoding == "gzip":
            self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif self.encoding == "zstd":
            self._d = zstandard.ZstdDecompressor().decompressobj()
        elif self.encoding == "identity":
            self._d = None
        else:
            raise ValueError(f"unexpected content-encoding {encoding!r}")

    def decode(self, chunk: bytes) -> bytes:
        if self._d is None:
            return chunk
        if self.encoding == "br":
            # brotli >= 1.2 caps each call's output (about 32 KB) and hands out the rest on further calls with
            # empty input, even while can_accept_more_data() is True: drain it, or large events come back cut.
            parts = [bytes(self._d.process(chunk))]
            while parts[-1]:
                parts.append(bytes(self._d.process(b"")))
            return b"".join(parts)
        return bytes(self._d.decompress(chunk))

    @property
    def finished(self) -> bool:
        """The compressed stream was ended properly (its last block came); identity has no end of its own."""
        if self.encoding == "br":
            return bool(self._d.is_finished())
        if self.encoding in ("gzip", "zstd"):
            return bool(self._d.eof)
        return True


class SSEReader:
    """Events from an async iterator of raw (still encoded) body chunks."""

    def __init__(self, chunks: AsyncIterator[bytes], encoding: str | None) -> None:
        self._chunks = chunks
        self.decoder = Decoder(encoding)
        self.parser = SSEParser()
        self.pending: list[ParsedEvent] = []
        self.raw_bytes = 0
        self.decoded = b""
        self.chunks_not_on_frame_boundary = 0

    async def more(self) -> bool:
        """Read one more chunk; False at the end of the stream."""
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            return False
        self.raw_bytes += len(chunk)
        text = self.decoder.decode(chunk)
        self.decoded += text
        if text and not text.endswith(b"\n\n"):
            self.chunks_not_on_frame_boundary += 1
        self.pending.extend(self.parser.feed(text))
        return True

    async def next_event(self, timeout: float = 10.0) -> ParsedEvent:
        async with asyncio.timeout(timeout):
            while not self.pending:
                if not await self.more():
                    raise EOFError("stream ended")
        return self.pending.pop(0)

    async def until(self, predicate: Any, timeout: float = 10.0) -> ParsedEvent:
        """The first event for which ``predicate(event)`` holds (earlier ones are consumed)."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.next_event(timeout)
                if predicate(event):
                    return event

    async def until_end(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while await self.more():
                pass
