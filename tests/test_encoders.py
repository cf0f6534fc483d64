"""Tests for ``gateway.core.encoders``: negotiation, per-event flushing and the compression context window.

The two properties the gateway depends on are checked with the *standard* streaming decoders a client uses
(not with the encoder's own library in one shot):
- every event is decodable as soon as its ``encode_flush`` output arrives, or a live stream stalls;
- one encoder per connection keeps its window across events, so a re-render compresses to (about) its diff.
"""

from __future__ import annotations

import random
import statistics
import zlib
from typing import Any

import brotli
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.encoders import (
    DEFAULT_PREFERENCE,
    ENCODERS,
    CodecSettings,
    StreamEncoder,
    create_encoder,
    negotiate,
    parse_accept_encoding,
)
from gateway.core.sse import encode_message

pytestmark = pytest.mark.unit

# --- negotiation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "identity"),
        ("", "identity"),
        ("gzip, deflate, br, zstd", "br"),  # Chromium
        ("gzip, deflate, br", "br"),  # Firefox / Safari
        ("gzip, deflate", "gzip"),
        ("deflate", "identity"),  # nothing we speak: identity is always acceptable unless excluded
        ("gzip;q=1, br;q=0.5", "gzip"),  # the client's q-values rank before the server's preference
        ("br;q=0.5, gzip;q=0.5", "br"),  # a tie goes to the server's preference
        ("gzip, zstd", "zstd"),
        ("zstd;q=0.9, gzip", "gzip"),
        ("br;q=0, *", "zstd"),  # "*" stands for every coding not named, br stays excluded
        ("*", "br"),
        ("*;q=0", "identity"),
        ("identity;q=0, gzip;q=0", "identity"),  # refusing everything still gets a readable stream
        ("identity", "identity"),
        ("br;q=abc, gzip", "gzip"),  # malformed q: that coding is ignored, the rest still counts
        ("br;q=2, gzip", "gzip"),  # q above 1 is malformed too
        ("br;q=-1, gzip", "gzip"),
        ("br;q=nan, gzip", "gzip"),
        ("BR", "br"),
        ("GZIP;Q=0.5, Br;Q=0.4", "gzip"),
        (" gzip ; q=0.3 ,  br ; q=0.2 ", "gzip"),
        (",,br,,", "br"),
    ],
)
def test_negotiate(header: str | None, expected: str) -> None:
    assert negotiate(header) == expected


@pytest.mark.parametrize("header", ["br", "br, gzip", "*", "br;q=1, gzip;q=0.1", "zstd, br", "BR, *;q=0.5"])
def test_preference_without_br_never_yields_br(header: str) -> None:
    """The operator's list of encodings limits the choice whatever the client asks for."""
    preference = ("zstd", "gzip", "identity")
    assert negotiate(header, preference) != "br"
    assert negotiate(header, ("gzip",)) in ("gzip", "identity")


def test_unavailable_codec_is_never_chosen() -> None:
    """A codec whose library is missing is absent from the registry and must not be offered."""
    available = {name: ENCODERS[name] for name in ("gzip", "identity")}
    assert negotiate("br, zstd", available=available) == "identity"
    assert negotiate("br, zstd, gzip;q=0.1", available=available) == "gzip"


def test_default_preference_names_registered_encoders() -> None:
    """Negotiation can only return registered names; every preferred one must be creatable."""
    assert set(DEFAULT_PREFERENCE) <= set(ENCODERS)  # zstd included: the dev extras install zstandard


def test_parse_accept_encoding() -> None:
    assert parse_accept_encoding("br;q=1.0, gzip;q=0.5, *;q=0") == {"br": 1.0, "gzip": 0.5, "*": 0.0}
    assert parse_accept_encoding("br;q=x") == {}
    assert parse_accept_encoding("gzip;level=1;q=0.2") == {"gzip": 0.2}


# --- every flush decodes completely -----------------------------------------------------------------------


class _StreamDecoder:
    """The client side of one connection: a standard streaming decoder for one content coding."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._d: Any
        if name == "br":
            self._d = brotli.Decompressor()
        elif name == "gzip":
            self._d = zlib.decompressobj(16 + 15)
        elif name == "zstd":
            self._d = zstandard.ZstdDecompressor().decompressobj()
        else:
            assert name == "identity"
            self._d = None

    def feed(self, data: bytes) -> bytes:
        if self._d is None:
            return data
        if self.name == "br":
            return bytes(self._d.process(data))
        return bytes(self._d.decompress(data))

    def ended_cleanly(self) -> bool:
        """The decoder saw a complete stream end, and nothing trailing it."""
        if self.name == "br":
            return bool(self._d.is_finished())
        if self.name in ("gzip", "zstd"):
            return bool(self._d.eof) and self._d.unused_data == b""
        return True


# (encoding, settings) pairs: every registered encoder with a spread of its own tuning. Brotli gets the full
# quality x window grid because its window is the feature the gateway is built around.
_CASES: list[tuple[str, CodecSettings]] = [
    *(("br", CodecSettings(brotli_quality=q, brotli_lgwin=w)) for q in (0, 4, 11) for w in (10, 16, 22)),
    ("gzip", CodecSettings(gzip_level=1, gzip_wbits=9)),
    ("gzip", CodecSettings(gzip_level=6)),
    ("gzip", CodecSettings(gzip_level=9, gzip_wbits=15)),
    ("zstd", CodecSettings(zstd_level=1, zstd_window_log=10)),
    ("zstd", CodecSettings(zstd_level=3, zstd_window_log=17)),
    ("zstd", CodecSettings(zstd_level=12, zstd_window_log=23)),  # high levels cost ~40 ms per encoder
    ("identity", CodecSettings()),
]


def test_cases_cover_every_encoder() -> None:
    """A newly registered encoder must be added to the flush property below."""
    assert {name for name, _ in _CASES} == set(ENCODERS)


# Chunks mix compressible text, incompressible bytes, SSE frames and empty events (a flush with no input).
_chunk = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    st.builds(lambda s, n: (s * n).encode(), st.text(min_size=1, max_size=8), st.integers(1, 400)),
    st.text(max_size=80).map(lambda t: encode_message(t, event="patch", id="1")),
)


def _case_id(name: str, codec: CodecSettings) -> str:
    if name == "br":
        return f"br-q{codec.brotli_quality}-lgwin{codec.brotli_lgwin}"
    if name == "gzip":
        return f"gzip-level{codec.gzip_level}-wbits{codec.gzip_wbits}"
    if name == "zstd":
        return f"zstd-level{codec.zstd_level}-wlog{codec.zstd_window_log}"
    return name


@pytest.mark.parametrize(("name", "codec"), _CASES, ids=[_case_id(n, c) for n, c in _CASES])
@settings(max_examples=50, deadline=None)
@given(chunks=st.lists(_chunk, max_size=8))
def test_each_flush_decodes_completely(name: str, codec: CodecSettings, chunks: list[bytes]) -> None:
    """After feeding event i's bytes, the decoder has produced exactly event i: nothing held back."""
    encoder: StreamEncoder = create_encoder(name, codec)
    assert encoder.name == name
    decoder = _StreamDecoder(name)
    for i, chunk in enumerate(chunks):
        assert decoder.feed(encoder.encode_flush(chunk)) == chunk, f"event {i} was not fully decodable"
    assert decoder.feed(encoder.finish()) == b""
    assert decoder.ended_cleanly()


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_encode_then_flush_equals_encode_flush(name: str) -> None:
    """The split API (``encode`` several times, then ``flush``) is decodable at the flush, like the hot path."""
    encoder = create_encoder(name)
    decoder = _StreamDecoder(name)
    out = encoder.encode(b"data: one\n\n") + encoder.encode(b"data: two\n\n")
    assert decoder.feed(out + encoder.flush()) == b"data: one\n\ndata: two\n\n"
    assert decoder.feed(encoder.finish()) == b""
    assert decoder.ended_cleanly()


# --- the context window ---------------------------------------------------------------------------------------


def _render(done: set[int]) -> str:
    """A ~15 KB todo-list render whose item texts are pseudo-random, so it does not compress well by itself.

    Seeded generation keeps the sizes reproducible; the point is that an encoder can only make a re-render
    small by referring back to the previous render, which needs that render inside its window.
    """
    rng = random.Random(1234)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(400)]
    rows = []
    for i in range(110):
        text = " ".join(rng.choice(words) for _ in range(4))
        state = " done" if i in done else ""
        checked = " checked" if i in done else ""
        rows.append(
            f'<li class="todo{state}" data-id="{i}"><input type="checkbox"{checked}>'
            f'<label>{text}</label><button class="destroy"></button></li>\n'
        )
    left = 110 - len(done)
    return (
        f'<section class="todoapp"><ul class="todo-list">\n{"".join(rows)}</ul>'
        f'<footer><span class="todo-count">{left} left</span></footer></section>'
    )


def _event_sizes(lgwin: int) -> list[int]:
    """Compressed size of 20 successive renders, each toggling one more item, through ONE encoder."""
    encoder = create_encoder("br", CodecSettings(brotli_quality=4, brotli_lgwin=lgwin))
    decoder = _StreamDecoder("br")
    sizes = []
    done: set[int] = set()
    for k in range(20):
        done.add(k * 5)
        frame = encode_message(_render(done), event="patch", id=str(k + 1))
        out = encoder.encode_flush(frame)
        assert decoder.feed(out) == frame  # small only counts if it still decodes to the whole render
        sizes.append(len(out))
    return sizes


def test_render_is_about_15_kb() -> None:
    assert 14_000 <= len(encode_message(_render(set()))) <= 16_500


def test_brotli_window_holding_the_previous_render_sends_only_the_diff() -> None:
    """lgwin 16 (64 KiB) holds a whole render: events 2..20 cost tens of bytes, not kilobytes."""
    sizes = _event_sizes(16)
    assert sizes[0] > 1_000  # the first render has nothing to refer to
    assert statistics.median(sizes[1:]) < 200


def test_brotli_window_smaller_than_a_render_cannot_reference_it() -> None:
    """lgwin 10 (1 KiB) cannot reach the previous render, so every event costs about a first render."""
    sizes = _event_sizes(10)
    assert statistics.median(sizes[1:]) > 1_000


# --- settings and the registry ----------------------------------------------------------------------------

_LIMITS = {
    "brotli_quality": (0, 11),
    "brotli_lgwin": (10, 24),
    "gzip_level": (1, 9),
    "gzip_wbits": (9, 15),
    "zstd_level": (1, 22),
    "zstd_window_log": (10, 27),
}


@pytest.mark.parametrize("field", sorted(_LIMITS))
def test_codec_settings_bounds(field: str) -> None:
    """Both ends of each range are accepted; one past either end, a bool or a float is refused by name."""
    low, high = _LIMITS[field]
    CodecSettings(**{field: low})
    CodecSettings(**{field: high})
    bad_values: list[Any] = [low - 1, high + 1, True, float(low)]
    for bad in bad_values:
        kwargs: dict[str, Any] = {field: bad}
        with pytest.raises(ValueError, match=rf"^{field} must be an integer from {low} to {high}, got "):
            CodecSettings(**kwargs)


def test_create_encoder_unknown_name_lists_available() -> None:
    with pytest.raises(ValueError, match="unknown encoding 'deflate'") as info:
        create_encoder("deflate")
    for name in ENCODERS:
        assert name in str(info.value)


def test_create_encoder_gives_independent_encoders() -> None:
    """One encoder per connection: two connections must not share a compressor state."""
    a, b = create_encoder("br"), create_encoder("br")
    assert a is not b
    da, db = _StreamDecoder("br"), _StreamDecoder("br")
    assert da.feed(a.encode_flush(b"data: x\n\n")) == b"data: x\n\n"
    assert db.feed(b.encode_flush(b"data: y\n\n")) == b"data: y\n\n"
