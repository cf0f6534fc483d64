"""Per-connection streaming content encoders and ``Accept-Encoding`` negotiation.

Each SSE connection owns one encoder for its whole life. Its compression window is the connection's *context
window*: a view re-sends the complete state on every change, and a streaming compressor whose window still holds
the previous render only has to encode what changed. Every frame is written with ``encode_flush`` so the client
can decode it at once: a compressor that holds bytes back turns a live stream into a stalled one.

Encoders are two-and-a-half-method objects in a registry keyed by their ``Content-Encoding`` token; codecs whose
library is not installed are simply absent from the registry, and negotiation never offers them.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import brotli

_zstd: Any
try:  # optional: zstd is offered only where the binding is installed
    import zstandard as _zstd
except ImportError:  # pragma: no cover - depends on the environment
    _zstd = None


class StreamEncoder(Protocol):
    """A streaming compressor bound to one connection."""

    name: str

    def encode(self, data: bytes) -> bytes:
        """Feed data; may return nothing until a flush."""
        ...

    def flush(self) -> bytes:
        """Everything fed so far, decodable by the client now; the window is kept."""
        ...

    def encode_flush(self, data: bytes) -> bytes:
        """``encode(data) + flush()`` in one call: the per-event hot path."""
        ...

    def finish(self) -> bytes:
        """End the compressed stream (the encoder is unusable afterwards)."""
        ...


@dataclass(frozen=True, slots=True)
class CodecSettings:
    """Tuning for the codecs, checked at once so a bad value fails at start-up, not on the first client."""

    brotli_quality: int = 4
    brotli_lgwin: int = 16
    gzip_level: int = 6
    gzip_wbits: int = 15
    zstd_level: int = 3
    zstd_window_log: int = 17

    def __post_init__(self) -> None:
        _range("brotli_quality", self.brotli_quality, 0, 11)
        _range("brotli_lgwin", self.brotli_lgwin, 10, 24)
        _range("gzip_level", self.gzip_level, 1, 9)
        _range("gzip_wbits", self.gzip_wbits, 9, 15)
        _range("zstd_level", self.zstd_level, 1, 22)
        _range("zstd_window_log", self.zstd_window_log, 10, 27)


def _range(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")


class IdentityEncoder:
    """No compression: what the client gets when it offers nothing we speak."""

    name = "identity"

    def encode(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""

    def encode_flush(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        return b""


# Identity keeps no state: every connection without compression shares this one (an object per stream would be
# ~70 bytes that every idle identity stream holds).
IDENTITY = IdentityEncoder()


class BrotliEncoder:
    """Streaming Brotli; ``lgwin`` must exceed one full render for re-renders to compress to their diff."""

    name = "br"

    def __init__(self, settings: CodecSettings) -> None:
        self._c: Any = brotli.Compressor(
            mode=brotli.MODE_TEXT, quality=settings.brotli_quality, lgwin=settings.brotli_lgwin
        )

    def encode(self, data: bytes) -> bytes:
        return bytes(self._c.process(data))

    def flush(self) -> bytes:
        return bytes(self._c.flush())

    def encode_flush(self, data: bytes) -> bytes:
        out = self._c.process(data)
        tail = self._c.flush()
        return out + tail if out else bytes(tail)

    def finish(self) -> bytes:
        return bytes(self._c.finish())


class GzipEncoder:
    """Streaming gzip with ``Z_SYNC_FLUSH`` per event (the 32 KiB deflate window is its context)."""

    name = "gzip"

    def __init__(self, settings: CodecSettings) -> None:
        self._c = zlib.compressobj(settings.gzip_level, zlib.DEFLATED, 16 + settings.gzip_wbits)

    def encode(self, data: bytes) -> bytes:
        return self._c.compress(data)

    def flush(self) -> bytes:
        return self._c.flush(zlib.Z_SYNC_FLUSH)

    def encode_flush(self, data: bytes) -> bytes:
        return self._c.compress(data) + self._c.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._c.flush(zlib.Z_FINISH)


class ZstdEncoder:
    """Streaming zstd, one flushed block per event."""

    name = "zstd"

    def __init__(self, settings: CodecSettings) -> None:
        assert _zstd is not None
        params = _zstd.ZstdCompressionParameters.from_level(
            settings.zstd_level, window_log=settings.zstd_window_log
        )
        self._c: Any = _zstd.ZstdCompressor(compression_params=params).compressobj()
        self._block = _zstd.COMPRESSOBJ_FLUSH_BLOCK

    def encode(self, data: bytes) -> bytes:
        return bytes(self._c.compress(data))

    def flush(self) -> bytes:
        return bytes(self._c.flush(self._block))

    def encode_flush(self, data: bytes) -> bytes:
        return bytes(self._c.compress(data) + self._c.flush(self._block))

    def finish(self) -> bytes:
        return bytes(self._c.flush())


EncoderFactory = Callable[[CodecSettings], StreamEncoder]

ENCODERS: dict[str, EncoderFactory] = {
    "br": BrotliEncoder,
    "gzip": GzipEncoder,
    "identity": lambda _settings: IDENTITY,
}
if _zstd is not None:
    ENCODERS["zstd"] = ZstdEncoder

DEFAULT_PREFERENCE: tuple[str, ...] = ("br", "zstd", "gzip", "identity")


def create_encoder(name: str, settings: CodecSettings | None = None) -> StreamEncoder:
    """A fresh encoder for one connection."""
    try:
        factory = ENCODERS[name]
    except KeyError:
        raise ValueError(f"unknown encoding {name!r}; available: {', '.join(sorted(ENCODERS))}") from None
    return factory(settings or CodecSettings())


def parse_accept_encoding(header: str) -> dict[str, float]:
    """``"br;q=1.0, gzip;q=0.5, *;q=0"`` -> ``{"br": 1.0, "gzip": 0.5, "*": 0.0}``; malformed parts are skipped."""
    result: dict[str, float] = {}
    for part in header.split(","):
        token, *params = (p.strip() for p in part.split(";"))
        token = token.lower()
        if not token:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = -1.0
                break
        if 0.0 <= q <= 1.0:
            result[token] = max(q, result.get(token, 0.0)) if token in result else q
    return result


def negotiate(
    accept_encoding: str | None,
    preference: Iterable[str] = DEFAULT_PREFERENCE,
    available: Mapping[str, object] = ENCODERS,
) -> str:
    """Pick the content coding for a stream.

    The client's q-values rank first (RFC 9110 §12.5.3: ``q=0`` excludes, ``*`` stands for every coding not
    named); the server's ``preference`` order breaks ties and limits the choice. ``identity`` is the answer when
    nothing else fits: an SSE client that refuses even identity is better served uncompressed than not at all.
    """
    if not accept_encoding:
        return "identity"
    offered = parse_accept_encoding(accept_encoding)
    star = offered.get("*")
    best, best_q = "identity", -1.0
    for name in preference:
        if name not in available:
            continue
        q = offered.get(name, star if star is not None and name != "identity" else None)
        if name == "identity" and q is None:
            q = star if star is not None else 0.001  # acceptable unless excluded, but least preferred
        if q is None or q <= 0.0:
            continue
        if q > best_q:
            best, best_q = name, q
    return best


def acceptable(
    accept_encoding: str | None,
    preference: Iterable[str] = DEFAULT_PREFERENCE,
    available: Mapping[str, object] = ENCODERS,
) -> frozenset[str]:
    """Every coding of ``preference`` the client accepts (q > 0); identity is always in the set.

    The memory budget needs this to know which cheaper codec a downgraded connection may fall back to.
    """
    offered = parse_accept_encoding(accept_encoding or "")
    star = offered.get("*")
    found = {"identity"}
    for name in preference:
        q = offered.get(name, star if name != "identity" else None)
        if name in available and q is not None and q > 0.0:
            found.add(name)
    return frozenset(found)
