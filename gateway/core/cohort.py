"""Compression cohorts: the streams of a shared view that have carried the same bytes share one compressor.

A streaming compressor's output is a function of everything it was fed: two connections whose encoders were
created with the same settings and fed the same inputs, in the same order, with the same flushes, hold the same
state and produce the same bytes. The subscribers of a shared view are fed the same renders, so instead of one
compressor per connection (a 16 KB render costs ~130 µs of Brotli *per subscriber*), a cohort compresses each
render once and every member writes the same compressed chunk.

When a stream may join: only where its decoder will hold exactly what the cohort's encoder has produced. A new
connection starts from an empty decoder, so it joins a cohort whose whole output so far is the opening it would
have been sent anyway (the ``retry:`` hint and the same render of the same version, from the same codec
settings), possibly followed by the cohort's heartbeats (comments, harmless to repeat): it is sent that output
and is then indistinguishable from the members. Once a cohort has encoded a second render, nobody new can join it;
a connection arriving later starts (or joins) a cohort of the version it finds.

Why a member never leaves while it lives: the compressor cannot be copied (neither the Brotli nor the zstd binding
can fork an encoder's state), so a member whose content would differ from the cohort's (a conflated version
skipped, a heartbeat of its own) could not continue with a correct encoder. So members receive every chunk, in
order (no conflation: a compressed re-render is tens of bytes, and the same bytes object is shared by every
mailbox), heartbeats are the cohort's (one encode, fanned out like a render), and a member that falls too far
behind is cut like any slow consumer and reconnects into a fresh cohort.

How a member ends anyway: each chunk ends with a flush, which leaves the compressed stream byte-aligned at a block
boundary. Both formats can then carry bytes the encoder never saw: an uncompressed meta-block (Brotli, RFC 7932
§9.2) or a raw block (zstd, RFC 8878 §3.1.1.2), and can be ended by a final empty block. A member's goodbye (its own
jittered ``retry:``) is such a raw block followed by the end marker: its decoder's window grows by bytes the cohort
never saw, which is fine because nothing follows. gzip works the same way with stored blocks (RFC 1951 §3.2.4),
except that its trailer holds the CRC-32 and length of everything that member received: a gzip cohort keeps both
running over its input, each chunk carries them as of its end (``Frame.check``), and a member's seat keeps those of
the last chunk it wrote. Identity needs no cohort: its bytes are the render, shared already.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

from gateway.core.encoders import IdentityEncoder, StreamEncoder

SHAREABLE = frozenset({"br", "zstd", "gzip"})
MAX_OPENING = 32  # chunks (the opening and heartbeats) a cohort keeps for newcomers; past it, nobody new joins

_BROTLI_END = b"\x03"  # ISLAST=1, ISLASTEMPTY=1, the rest of the byte zero: an empty last meta-block
_ZSTD_END = b"\x01\x00\x00"  # Last_Block=1, Block_Type=Raw, Block_Size=0
_BROTLI_RAW_MAX = 1 << 24  # MLEN of a meta-block holds at most 6 nibbles
_ZSTD_RAW_SAFE = 1 << 10  # a block may not exceed the frame's window, which is at least 1 KiB
_STORED_MAX = 0xFFFF  # bytes a deflate stored block holds
_DEFLATE_END = b"\x01\x00\x00\xff\xff"  # an empty stored block with BFINAL set


def brotli_raw(data: bytes) -> bytes:
    """``data`` as uncompressed Brotli meta-blocks, to follow a flush (byte-aligned) in the same stream."""
    out = bytearray()
    for at in range(0, len(data), _BROTLI_RAW_MAX):
        piece = data[at:at + _BROTLI_RAW_MAX]
        mlen = len(piece) - 1
        nibbles = 4 if mlen < 1 << 16 else 5 if mlen < 1 << 20 else 6
        # ISLAST=0 (1 bit), MNIBBLES-4 (2 bits), MLEN-1 (4 bits per nibble), ISUNCOMPRESSED=1 (1 bit), then zero
        # bits up to the byte boundary and the bytes themselves.
        bits = (nibbles - 4) << 1 | mlen << 3 | 1 << (3 + 4 * nibbles)
        width = (3 + 4 * nibbles + 1 + 7) // 8
        out += bits.to_bytes(width, "little") + piece
    return bytes(out)


def zstd_raw(data: bytes) -> bytes:
    """``data`` as raw zstd blocks, to follow a flushed block in the same frame."""
    out = bytearray()
    for at in range(0, len(data), _ZSTD_RAW_SAFE):
        piece = data[at:at + _ZSTD_RAW_SAFE]
        out += struct.pack("<I", len(piece) << 3)[:3] + piece
    return bytes(out)


def deflate_stored(data: bytes) -> bytes:
    """``data`` as deflate stored blocks (not final), to follow a ``Z_SYNC_FLUSH`` (byte-aligned)."""
    out = bytearray()
    for at in range(0, len(data), _STORED_MAX):
        piece = data[at:at + _STORED_MAX]
        out += struct.pack("<BHH", 0, len(piece), len(piece) ^ 0xFFFF) + piece
    return bytes(out)


def gzip_end(check: int, length: int) -> bytes:
    """The end of a gzip member: a final empty stored block, then the CRC-32 and length (mod 2^32) of its content."""
    return _DEFLATE_END + struct.pack("<II", check & 0xFFFFFFFF, length & 0xFFFFFFFF)


_TAILS: dict[str, tuple[Callable[[bytes], bytes], bytes]] = {
    "br": (brotli_raw, _BROTLI_END),
    "zstd": (zstd_raw, _ZSTD_END),
    "gzip": (deflate_stored, b""),
}


class Cohort:
    """One shared compressor and what it has produced so far, for the streams of one view that joined it."""

    __slots__ = ("_crc", "check", "encoder", "frame", "last_write", "length", "members", "opening", "position",
                 "settings")

    def __init__(self, encoder: StreamEncoder, settings: object, frame: object, opening: bytes, now: float) -> None:
        if encoder.name not in SHAREABLE:
            raise ValueError(f"{encoder.name!r} streams cannot share an encoder (shareable: {sorted(SHAREABLE)})")
        self.encoder = encoder
        self.settings = settings  # the codec settings every member's own encoder would have had
        self.frame = frame  # the render the cohort last encoded (its opening's, then each change's)
        self.members = 0
        self.last_write = now
        # gzip's trailer needs the CRC-32 and length of everything encoded (the others: never read)
        self._crc = encoder.name == "gzip"
        self.check = zlib.crc32(opening) if self._crc else 0
        self.length = len(opening)
        first = encoder.encode_flush(opening)
        self.opening: list[bytes] | None = [first]  # everything encoded so far, while newcomers may still join
        self.position = 1  # chunks encoded so far; a member's frames carry their chunk's position as key

    def joinable(self, name: str, settings: object, frame: object) -> bool:
        """A new stream of codec ``name`` and ``settings`` whose opening is ``frame`` (a view's render; for a hub
        subscription, the bus version it starts after) may join: this cohort has encoded nothing but that same
        opening (and heartbeats) with the same settings."""
        return (self.opening is not None and (frame is self.frame or frame == self.frame)
                and name == self.encoder.name and settings == self.settings)

    def opened(self) -> bytes:
        """What a newcomer is sent first: everything the cohort has produced (it then stands where all do)."""
        assert self.opening is not None
        return self.opening[0] if len(self.opening) == 1 else b"".join(self.opening)

    def append(self, data: bytes, now: float, *, heartbeat: bool = False) -> bytes:
        """Encode ``data`` once for every member: the chunk each of them is to write next."""
        chunk = self.encoder.encode_flush(data)
        if self._crc:
            self.check = zlib.crc32(data, self.check)
        self.length += len(data)
        self.position += 1
        self.last_write = now
        opening = self.opening
        if opening is not None:
            if heartbeat and len(opening) < MAX_OPENING:
                opening.append(chunk)
            else:
                self.opening = None  # a second render (or too long a prefix): the cohort is closed to newcomers
        return chunk


class Seat(IdentityEncoder):
    """A member's encoder: the bytes it is handed are the cohort's chunks, already compressed, and go out as they
    are (identity's passthrough); only its goodbye is its own (``tail``), framed raw after the last chunk and
    followed by the end (``finish``). ``check`` and ``length``: the CRC-32 and size of everything it has sent
    (gzip's trailer needs them), kept by the stream as it writes chunks."""

    __slots__ = ("check", "length", "name")

    def __init__(self, name: str, check: int = 0, length: int = 0) -> None:
        if name not in _TAILS:
            raise ValueError(f"no raw framing for {name!r}")
        self.name = name
        self.check = check
        self.length = length

    def tail(self, data: bytes) -> bytes:
        """``data`` framed uncompressed in the shared stream (after a chunk: always at a block boundary)."""
        if self.name == "gzip":
            self.check = zlib.crc32(data, self.check)
        self.length += len(data)
        return _TAILS[self.name][0](data)

    def finish(self) -> bytes:
        if self.name == "gzip":
            return gzip_end(self.check, self.length)
        return _TAILS[self.name][1]
