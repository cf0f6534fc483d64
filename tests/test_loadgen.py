"""Tests for the benchmark load generator (``benchmarks/loadgen``): the measuring instrument is tested first.

The parser, the decoders and the chunked-body parser are fed byte streams whole, split in two at every byte and
one byte at a time, since a network read can end anywhere. The parser is also checked against the gateway's own
parser on random streams (the two were written independently, so agreement means something). Then the whole
generator runs against a real gateway: h1, h2c, h2 over TLS and HTTP/3, Brotli and identity, every event accounted
for.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import brotli
import orjson
import pylsqpack
import pytest
import zstandard
from aioquic import tls
from aioquic.h3.connection import FrameType, encode_frame
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import StreamDataReceived
from h2.config import H2Configuration
from h2.connection import H2Connection
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.loadgen import h2 as h2_module
from benchmarks.loadgen.decoders import DECODERS, make_decoder
from benchmarks.loadgen.fleet import Fleet, LatencyRecorder, cpu_seconds, pin_to_cpu, raise_fd_limit, run
from benchmarks.loadgen.h1 import ChunkedParser, H1Stream, build_request
from benchmarks.loadgen.h2 import DEFAULT_STREAM_WINDOW, H2Client, client_ssl_context
from benchmarks.loadgen.h3 import H3Client, client_quic_configuration, open_h3_connection
from benchmarks.loadgen.h3 import datagrams_to_send as h3_datagrams_to_send
from benchmarks.loadgen.latency import StreamStats, stamp
from benchmarks.loadgen.publisher import Publisher
from benchmarks.loadgen.sse import SSEEvent, SSEParser
from benchmarks.loadgen.stream import StreamState
from gateway.core import sse as gateway_sse
from gateway.core.encoders import ENCODERS, CodecSettings
from tests.support.quicpair import QuicPair
from tests.support.server import HUB_TOKEN, Server

# --- the SSE parser ------------------------------------------------------------------------------------------

M = "message"

# (stream, expected events, last_event_id, retry, comments) after the whole stream.
CASES: list[tuple[str, bytes, list[SSEEvent], str | None, int | None, int]] = [
    ("simple", b"data: hello\n\n", [SSEEvent("hello", M, None)], None, None, 0),
    ("multi-line data", b"data: a\ndata: b\ndata\n\n", [SSEEvent("a\nb\n", M, None)], None, None, 0),
    ("no space", b"data:x\n\n", [SSEEvent("x", M, None)], None, None, 0),
    ("one space stripped", b"data:  two\n\n", [SSEEvent(" two", M, None)], None, None, 0),
    ("colon in value", b"data: a:b: c\n\n", [SSEEvent("a:b: c", M, None)], None, None, 0),
    ("field without colon", b"data\n\n", [SSEEvent("", M, None)], None, None, 0),
    ("two empty data lines", b"data\ndata:\n\n", [SSEEvent("\n", M, None)], None, None, 0),
    ("event type", b"event: tick\ndata: 1\n\ndata: 2\n\n",
     [SSEEvent("1", "tick", None), SSEEvent("2", M, None)], None, None, 0),
    ("empty event type", b"event:\ndata: x\n\n", [SSEEvent("x", M, None)], None, None, 0),
    ("no data: no event, type reset", b"event: a\n\nid: 3\n\ndata: x\n\n", [SSEEvent("x", M, "3")], "3", None, 0),
    ("id persists", b"id: 1\ndata: a\n\ndata: b\n\n", [SSEEvent("a", M, "1"), SSEEvent("b", M, "1")], "1", None, 0),
    ("id after data, same event", b"data: a\nid: 7\n\n", [SSEEvent("a", M, "7")], "7", None, 0),
    ("empty id resets", b"id: 1\ndata: a\n\nid\ndata: b\n\nid: 2\nid:\ndata: c\n\n",
     [SSEEvent("a", M, "1"), SSEEvent("b", M, None), SSEEvent("c", M, None)], None, None, 0),
    ("id with NUL ignored", b"id: 1\n\nid: a\x00b\ndata: x\n\n", [SSEEvent("x", M, "1")], "1", None, 0),
    ("retry", b"retry: 1500\n\n", [], None, 1500, 0),
    ("retry not digits", b"retry: 1500\nretry: 15a\nretry: -1\nretry:  10\nretry:\nretry: \xd9\xa1\n\n",
     [], None, 1500, 0),
    ("retry digits only", b"retry:0\nretry: 0042\n", [], None, 42, 0),
    ("comments", b": hi\n:\n:: x\ndata: x\n: after\n\n", [SSEEvent("x", M, None)], None, None, 4),
    ("heartbeat only", b": ping\n\n: ping\n\n", [], None, None, 2),
    ("unknown fields", b"foo: bar\nData: x\nDATA\n data: y\ndata: z\n\n", [SSEEvent("z", M, None)], None, None, 0),
    ("CRLF", b"data: a\r\ndata: b\r\n\r\n", [SSEEvent("a\nb", M, None)], None, None, 0),
    ("CR", b"data: a\rdata: b\r\rdata: c\r\r", [SSEEvent("a\nb", M, None), SSEEvent("c", M, None)], None, None, 0),
    ("mixed line ends", b"id: 1\r\ndata: a\rdata: b\n\r\ndata: c\r\n\n",
     [SSEEvent("a\nb", M, "1"), SSEEvent("c", M, "1")], "1", None, 0),
    ("CR CR LF", b"data: a\r\r\n", [SSEEvent("a", M, None)], None, None, 0),
    ("BOM", b"\xef\xbb\xbfdata: x\n\n", [SSEEvent("x", M, None)], None, None, 0),
    ("only the first BOM", b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\ndata: y\n\n", [SSEEvent("y", M, None)],
     None, None, 0),
    ("BOM-like start", b"\xef\xbbdata: x\n\ndata: y\n\n", [SSEEvent("y", M, None)], None, None, 0),
    ("UTF-8", "event: é\nid: ü\ndata: héllo € 😀 中文\n\n".encode(), [SSEEvent("héllo € 😀 中文", "é", "ü")],
     "ü", None, 0),
    ("invalid UTF-8", b"data: \xff\xfeok\xe2\x82\n\n", [SSEEvent("\ufffd\ufffdok\ufffd", M, None)], None, None, 0),
    ("unfinished event", b"data: a\n\ndata: b\n", [SSEEvent("a", M, None)], None, None, 0),
    ("unfinished line", b"data: a\n\ndata: b", [SSEEvent("a", M, None)], None, None, 0),
    ("blank lines", b"\n\n\r\n\rdata: a\n\n\n", [SSEEvent("a", M, None)], None, None, 0),
]


def _feed(chunks: list[bytes]) -> tuple[list[SSEEvent], SSEParser]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events, parser


@pytest.mark.unit
@pytest.mark.parametrize(("stream", "expected", "last_id", "retry", "comments"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_parser_known_streams(stream: bytes, expected: list[SSEEvent], last_id: str | None, retry: int | None,
                              comments: int) -> None:
    splits: list[list[bytes]] = [[stream]]
    splits += [[stream[:cut], stream[cut:]] for cut in range(len(stream) + 1)]  # (b"" feeds included)
    splits.append([stream[i:i + 1] for i in range(len(stream))])
    for chunks in splits:
        events, parser = _feed(chunks)
        assert events == expected, chunks
        assert (parser.last_event_id, parser.retry, parser.comments) == (last_id, retry, comments), chunks
        assert all(type(event) is SSEEvent for event in events)


@pytest.mark.unit
def test_parser_event_is_a_named_tuple() -> None:
    event = SSEParser().feed(b"id: 9\nevent: e\ndata: d\n\n")[0]
    assert (event.data, event.event, event.id) == ("d", "e", "9")
    assert event == ("d", "e", "9")


@pytest.mark.unit
def test_parser_long_line_in_many_chunks() -> None:
    """A 1 MB data line arriving in 1 KB reads: kept as a list of pieces, joined once (linear, not quadratic)."""
    parser = SSEParser()
    payload = b"x" * (1 << 20)
    stream = b"data: " + payload + b"\n\n"
    events = [e for i in range(0, len(stream), 1024) for e in parser.feed(stream[i:i + 1024])]
    assert events == [SSEEvent(payload.decode(), M, None)]


_FIELD = st.sampled_from(["data", "event", "id", "retry", "", "foo", "dat", "\ufeffdata"])
_SEP = st.sampled_from([":", ": ", ":  ", ""])
_VALUE = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=12),
    st.sampled_from(["", "0", "123", "12a", " 5", "a\0b", "é", "😀", "1"]),
)
_END = st.sampled_from([b"\n", b"\r\n", b"\r"])
_LINE = st.one_of(
    st.tuples(_FIELD, _SEP, _VALUE).map(lambda t: (t[0] + t[1] + t[2]).encode()),
    st.just(b""),  # a blank line: dispatch
    st.binary(max_size=6).filter(lambda b: b"\r" not in b and b"\n" not in b),  # invalid UTF-8 too
)


@st.composite
def _streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    lines = draw(st.lists(st.tuples(_LINE, _END), max_size=25))
    stream = (b"\xef\xbb\xbf" if draw(st.booleans()) else b"") + b"".join(line + end for line, end in lines)
    if draw(st.booleans()):
        stream += draw(st.binary(max_size=4))
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    return stream, cuts


@pytest.mark.unit
@settings(max_examples=400, deadline=None)
@given(_streams())
def test_parser_agrees_with_the_gateway_parser(case: tuple[bytes, list[int]]) -> None:
    stream, cuts = case
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    ours, parser = _feed(chunks)
    reference = gateway_sse.SSEParser()
    theirs = [e for chunk in chunks for e in reference.feed(chunk)]
    assert [tuple(e) for e in ours] == [(e.data, e.event, e.id) for e in theirs]
    assert parser.last_event_id == reference.last_event_id
    assert parser.retry == reference.retry
    assert parser.comments == len(reference.comments)
    assert _feed([stream])[0] == ours
    assert _feed([stream[i:i + 1] for i in range(len(stream))])[0] == ours  # every boundary, CR|LF included


# --- decoders ------------------------------------------------------------------------------------------------

EVENTS = [
    b"retry: 2000\n\n",
    b"id: 1\ndata: " + b'{"price": 1.08, "symbol": "EURUSD"}' * 3 + b"\n\n",
    b": heartbeat\n\n",
    "id: 2\ndata: héllo € 😀\n\n".encode(),
    b"id: 3\ndata: " + b'{"price": 1.09, "symbol": "EURUSD"}' * 3 + b"\n\n",
]


def _brotli(frames: list[bytes]) -> list[bytes]:
    c = brotli.Compressor(quality=4, lgwin=16)
    return [c.process(f) + c.flush() for f in frames]


def _gzip(frames: list[bytes]) -> list[bytes]:
    c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return [c.compress(f) + c.flush(zlib.Z_SYNC_FLUSH) for f in frames]


def _deflate(wbits: int) -> Callable[[list[bytes]], list[bytes]]:
    def encode(frames: list[bytes]) -> list[bytes]:
        c = zlib.compressobj(6, zlib.DEFLATED, wbits)
        return [c.compress(f) + c.flush(zlib.Z_SYNC_FLUSH) for f in frames]

    return encode


def _zstd(frames: list[bytes]) -> list[bytes]:
    c = zstandard.ZstdCompressor(level=3).compressobj()
    return [c.compress(f) + c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK) for f in frames]


def _gateway(name: str) -> Callable[[list[bytes]], list[bytes]]:
    def encode(frames: list[bytes]) -> list[bytes]:
        encoder = ENCODERS[name](CodecSettings())
        return [encoder.encode_flush(f) for f in frames]

    return encode


ENCODINGS: list[tuple[str, str | None, Callable[[list[bytes]], list[bytes]]]] = [
    ("brotli", "br", _brotli),
    ("gzip", "gzip", _gzip),
    ("deflate-zlib", "deflate", _deflate(zlib.MAX_WBITS)),
    ("deflate-raw", "deflate", _deflate(-zlib.MAX_WBITS)),
    ("zstd", "zstd", _zstd),
    ("identity", None, lambda frames: list(frames)),
    *((f"gateway-{name}", name, _gateway(name)) for name in sorted(ENCODERS)),
]


@pytest.mark.unit
@pytest.mark.parametrize(("encoding", "encode"), [c[1:] for c in ENCODINGS], ids=[c[0] for c in ENCODINGS])
def test_decoder_every_split(encoding: str | None, encode: Callable[[list[bytes]], list[bytes]]) -> None:
    parts = encode(EVENTS)
    wire = b"".join(parts)
    plain = b"".join(EVENTS)
    # Each event is decodable the moment its flushed bytes are in: nothing lags one event behind.
    decoder = make_decoder(encoding)
    out = b""
    for part, event_bytes in zip(parts, EVENTS, strict=True):
        before = len(out)
        out += decoder.decode(part)
        assert out[before:] == event_bytes
    for cut in range(len(wire) + 1):
        decoder = make_decoder(encoding)
        assert decoder.decode(wire[:cut]) + decoder.decode(wire[cut:]) + decoder.flush() == plain, cut
    decoder = make_decoder(encoding)
    assert b"".join(decoder.decode(wire[i:i + 1]) for i in range(len(wire))) + decoder.flush() == plain


@pytest.mark.unit
@pytest.mark.parametrize("lgwin", [16, 22])
def test_brotli_event_over_64k_decoded_whole(lgwin: int) -> None:
    """brotli 1.2.1 can hand out as little as 32,752 bytes per call (with a 4 MiB window, brotli's default, it
    does): a big event must still come out complete from one ``decode``."""
    big = b"data: " + orjson.dumps([{"i": i, "v": f"{i * 7919 % 10007:x}"} for i in range(8000)]) + b"\n\n"
    assert len(big) > 64 * 1024
    compressor = brotli.Compressor(quality=4, lgwin=lgwin)
    wire = [compressor.process(f) + compressor.flush() for f in (EVENTS[0], big, EVENTS[1])]
    decoder = make_decoder("br")
    assert decoder.decode(wire[0]) == EVENTS[0]
    assert decoder.decode(wire[1]) == big
    assert decoder.decode(wire[2]) == EVENTS[1]
    events, _ = _feed([EVENTS[0], big])
    assert len(events) == 1
    assert len(events[0].data) == len(big) - 8


@pytest.mark.unit
def test_decoder_names() -> None:
    assert {"br", "gzip", "deflate", "zstd", "identity"} <= set(DECODERS)
    assert make_decoder(" BR ").decode(_brotli([b"x"])[0]) == b"x"
    assert make_decoder("").decode(b"x") == b"x"
    with pytest.raises(ValueError, match="compress"):
        make_decoder("compress")


# --- HTTP/1.1 framing ----------------------------------------------------------------------------------------

CHUNKED_PAYLOAD = [b"hello", b"", b" world\r\n", b"x" * 300]
CHUNKED = (b"5\r\nhello\r\n8;ext=1\r\n world\r\n\r\n12C\r\n" + b"x" * 300 + b"\r\n"
           b"0\r\nTrailer: yes\r\n\r\n")


def _unchunk(pieces: list[bytes]) -> tuple[bytes, bool]:
    parser = ChunkedParser()
    out = b"".join(p for piece in pieces for p in parser.feed(piece))
    return out, parser.done


@pytest.mark.unit
def test_chunked_every_split() -> None:
    expected = b"".join(CHUNKED_PAYLOAD)
    assert _unchunk([CHUNKED]) == (expected, True)
    for cut in range(len(CHUNKED) + 1):
        assert _unchunk([CHUNKED[:cut], CHUNKED[cut:]]) == (expected, True), cut
        prefix, done = _unchunk([CHUNKED[:cut]])  # payload is handed out as it arrives, even mid-chunk
        assert expected.startswith(prefix)
        assert done == (cut == len(CHUNKED))
    assert _unchunk([CHUNKED[i:i + 1] for i in range(len(CHUNKED))]) == (expected, True)


@pytest.mark.unit
def test_chunked_lf_only_and_errors() -> None:
    assert _unchunk([b"3\nabc\n0\n\n"]) == (b"abc", True)
    assert _unchunk([b"3\r\nabc\r\n0\r\n\r\nleftover"]) == (b"abc", True)
    for bad in (b"zz\r\n", b"3\r\nabcX", b"-1\r\n", b"\r\n", b"1 2\r\n"):
        with pytest.raises(ValueError, match="chunk"):
            _unchunk([bad])


class _Transport(asyncio.Transport):
    """Enough of an asyncio transport for feeding an ``H1Stream`` by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def _response(encoding: str, frames: list[bytes]) -> bytes:
    body = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in frames if p) + b"0\r\n\r\n"
    return (f"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: {encoding}\r\n"
            "Transfer-Encoding: chunked\r\nVary: a\r\nVary: b\r\n\r\n").encode() + body


@pytest.mark.unit
@pytest.mark.asyncio
async def test_h1_stream_every_split() -> None:
    """Head, chunk framing and Brotli split anywhere: the same events, counters and a clean end."""
    parts = _brotli(EVENTS)
    response = _response("br", parts)
    expected = _feed(EVENTS)[0]
    for cut in [*range(0, len(response) + 1, 3), len(response)]:
        got: list[tuple[int, SSEEvent]] = []

        def sink(stream: StreamState, events: list[SSEEvent], t_ns: int, got: list[Any] = got) -> None:
            got.extend((t_ns, e) for e in events)

        state = StreamState(0, sink)
        protocol = H1Stream(state, build_request("/s", "h", accept_encoding="br"))
        transport = _Transport()
        protocol.connection_made(transport)
        protocol.data_received(response[:cut])
        protocol.data_received(response[cut:])
        assert [e for _, e in got] == expected, cut
        assert all(isinstance(t, int) and t > 0 for t, _ in got)
        assert state.opened.result() == (200, state.headers)
        assert state.headers["vary"] == "a, b"
        assert state.closed.result() == "end"
        assert transport.closed
        assert state.wire_bytes == sum(map(len, parts))
        assert state.decoded_bytes == sum(map(len, EVENTS))
        assert state.events == len(expected)
        assert state.parser.comments == 1
        assert protocol.received_bytes == len(response)
    assert transport.written.startswith(b"GET /s HTTP/1.1\r\nHost: h\r\nAccept: text/event-stream\r\n")


@pytest.mark.unit
@pytest.mark.asyncio
async def test_h1_stream_non_200_and_content_length() -> None:
    state = StreamState()
    protocol = H1Stream(state, b"")
    protocol.connection_made(_Transport())
    protocol.data_received(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 429 Too Many\r\nContent-Length: 5\r\n\r\nno")
    assert state.opened.result()[0] == 429
    assert not state.closed.done()
    protocol.data_received(b"pe!")
    assert state.closed.result() == "end"
    assert (state.status, state.error, state.error_body) == (429, "status 429", b"nope!")

    state = StreamState()
    protocol = H1Stream(state, b"")
    protocol.connection_made(_Transport())
    protocol.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\ndata: x\n\ndata: y\n\n")
    assert state.events == 1
    assert state.closed.result() == "end"


def _h2_client(fast_data: bool) -> tuple[H2Client, _Transport, list[StreamState], list[list[SSEEvent]]]:
    client = H2Client("h", fast_data=fast_data)
    transport = _Transport()
    client.connection_made(transport)
    got: list[list[SSEEvent]] = [[], [], []]
    states = []
    for i in range(3):
        def sink(stream: StreamState, events: list[SSEEvent], t_ns: int, out: list[SSEEvent] = got[i]) -> None:
            out.extend(events)

        state = StreamState(i, sink)
        client.open_stream(state, f"/s{i}", accept_encoding="br" if i == 1 else "identity")
        states.append(state)
    return client, transport, states, got


def _h2_server(request_bytes: bytes) -> tuple[H2Connection, bytes]:
    """A server's whole answer to three streams: two event streams (one Brotli), one refusal, PINGs, padding."""
    server = H2Connection(H2Configuration(client_side=False, header_encoding=None))
    server.initiate_connection()
    server.receive_data(request_bytes)
    sse = [(b":status", b"200"), (b"content-type", b"text/event-stream")]
    server.send_headers(1, sse)
    server.send_headers(3, [*sse, (b"content-encoding", b"br")])
    server.send_headers(5, [(b":status", b"429"), (b"content-length", b"9")])
    server.send_data(5, b"slow down", end_stream=True)
    br = _brotli(EVENTS)
    for i, frame in enumerate(EVENTS):
        server.send_data(1, frame, pad_length=7 if i == 2 else None)
        server.send_data(3, br[i])
        if i == 1:
            server.ping(b"12345678")
    server.send_data(1, b"data: last\n\n", end_stream=True)
    return server, server.data_to_send()


@pytest.mark.unit
@pytest.mark.asyncio
async def test_h2_client_fast_path_matches_h2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain DATA frames read outside h2 give exactly what h2 gives, split anywhere, and keep the windows open."""
    monkeypatch.setattr(h2_module, "_ACK_EVERY", 100)  # so that our own WINDOW_UPDATEs are exercised
    _, transport, _, _ = _h2_client(True)
    server, answer = _h2_server(transport.written)
    expected = [_feed([*EVENTS, b"data: last\n\n"])[0], _feed(EVENTS)[0], []]
    for fast in (True, False):
        for cut in [*range(0, len(answer) + 1, 7), len(answer)]:
            client, transport, states, got = _h2_client(fast)
            transport.written = b""
            client.data_received(answer[:cut])
            client.data_received(answer[cut:])
            assert got == expected, (fast, cut)
            assert [s.closed.done() and s.closed.result() for s in states] == ["end", False, "end"]
            assert [s.status for s in states] == [200, 200, 429]
            assert states[2].error_body == b"slow down"
            assert states[1].wire_bytes == sum(map(len, _brotli(EVENTS)))
            assert states[0].decoded_bytes == sum(map(len, EVENTS)) + 12
            assert client.ready.result() is None
            assert client.error is None
        # What the client wrote (SETTINGS ACK, PING ACK, WINDOW_UPDATEs) is valid HTTP/2, and gives the windows back.
        check = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        check.initiate_connection()
        _, first, _, _ = _h2_client(fast)
        check.receive_data(first.written)
        check.data_to_send()
        check.send_headers(3, [(b":status", b"200")])
        big = b"data: " + b"x" * 5000 + b"\n\n"
        for _ in range(4):
            check.send_data(3, big)
        client, transport, states, _ = _h2_client(fast)
        transport.written = b""
        client.data_received(server.data_to_send() + check.data_to_send())
        check.receive_data(transport.written)
        # Ours give back every byte (here every 100); h2 waits for half a window, which is as safe with 16 MiB.
        window = check.local_flow_control_window(3)
        assert window == DEFAULT_STREAM_WINDOW if fast else window >= DEFAULT_STREAM_WINDOW // 2
        assert states[1].events == 4


@pytest.mark.unit
@pytest.mark.asyncio
@pytest.mark.parametrize("fast", [True, False])
async def test_h2_client_goaway_and_protocol_errors(fast: bool) -> None:
    _, transport, _, _ = _h2_client(fast)
    server = H2Connection(H2Configuration(client_side=False, header_encoding=None))
    server.initiate_connection()
    server.receive_data(transport.written)
    server.send_headers(1, [(b":status", b"200")])
    server.send_data(1, b"data: a\n\n")
    server.close_connection(last_stream_id=1)  # streams 3 and 5 were never processed
    client, transport, states, got = _h2_client(fast)
    answer = server.data_to_send()
    server_settings = answer[:answer.index(b"\x00\x00\x00\x04\x01")]  # up to the SETTINGS ACK
    client.data_received(answer)
    assert [s.closed.done() and s.closed.result() for s in states] == [False, "goaway", "goaway"]
    assert got[0] == [SSEEvent("a", M, None)]
    assert states[0].ok
    # A frame over the MAX_FRAME_SIZE we announced is a connection error: reported, never raised.
    client, transport, states, got = _h2_client(fast)
    client.data_received(server_settings)
    client.data_received((2 << 20).to_bytes(3, "big") + b"\x00\x00" + (1).to_bytes(4, "big") + b"x" * (2 << 20))
    assert client.error is not None
    assert "protocol error" in client.error
    assert transport.closed
    client.connection_lost(None)
    assert states[0].closed.result() == "eof"
    assert states[0].error == "connection closed mid-response"
    assert client.lost.done()


def _h3_client(fast_data: bool) -> tuple[H3Client, StreamState, int, list[SSEEvent]]:
    """A client with one request sent (no socket: the server's bytes are handed in as QUIC events)."""
    client = H3Client("h", client_quic_configuration(verify=False), fast_data=fast_data)
    got: list[SSEEvent] = []
    state = StreamState(0, lambda stream, events, t_ns: got.extend(events))
    stream_id = client.quic.get_next_available_stream_id()
    client.http.send_headers(stream_id, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"h"),
                                         (b":path", b"/")], end_stream=True)
    client.streams[stream_id] = state
    return client, state, stream_id, got


def _h3_answer(stream_id: int) -> tuple[bytes, int]:
    """A response on one request stream: head, events in DATA frames (one split over two), an unknown frame type
    (which aioquic.h3 must skip), and more DATA; plus where the head ends."""
    head = encode_frame(FrameType.HEADERS, pylsqpack.Encoder().encode(
        stream_id, [(b":status", b"200"), (b"content-type", b"text/event-stream")])[1])
    body = b"".join(encode_frame(FrameType.DATA, event) for event in EVENTS[:3])
    body += encode_frame(FrameType.DATA, EVENTS[3] + EVENTS[4][:5]) + encode_frame(FrameType.DATA, EVENTS[4][5:])
    body += encode_frame(0x21, b"grease") + encode_frame(FrameType.DATA, b"data: last\n\n" * 40)
    return head + body, len(head)


@pytest.mark.unit
@pytest.mark.asyncio
async def test_h3_client_fast_path_matches_aioquic_h3() -> None:
    """DATA frames read outside aioquic.h3 give exactly what aioquic.h3 gives, however QUIC cuts the stream; an
    unknown frame goes back to aioquic.h3, and the stream comes back to the fast path after it."""
    _, _, stream_id, _ = _h3_client(True)
    answer, head_end = _h3_answer(stream_id)
    expected = _feed([*EVENTS, b"data: last\n\n" * 40])[0]
    for fast in (True, False):
        for cut, second in itertools.product(range(0, len(answer) + 1, 3), (None, head_end + 7)):
            client, state, stream_id, got = _h3_client(fast)
            cuts = sorted({0, cut, len(answer), *((second,) if second else ())})
            for a, b in itertools.pairwise(cuts):
                client.quic._events.append(StreamDataReceived(data=answer[a:b], end_stream=b == len(answer),
                                                              stream_id=stream_id))
                client._process(0)
                if fast and a >= head_end and b < len(answer):
                    assert stream_id in client._fast or stream_id in client._headed
            assert got == expected, (fast, cut, second)
            assert (state.status, state.closed.done() and state.closed.result(), state.error) == (200, "end", None)
            assert client.error is None
            assert not client.streams
            assert not client._fast


@pytest.mark.unit
@pytest.mark.asyncio
async def test_h3_client_truncated_frame_is_a_stream_error() -> None:
    client, state, stream_id, got = _h3_client(True)
    answer, head_end = _h3_answer(stream_id)
    client.quic._events.append(StreamDataReceived(data=answer[:head_end], end_stream=False, stream_id=stream_id))
    client._process(0)
    assert stream_id in client._fast
    client.quic._events.append(StreamDataReceived(data=answer[head_end:head_end + 9], end_stream=True,
                                                  stream_id=stream_id))
    client._process(0)
    assert state.closed.result() == "error"
    assert state.error == "HTTP/3 frame truncated by the end of the stream"
    assert got == []


@pytest.mark.unit
def test_h3_client_flush_shows_aioquic_only_streams_with_work_and_loses_nothing(
        certs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The generator's flush hides the streams with nothing to do from aioquic: the credit of tiny windows still
    flows (a hidden MAX_STREAM_DATA would stall a stream and the test), and finished streams are still discarded."""
    seen: list[int] = []
    real = QuicConnection.datagrams_to_send

    def counting(quic: QuicConnection, now: float) -> list[tuple[bytes, Any]]:
        if quic._is_client:
            seen.append(len(quic._streams))
        return real(quic, now=now)

    monkeypatch.setattr(QuicConnection, "datagrams_to_send", counting)
    pair = QuicPair(certs, max_stream_data=700, max_data=1500, client_send=h3_datagrams_to_send)
    ids = pair.open(40)
    expected = dict.fromkeys(ids, b"")
    for n in range(30):
        for stream_id in ids:
            chunk = b"%d.%d:" % (stream_id, n) + b"x" * ((stream_id * 31 + n * 57) % 90)
            pair.server.send_stream_data(stream_id, chunk)
            expected[stream_id] += chunk
        pair.step()
    pair.until(lambda: all(bytes(pair.received.get(i, b"")) == expected[i] for i in ids))
    pair.until(lambda: pair.client._loss.bytes_in_flight == 0 and not pair.client._spaces[
        tls.Epoch.ONE_RTT].ack_at)
    seen.clear()
    for _ in range(5):  # ACKs only: aioquic sees none of the 40 streams (the server's 3 of HTTP/3 are not here)
        pair.step()
    assert seen
    assert max(seen) < 40
    assert set(pair.client._streams) == {stream.stream_id for stream in pair.client._streams_queue}
    for stream_id in ids:  # both sides end every stream: once acknowledged, each is discarded on the client too
        pair.client.send_stream_data(stream_id, b"", end_stream=True)
        pair.server.send_stream_data(stream_id, b"", end_stream=True)
    pair.until(lambda: not any(i in pair.client._streams for i in ids))
    assert not any(stream.stream_id in ids for stream in pair.client._streams_queue)
    assert pair.terminated is None


@pytest.mark.unit
@pytest.mark.asyncio
async def test_h3_receive_queue_keeps_a_burst_of_datagrams() -> None:
    """Hypercorn's UDP listener dropped every datagram past ten waiting (see ``h3_receive_queue``)."""
    from hypercorn.asyncio.udp_server import UDPServer

    from gateway.web import hypercorn as corrections

    corrections.install(accept_unverified=False)
    server = UDPServer(None, asyncio.get_running_loop(), None, None, {})  # type: ignore[arg-type]
    for i in range(500):
        server.datagram_received(b"x" * 1200, ("127.0.0.1", 40000 + i))  # type: ignore[arg-type]
    assert server.protocol_queue.qsize() == 500


# --- the latency recorder ------------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.asyncio
async def test_latency_recorder_counts_and_order() -> None:
    recorder = LatencyRecorder()
    a, b = StreamState(0, recorder), StreamState(1, recorder)
    recorder.expect(5)
    assert not await recorder.wait_all(0)
    e = [SSEEvent(stamp(seq), M, None) for seq in range(3)]
    recorder(a, [e[0], e[1], e[2]], 0)
    recorder(b, [e[1], e[0]], 0)  # reordered
    assert await recorder.wait_all(1)
    recorder(b, [SSEEvent("not json", M, None), SSEEvent('{"seq": 1}', M, None)], 0)
    assert recorder.stream_stats(a) == StreamStats(3, 2, 0)
    assert recorder.stream_stats(b) == StreamStats(2, 1, 1)
    summary = recorder.percentiles()
    assert (summary["delivered"], summary["expected"], summary["out_of_order"], summary["unparsed"]) == (5, 5, 1, 2)

    assert summary["p50_ms"] <= summary["p99_ms"] <= summary["max_ms"] < 0  # t_ns 0 is before every stamp
    recorder.reset()
    assert recorder.percentiles()["delivered"] == 0


@pytest.mark.unit
@pytest.mark.asyncio
async def test_latency_recorder_checks_order_per_publisher_lane() -> None:
    """Concurrent publishers number their events in lanes: lanes interleave freely, one lane must not go back."""
    from benchmarks.loadgen.latency import LANE_BITS

    recorder = LatencyRecorder()
    stream = StreamState(0, recorder)
    seqs = [0, 1 << LANE_BITS, 1, (1 << LANE_BITS) | 1, 2, (2 << LANE_BITS)]
    recorder(stream, [SSEEvent(stamp(seq), M, None) for seq in seqs], 0)
    assert recorder.out_of_order == 0
    recorder(stream, [SSEEvent(stamp(1 << LANE_BITS), M, None)], 0)  # lane 1 went back
    assert recorder.out_of_order == 1


@pytest.mark.unit
def test_process_knobs() -> None:
    import os
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert raise_fd_limit() >= soft
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= soft
    allowed = os.sched_getaffinity(0)
    try:
        pin_to_cpu(min(allowed))
        assert os.sched_getaffinity(0) == {min(allowed)}
    finally:
        os.sched_setaffinity(0, allowed)
    before = cpu_seconds()
    sum(i * i for i in range(200_000))
    assert cpu_seconds() > before

    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert run(answer()) == 42


# --- against a real gateway ----------------------------------------------------------------------------------


async def _publish(publisher: Publisher, topic: str, count: int) -> None:
    auth = [("Authorization", f"Bearer {HUB_TOKEN}")]
    for seq in range(count):
        status = await publisher.post("/hub/publish", orjson.dumps({"topic": topic, "data": stamp(seq)}), auth)
        assert status == 204, publisher.last_body


@pytest.mark.live
@pytest.mark.asyncio
async def test_fleet_h1_and_h2c_against_the_gateway(server: Server) -> None:
    topic = f"loadgen-{uuid.uuid4().hex}"
    path = f"/hub/subscribe?topic={topic}"
    recorder = LatencyRecorder()
    fleets = [
        Fleet("127.0.0.1", server.http_port, path, protocol=protocol, accept_encoding=encoding,
              streams_per_connection=20, sink=recorder)
        for protocol in ("h1", "h2") for encoding in ("br", "identity")
    ]
    publisher = Publisher("127.0.0.1", server.http_port, timeout=5)
    raise_fd_limit()
    cpu_before = cpu_seconds()
    try:
        async with asyncio.timeout(20):
            for fleet in fleets:
                report = await fleet.open(20)
                assert (report.opened, report.failed) == (20, 0), report
            recorder.expect(5 * 80)
            await _publish(publisher, topic, 5)
            assert await recorder.wait_all(10), recorder.percentiles()
        for fleet in fleets:
            for stream in fleet.streams:
                assert recorder.stream_stats(stream) == StreamStats(5, 4, 0)
                assert stream.headers.get("content-encoding", "identity") == fleet.accept_encoding
                assert stream.parser.retry is not None  # the gateway's retry hint came first
                assert stream.ok
            assert fleet.totals()["events"] == 5 * 20
        assert [len(f.connections) for f in fleets] == [20, 20, 1, 1]  # 20 streams on one h2 connection
        summary = recorder.percentiles()
        assert summary["delivered"] == summary["expected"] == 400
        assert summary["out_of_order"] == summary["unparsed"] == 0
        assert 0 < summary["p50_ms"] <= summary["max_ms"] < 10_000
        assert publisher.requests == 5
        assert cpu_seconds() >= cpu_before
    finally:
        publisher.close()
        for fleet in fleets:
            await fleet.close()
    for fleet in fleets:
        assert all(stream.closed.done() for stream in fleet.streams)
        assert all(connection.lost.done() for connection in fleet.connections)


@pytest.mark.live
@pytest.mark.asyncio
async def test_fleet_h2_over_tls(server: Server) -> None:
    topic = f"loadgen-tls-{uuid.uuid4().hex}"
    context = client_ssl_context(cafile=str(server.certfile))
    fleet = Fleet("127.0.0.1", server.tls_port, f"/hub/subscribe?topic={topic}", protocol="h2",
                  accept_encoding="br, gzip", ssl=context)
    publisher = Publisher("127.0.0.1", server.http_port, timeout=5)
    recorder = fleet.recorder
    assert recorder is not None
    try:
        async with asyncio.timeout(15):
            report = await fleet.open(1)
            assert report.opened == 1, report
            recorder.expect(3)
            await _publish(publisher, topic, 3)
            assert await recorder.wait_all(10)
        (stream,) = fleet.streams
        assert stream.headers["content-encoding"] == "br"
        assert recorder.stream_stats(stream) == StreamStats(3, 2, 0)
        assert stream.wire_bytes < stream.decoded_bytes
    finally:
        publisher.close()
        await fleet.close()


@pytest.mark.live
def test_fleet_on_uvloop(server: Server) -> None:
    """``run`` picks uvloop when installed: its transports (TLS included) must drive the same protocols."""
    topic = f"loadgen-uvloop-{uuid.uuid4().hex}"
    path = f"/hub/subscribe?topic={topic}"

    async def main() -> list[int]:
        recorder = LatencyRecorder()
        context = client_ssl_context(cafile=str(server.certfile))
        fleets = [
            Fleet("127.0.0.1", server.http_port, path, protocol="h1", accept_encoding="br", sink=recorder),
            Fleet("127.0.0.1", server.http_port, path, protocol="h2", sink=recorder),
            Fleet("127.0.0.1", server.tls_port, path, protocol="h2", accept_encoding="br", ssl=context,
                  sink=recorder),
        ]
        publisher = Publisher("127.0.0.1", server.http_port, timeout=5)
        try:
            async with asyncio.timeout(15):
                opened = [(await fleet.open(3)).opened for fleet in fleets]
                recorder.expect(2 * 9)
                await _publish(publisher, topic, 2)
                assert await recorder.wait_all(10)
            assert recorder.out_of_order == 0
            return opened
        finally:
            publisher.close()
            for fleet in fleets:
                await fleet.close()

    assert run(main()) == [3, 3, 3]


@pytest.mark.live
@pytest.mark.asyncio
async def test_fleet_h3_against_the_gateway(server: Server) -> None:
    """HTTP/3: several streams on each QUIC connection (through the gateway's Retry), Brotli and identity, every
    event in order; the DATA fast path carries them; a refusal is counted by its status; closing ends it all."""
    topic = f"loadgen-h3-{uuid.uuid4().hex}"
    recorder = LatencyRecorder()
    quic = client_quic_configuration(cafile=str(server.certfile))
    fleets = [Fleet("127.0.0.1", server.tls_port, f"/hub/subscribe?topic={topic}", protocol="h3", quic=quic,
                    accept_encoding=encoding, streams_per_connection=4, sink=recorder, connect_timeout=5)
              for encoding in ("br", "identity")]
    refused = Fleet("127.0.0.1", server.tls_port, "/hub/subscribe", protocol="h3", quic=quic, connect_timeout=5)
    publisher = Publisher("127.0.0.1", server.http_port, timeout=5)
    try:
        async with asyncio.timeout(20):
            for fleet in fleets:
                report = await fleet.open(6)
                assert (report.opened, report.failed) == (6, 0), report
            report = await refused.open(2)
            await asyncio.gather(*(s.closed for s in refused.streams))  # (the body may come after the head)
            assert (report.opened, dict(report.statuses)) == (0, {400: 2}), report
            recorder.expect(4 * 12)
            await _publish(publisher, topic, 4)
            assert await recorder.wait_all(10), recorder.percentiles()
        for fleet in fleets:
            assert [len(c.streams) for c in fleet.connections] == [4, 2]  # type: ignore[union-attr]
            assert all(len(c._fast) == len(c.streams) for c in fleet.connections)  # type: ignore[union-attr]
            for stream in fleet.streams:
                assert recorder.stream_stats(stream) == StreamStats(4, 3, 0)
                assert stream.headers.get("content-encoding", "identity") == fleet.accept_encoding
                assert stream.ok
        assert fleets[0].streams[0].wire_bytes < fleets[0].streams[0].decoded_bytes
        assert recorder.out_of_order == recorder.unparsed == 0
    finally:
        publisher.close()
        for fleet in (*fleets, refused):
            await fleet.close()
    for fleet in fleets:
        assert {s.closed.result() for s in fleet.streams} == {"closed"}
        assert all(connection.lost.done() for connection in fleet.connections)


@pytest.mark.live
@pytest.mark.asyncio
async def test_h3_client_without_fast_path_and_connect_errors(server: Server) -> None:
    """``fast_data=False`` reads the same events through aioquic.h3; a port where nothing listens over UDP is an
    error, never a hang; a connection that fails the handshake says why."""
    topic = f"loadgen-h3-slow-{uuid.uuid4().hex}"
    publisher = Publisher("127.0.0.1", server.http_port, timeout=5)
    recorder = LatencyRecorder()
    async with asyncio.timeout(20):
        client = await open_h3_connection("127.0.0.1", server.tls_port, fast_data=False,
                                          configuration=client_quic_configuration(verify=False))
        try:
            states = [StreamState(i, recorder) for i in range(3)]
            for state in states:
                client.open_stream(state, f"/hub/subscribe?topic={topic}")
            await asyncio.gather(*(s.opened for s in states))
            recorder.expect(3 * 3)
            await _publish(publisher, topic, 3)
            assert await recorder.wait_all(10)
            assert not client._fast
            assert [recorder.stream_stats(s) for s in states] == [StreamStats(3, 2, 0)] * 3
        finally:
            publisher.close()
            client.close()
        await asyncio.wait_for(client.lost, 5)
        with pytest.raises(ConnectionError, match=r"(?i)certificate|verify"):
            await open_h3_connection("127.0.0.1", server.tls_port)  # (the system's CAs do not know ours)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # a UDP port with nothing listening on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fleet = Fleet("127.0.0.1", port, "/", protocol="h3", quic=client_quic_configuration(verify=False),
                  connect_timeout=3)
    async with asyncio.timeout(10):
        report = await fleet.open(2)
        await fleet.close()
    assert report.opened == 0
    assert sum(report.errors.values()) == 2, report.errors


@pytest.mark.live
@pytest.mark.asyncio
async def test_fleet_records_refusals(server: Server) -> None:
    """A 400 (no topic) is counted by status for both protocols, never raised."""
    for protocol in ("h1", "h2"):
        fleet = Fleet("127.0.0.1", server.http_port, "/hub/subscribe", protocol=protocol)
        try:
            async with asyncio.timeout(10):
                report = await fleet.open(3)
                await asyncio.gather(*(s.closed for s in fleet.streams))  # (the body may come after the head)
            assert (report.opened, dict(report.statuses), dict(report.errors)) == (0, {400: 3}, {}), protocol
            assert all(s.error == "status 400" and s.error_body for s in fleet.streams)
        finally:
            await fleet.close()


@pytest.mark.unit
@pytest.mark.asyncio
async def test_fleet_connect_errors_are_counted() -> None:
    with socket.socket() as sock:  # a port with nothing listening on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for protocol in ("h1", "h2"):
        fleet = Fleet("127.0.0.1", port, "/", protocol=protocol, connect_timeout=2)
        async with asyncio.timeout(10):
            report = await fleet.open(2)
            await fleet.close()
        assert report.opened == 0
        assert sum(report.errors.values()) == 2
        assert all("ConnectionRefusedError" in key for key in report.errors), report.errors


@pytest.mark.live
@pytest.mark.asyncio
async def test_publisher_keeps_the_connection(server: Server) -> None:
    publisher = Publisher("127.0.0.1", server.http_port, timeout=5)
    try:
        async with asyncio.timeout(10):
            await publisher.connect()
            assert await publisher.post("/hub/publish", b"{}", [("Authorization", "Bearer wrong")]) == 401
            assert b"Authorization" in publisher.last_body
            assert publisher.connected
            status = await publisher.post("/hub/publish", orjson.dumps({"topic": "t", "data": "x"}),
                                          [("Authorization", f"Bearer {HUB_TOKEN}")])
            assert status == 204
            assert publisher.last_headers["event-id"]
            assert publisher.requests == 2
    finally:
        publisher.close()
