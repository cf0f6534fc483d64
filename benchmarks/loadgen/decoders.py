"""Streaming ``Content-Encoding`` decoders, one per stream, fed each body chunk as it arrives.

Decoding chunk by chunk, never the whole body at the end, is the point: a server that compresses without flushing
each event shows up as events arriving late (or never), which is exactly what a latency benchmark must measure.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any, Protocol

import brotli
import zstandard

__all__ = ["DECODERS", "Decoder", "make_decoder"]


class Decoder(Protocol):
    """A streaming decompressor bound to one response body."""

    def decode(self, data: bytes) -> bytes:
        """Everything ``data`` (with what came before) lets us decode now."""
        ...

    def flush(self) -> bytes:
        """Whatever is left at the end of the body."""
        ...


class IdentityDecoder:
    """No content coding: the bytes are the text."""

    __slots__ = ()

    def decode(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


class BrotliDecoder:
    """Brotli, draining the decompressor when one call may have held output back.

    brotli >= 1.2 may cap the output of one ``process()`` call (1.2.1 stops at a full output block: 32,752 bytes
    with a 4 MiB window) and keep the rest for later calls with empty input: without draining, any event over that
    size would come back cut. An output below the first block can only mean the input ran out, so the drain call is
    skipped under ``_DRAIN_AT``, which keeps small events at one C call. ``test_brotli_event_over_64k_decoded_whole``
    fails if a brotli release ever stops under it.
    """

    __slots__ = ("_process",)

    _DRAIN_AT = 16 * 1024

    def __init__(self) -> None:
        self._process: Callable[[bytes], bytes] = brotli.Decompressor().process

    def decode(self, data: bytes) -> bytes:
        process = self._process
        out = process(data)
        if len(out) < self._DRAIN_AT:
            return out
        parts = [out]
        while out:
            out = process(b"")
            parts.append(out)
        return b"".join(parts)

    def flush(self) -> bytes:
        return b""


class ZlibDecoder:
    """gzip (``wbits`` 16 + 15), or deflate (``wbits`` None: zlib-wrapped or raw, told apart by the header).

    RFC 9110's deflate is zlib-wrapped, but some servers send raw deflate and every browser accepts both, so the
    first two bytes decide: a zlib header is CM=8 with a 16-bit value divisible by 31.
    """

    __slots__ = ("_d", "_head")

    def __init__(self, wbits: int | None) -> None:
        self._d: Any = None if wbits is None else zlib.decompressobj(wbits)
        self._head = b""

    def decode(self, data: bytes) -> bytes:
        if self._d is None:
            data = self._head + data
            if len(data) < 2:
                self._head = data
                return b""
            self._head = b""
            zlib_wrapped = data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
            self._d = zlib.decompressobj(zlib.MAX_WBITS if zlib_wrapped else -zlib.MAX_WBITS)
        return bytes(self._d.decompress(data))

    def flush(self) -> bytes:
        return b"" if self._d is None else bytes(self._d.flush())


class ZstdDecoder:
    """zstd: the flushed blocks of one frame (``COMPRESSOBJ_FLUSH_BLOCK`` per event on the server side)."""

    __slots__ = ("_decompress",)

    def __init__(self) -> None:
        self._decompress: Callable[[bytes], bytes] = zstandard.ZstdDecompressor().decompressobj().decompress

    def decode(self, data: bytes) -> bytes:
        return self._decompress(data)

    def flush(self) -> bytes:
        return b""


DECODERS: dict[str, Callable[[], Decoder]] = {
    "identity": IdentityDecoder,
    "br": BrotliDecoder,
    "gzip": lambda: ZlibDecoder(16 + zlib.MAX_WBITS),
    "x-gzip": lambda: ZlibDecoder(16 + zlib.MAX_WBITS),
    "deflate": lambda: ZlibDecoder(None),
    "zstd": ZstdDecoder,
}


def make_decoder(content_encoding: str | None) -> Decoder:
    """The decoder for a response's ``Content-Encoding`` header (absent or empty means identity)."""
    name = (content_encoding or "identity").strip().lower() or "identity"
    try:
        factory = DECODERS[name]
    except KeyError:
        raise ValueError(
            f"unsupported content-encoding {content_encoding!r}; supported: {', '.join(sorted(DECODERS))}"
        ) from None
    return factory()
