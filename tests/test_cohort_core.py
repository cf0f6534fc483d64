"""Compression cohorts, sans-IO (``gateway.core.cohort``): what members write decodes byte-exactly with the
reference decoders, whatever the order in which they join, heartbeat, end with their own goodbye or are cut, and
however the bytes are split on the way."""

from __future__ import annotations

import zlib

import brotli
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.cohort import MAX_OPENING, Cohort, Seat, brotli_raw, deflate_stored, zstd_raw
from gateway.core.encoders import CodecSettings, create_encoder
from gateway.core.sse import comment, retry_frame
from gateway.core.stream import HEARTBEAT

pytestmark = pytest.mark.unit

CODECS = ["br", "zstd", "gzip"]


class Decoder:
    """A client's decoder of one codec, fed piece by piece."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.out = bytearray()
        if name == "br":
            self._br = brotli.Decompressor()
        elif name == "zstd":
            self._zstd = zstandard.ZstdDecompressor().decompressobj()
        else:
            self._gzip = zlib.decompressobj(16 + zlib.MAX_WBITS)  # checks the trailer's CRC-32 and length

    def feed(self, data: bytes) -> None:
        if self.name == "br":
            self.out += self._br.process(data)
        elif self.name == "zstd":
            self.out += self._zstd.decompress(data)
        else:
            self.out += self._gzip.decompress(data)

    @property
    def finished(self) -> bool:
        if self.name == "br":
            return bool(self._br.is_finished())
        return bool(self._zstd.eof if self.name == "zstd" else self._gzip.eof)


def render(n: int) -> bytes:
    """A view's render of version ``n``: mostly what the previous one held, as a todo list is."""
    items = "".join(f"<li id=todo-{i}>todo number {i} {'done' if (i * n) % 3 == 0 else 'open'}</li>"
                    for i in range(n % 40 + 5))
    return f"id: {n}\ndata: <ul>{items}</ul>\n\n".encode()


@pytest.mark.parametrize("name", CODECS)
def test_raw_framing_carries_any_bytes_after_a_flush_and_ends_the_stream(name: str) -> None:
    """A goodbye of any size (Brotli meta-blocks hold 2^16, 2^20 or 2^24 bytes; zstd raw blocks are cut to the
    smallest legal window; deflate stored blocks hold 65,535) follows a flushed chunk and ends a stream the decoder
    calls finished (for gzip: with the CRC-32 and length of all of it, which zlib checks)."""
    for size in (1, 2, 1 << 10, (1 << 10) + 1, 0xFFFF, 1 << 16, (1 << 16) + 1, 1 << 20, (1 << 20) + 7):
        encoder = create_encoder(name)
        head = encoder.encode_flush(render(1))
        seat = Seat(name, zlib.crc32(render(1)), len(render(1)))
        extra = bytes(range(256)) * (size // 256) + bytes(size % 256)
        decoder = Decoder(name)
        decoder.feed(head + seat.tail(extra) + seat.finish())
        assert bytes(decoder.out) == render(1) + extra
        assert decoder.finished


def test_raw_framing_headers() -> None:
    """The exact headers: Brotli ISLAST=0, MNIBBLES, MLEN-1, ISUNCOMPRESSED=1, padded to the byte; zstd
    Last_Block=0, Raw, Block_Size."""
    assert brotli_raw(b"x") == bytes([0x00, 0x00, 0x08]) + b"x"  # bit 19 (after 1+2+16 bits): ISUNCOMPRESSED
    assert zstd_raw(b"abc") == bytes([3 << 3, 0, 0]) + b"abc"
    assert deflate_stored(b"ab") == bytes([0, 2, 0, 0xFD, 0xFF]) + b"ab"  # BFINAL=0 BTYPE=00, LEN, NLEN
    with pytest.raises(ValueError, match="no raw framing"):
        Seat("identity")
    with pytest.raises(ValueError, match="cannot share"):
        Cohort(create_encoder("identity"), CodecSettings(), object(), b"x", 0.0)


# A member's life, as the steps fan-out and the stream take: join (while the cohort is open to newcomers), a render
# for every member, a heartbeat, a member's end with its goodbye, a member cut half-way through a write.
Step = tuple[str, int]
steps = st.lists(st.tuples(st.sampled_from(["join", "render", "beat", "bye", "cut"]), st.integers(0, 7)),
                 min_size=1, max_size=40)


@pytest.mark.parametrize("name", CODECS)
@settings(max_examples=120, deadline=None)
@given(script=steps, split=st.integers(1, 97))
def test_every_member_decodes_exactly_what_it_was_sent(name: str, script: list[Step], split: int) -> None:
    """Each member's wire bytes, fed to the reference decoder in pieces of ``split`` bytes (and the first member's
    one byte at a time), decode to exactly the plain SSE text of its life: the opening (and the heartbeats it was
    sent on joining), every chunk since, its own goodbye. A cut member's bytes decode to an exact prefix."""
    version = 1
    frame = object()
    opening = retry_frame(3000) + render(version)
    cohort = Cohort(create_encoder(name), CodecSettings(), frame, opening, 0.0)
    plain_opening = bytearray(opening)
    everything = bytearray(opening)  # all the cohort encoded: its CRC-32 and length are what a gzip trailer needs
    members: dict[int, tuple[bytearray, bytearray]] = {0: (bytearray(cohort.opened()), bytearray(opening))}
    ended: list[tuple[bytes, bytes, bool]] = []
    next_id = 1
    for action, arg in script:
        if action == "join":
            if cohort.joinable(name, CodecSettings(), frame):
                members[next_id] = (bytearray(cohort.opened()), bytearray(plain_opening))
                next_id += 1
        elif action == "render":
            version += 1
            data = render(version)
            chunk = cohort.append(data, float(version))
            everything += data
            frame = object()
            for wire, plain in members.values():
                wire += chunk
                plain += data
        elif action == "beat":
            chunk = cohort.append(HEARTBEAT, 0.0, heartbeat=True)
            everything += HEARTBEAT
            if cohort.opening is not None:
                plain_opening += HEARTBEAT
            for wire, plain in members.values():
                wire += chunk
                plain += HEARTBEAT
        elif members:
            key = sorted(members)[arg % len(members)]
            wire, plain = members.pop(key)
            if action == "bye":
                goodbye = retry_frame(1000 + arg) + comment("draining")
                seat = Seat(name, zlib.crc32(plain), len(plain))  # as the stream keeps them (Frame.check)
                ended.append((bytes(wire + seat.tail(goodbye) + seat.finish()), bytes(plain + goodbye), True))
            else:  # cut: the connection ends in the middle of its last write; nothing more is framed
                ended.append((bytes(wire[:len(wire) - arg]) if arg < len(wire) else b"", bytes(plain), False))
    ended += [(bytes(wire), bytes(plain), False) for wire, plain in members.values()]
    assert cohort.length == len(everything)
    if name == "gzip":
        assert cohort.check == zlib.crc32(everything)
    for index, (wire_bytes, plain_bytes, finished) in enumerate(ended):
        decoder = Decoder(name)
        step = 1 if index == 0 else split
        for at in range(0, len(wire_bytes), step):
            decoder.feed(wire_bytes[at:at + step])
        if finished:
            assert bytes(decoder.out) == plain_bytes
            assert decoder.finished
        else:
            assert plain_bytes.startswith(bytes(decoder.out))


@pytest.mark.parametrize("name", CODECS)
def test_members_write_what_a_connection_of_their_own_would_decode_to(name: str) -> None:
    """The shared chunks are the bytes one connection's own encoder would have produced for the same inputs:
    sharing changes who compresses, not what is on the wire."""
    opening = retry_frame(3000) + render(1)
    cohort = Cohort(create_encoder(name), CodecSettings(), object(), opening, 0.0)
    alone = create_encoder(name)
    assert cohort.opened() == alone.encode_flush(opening)
    for n in range(2, 30):
        assert cohort.append(render(n), float(n)) == alone.encode_flush(render(n))


def test_newcomers_join_only_before_the_second_render() -> None:
    frame = object()
    cohort = Cohort(create_encoder("br"), CodecSettings(), frame, b"data: 1\n\n", 0.0)
    assert cohort.joinable("br", CodecSettings(), frame)
    assert not cohort.joinable("br", CodecSettings(brotli_quality=5), frame)  # other settings, other state
    assert not cohort.joinable("zstd", CodecSettings(), frame)
    assert not cohort.joinable("br", CodecSettings(), object())  # another render
    for _ in range(MAX_OPENING - 1):
        cohort.append(HEARTBEAT, 1.0, heartbeat=True)
    assert cohort.joinable("br", CodecSettings(), frame)  # heartbeats are replayed to newcomers
    cohort.append(HEARTBEAT, 1.0, heartbeat=True)
    assert not cohort.joinable("br", CodecSettings(), frame)  # but not without end
    other = Cohort(create_encoder("br"), CodecSettings(), frame, b"data: 1\n\n", 0.0)
    other.append(b"data: 2\n\n", 1.0)
    assert not other.joinable("br", CodecSettings(), frame)
    assert other.position == 2
