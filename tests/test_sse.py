"""Tests for the event-stream wire format in ``gateway.core.sse``.

The encoder and the parser are tested against each other (a round trip must be lossless up to the format's own
line-end normalisation) and the parser alone against hand-written streams taken from the WHATWG HTML spec's
"event stream interpretation" examples, because a browser's ``EventSource`` is the parser that really matters:
if ours agrees with the spec on those streams, a round trip through ours says something about a browser too.

Every stream is also fed split at every byte position, since a network read can end anywhere: inside a
multi-byte UTF-8 sequence, inside the BOM, or between the CR and LF of one line end.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.core.sse import (
    Event,
    ParsedEvent,
    SSEParser,
    comment,
    encode_message,
    parse_last_event_id,
    retry_frame,
    split_lines,
)

pytestmark = pytest.mark.unit

# --- helpers -----------------------------------------------------------------------------------------------


def parse(stream: bytes) -> tuple[list[ParsedEvent], SSEParser]:
    """Parse a whole stream in one feed; the parser is returned for its ``comments``/``retry`` state."""
    parser = SSEParser()
    return parser.feed(stream), parser


def parse_chunks(chunks: list[bytes]) -> list[ParsedEvent]:
    """Feed the chunks in order and collect every dispatched event."""
    parser = SSEParser()
    events: list[ParsedEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events


def assert_split_invariant(stream: bytes, expected: list[ParsedEvent]) -> None:
    """The result must not depend on where the transport cut the bytes.

    Two cuts cover every boundary (including the empty first/last chunk of a cut at 0 or at the end); a
    byte-at-a-time feed covers every boundary at once and puts the parser's carry-over state (pending CR,
    partial UTF-8, partial BOM) to work on every byte.
    """
    for cut in range(len(stream) + 1):
        head, tail = stream[:cut], stream[cut:]
        chunks = [c for c in (head, tail) if c]  # b"" feeds are a separate concern, see test_empty_feed_*
        assert parse_chunks(chunks) == expected, f"split at byte {cut}: {head!r} | {tail!r}"
    assert parse_chunks([stream[i : i + 1] for i in range(len(stream))]) == expected, "one byte at a time"


# --- Event.encode ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "wire"),
    [
        (Event(data="hi"), b"data: hi\n\n"),
        (Event(data="hi", event="patch"), b"event: patch\ndata: hi\n\n"),
        (Event(data="hi", id="7"), b"id: 7\ndata: hi\n\n"),
        (Event(data="hi", event="patch", id="7"), b"event: patch\nid: 7\ndata: hi\n\n"),
        (Event(data="a\nb\r\nc\rd"), b"data: a\ndata: b\ndata: c\ndata: d\n\n"),
        (Event(retry=2500), b"retry: 2500\n\n"),
        (Event(retry=0), b"retry: 0\n\n"),
        (Event(id="9"), b"id: 9\n\n"),
        (Event(comment="ping"), b": ping\n\n"),
        (Event(comment="two\nlines"), b": two\n: lines\n\n"),
        (
            Event(data="x", event="e", id="1", retry=10, comment="c"),
            b": c\nretry: 10\nevent: e\nid: 1\ndata: x\n\n",
        ),
        (Event(data="é €"), "data: é €\n\n".encode()),
        (Event(), b"\n"),
    ],
)
def test_event_encode(event: Event, wire: bytes) -> None:
    """Pin the exact bytes: field order and the ``name: value`` spelling are what clients are tested against."""
    assert event.encode() == wire


def test_encode_message_matches_event_encode() -> None:
    """The fan-out fast path must produce the same frame as the general encoder."""
    assert encode_message("a\nb", event="patch", id="3") == Event(data="a\nb", event="patch", id="3").encode()
    assert encode_message("x") == Event(data="x").encode()


@pytest.mark.parametrize("bad", ["a\rb", "a\nb", "a\0b", "\r", "\n", "\0", "trailing\r\n"])
@pytest.mark.parametrize("field", ["event", "id"])
def test_single_line_fields_refuse_cr_lf_nul(field: str, bad: str) -> None:
    """A line end in ``event``/``id`` would let a value inject arbitrary fields (or a whole event)."""
    kwargs: dict[str, Any] = {"data": "x", field: bad}
    with pytest.raises(ValueError, match=field):
        Event(**kwargs)


@pytest.mark.parametrize("retry", [-1, -1000])
def test_negative_retry_refused(retry: int) -> None:
    """A negative reconnection delay is not representable on the wire (only ASCII digits are)."""
    with pytest.raises(ValueError, match="retry"):
        Event(retry=retry)
    with pytest.raises(ValueError, match="retry"):
        retry_frame(retry)


def test_bool_retry_refused() -> None:
    """``bool`` is an ``int`` subclass; ``CodecSettings`` refuses it for the same reason, so should ``Event``."""
    with pytest.raises(ValueError, match="retry"):
        Event(retry=True)


def test_data_leading_space_survives_round_trip() -> None:
    """The parser strips exactly one space after the colon, so the encoder must always write one."""
    events, _ = parse(Event(data="  two spaces\n one").encode())
    assert events == [ParsedEvent("  two spaces\n one")]


def test_empty_data_is_one_line_and_dispatched_as_empty_string() -> None:
    """``data=""`` is a real (empty) message, unlike ``data=None`` which sends no data field at all."""
    wire = Event(data="").encode()
    assert wire == b"data: \n\n"
    assert wire.count(b"data:") == 1
    events, _ = parse(wire)
    assert events == [ParsedEvent("")]


def test_data_none_is_not_dispatched_but_id_is_kept() -> None:
    """An id-only frame moves the client's Last-Event-ID without firing an event."""
    parser = SSEParser()
    assert parser.feed(Event(id="42").encode()) == []
    assert parser.last_event_id == "42"
    assert parser.feed(Event(data="next").encode()) == [ParsedEvent("next", id="42")]


def test_split_lines() -> None:
    """CRLF counts as one line end, not two; a lone CR is a line end of its own."""
    assert split_lines("a\r\nb\rc\nd") == ["a", "b", "c", "d"]
    assert split_lines("\r\n") == ["", ""]
    assert split_lines("\n\r") == ["", "", ""]
    assert split_lines("") == [""]


# --- round trip property ------------------------------------------------------------------------------------

# Any text except NUL (not something a JSON/HTML payload carries) and lone surrogates
# (not encodable as UTF-8). Plain ``st.text()`` rarely produces line ends, so they are mixed in explicitly.
_chars = st.characters(codec="utf-8", exclude_characters="\0")
_data = st.lists(
    st.one_of(st.text(_chars, max_size=12), st.sampled_from(["\r", "\n", "\r\n", "\r\r\n", "\n\r"])),
    max_size=8,
).map("".join)
# Single-line fields: anything but CR, LF and NUL (leading spaces included: the encoder must protect them too).
_safe = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\0"), max_size=10)


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


@settings(max_examples=150, deadline=None)
@given(data=_data, event=st.none() | _safe, id=st.none() | _safe)
@example(data="é€𝄞\r\nx\ry\n", event="ü", id="ñ")  # multi-byte sequences of 2, 3 and 4 bytes to cut inside
@example(data="", event=None, id=None)
@example(data=" lead\r\n\r\n", event=" sp", id=" 1")
def test_round_trip_at_every_split(data: str, event: str | None, id: str | None) -> None:
    """Encode, then parse whole, at every cut and byte by byte: always exactly the same single event.

    An empty ``event`` dispatches as "message" and an empty ``id`` resets the last event id (here: ``None``),
    as the spec says, so those two are what is expected back for "".
    """
    wire = Event(data=data, event=event, id=id).encode()
    expected = [ParsedEvent(_normalise(data), event or "message", id or None)]
    events, _ = parse(wire)
    assert events == expected
    assert_split_invariant(wire, expected)


# The same events written with arbitrary line ends: the encoder only ever writes LF, so this is the property
# that puts CR and CRLF (and a cut between their two bytes) through the parser.
_line_end = st.sampled_from(["\n", "\r", "\r\n"])


@settings(max_examples=150, deadline=None)
@given(
    lines=st.lists(
        st.text(st.characters(codec="utf-8", exclude_characters="\r\n\0"), max_size=8),
        min_size=1,
        max_size=5,
    ),
    ends=st.lists(_line_end, min_size=7, max_size=7),
)
def test_any_line_ends_parse_the_same(lines: list[str], ends: list[str]) -> None:
    """``data`` lines, an ``id`` and the dispatching blank line, each ended by LF, CR or CRLF at random."""
    parts = [f"data: {line}{ends[i]}" for i, line in enumerate(lines)]
    # CR then LF is one CRLF line end, not a line end and a blank line: write that blank line as CRLF instead.
    blank = "\r\n" if ends[5] == "\r" and ends[6] == "\n" else ends[6]
    stream = ("".join(parts) + "id: 5" + ends[5] + blank).encode()
    expected = [ParsedEvent("\n".join(lines), "message", "5")]
    events, _ = parse(stream)
    assert events == expected
    assert_split_invariant(stream, expected)


# --- conformance against the WHATWG examples -------------------------------------------------------------------


def test_spec_example_multiline_data() -> None:
    """Spec: three data lines make one message joined with LF."""
    stream = b"data: YHOO\ndata: +2\ndata: 10\n\n"
    expected = [ParsedEvent("YHOO\n+2\n10")]
    assert parse(stream)[0] == expected
    assert_split_invariant(stream, expected)


def test_spec_example_comments_ids_and_spaces() -> None:
    """Spec: a comment, ``data:`` with no space, a bare ``id`` resetting the id, and a value keeping 1 of 2 spaces."""
    stream = b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n"
    expected = [
        ParsedEvent("first event", id="1"),
        ParsedEvent("second event", id=None),
        ParsedEvent(" third event", id=None),
    ]
    events, parser = parse(stream)
    assert events == expected
    assert parser.comments == ["test stream"]
    assert_split_invariant(stream, expected)


def test_spec_example_data_without_colon_and_unterminated_event() -> None:
    """Spec: ``data`` alone is an empty data line; an event with no trailing blank line is never dispatched."""
    stream = b"data\n\ndata\ndata\n\ndata:"
    expected = [ParsedEvent(""), ParsedEvent("\n")]
    assert parse(stream)[0] == expected
    assert_split_invariant(stream, expected)


def test_spec_example_space_after_colon_is_optional() -> None:
    """Spec: ``data:test`` and ``data: test`` are the same field."""
    stream = b"data:test\n\ndata: test\n\n"
    expected = [ParsedEvent("test"), ParsedEvent("test")]
    assert parse(stream)[0] == expected
    assert_split_invariant(stream, expected)


def test_comments_are_ignored_and_recorded() -> None:
    """Comments never dispatch or interrupt an event; they are kept so tests can see heartbeats."""
    stream = b":\n: hello\ndata: a\n:  two\ndata: b\n\n"
    events, parser = parse(stream)
    assert events == [ParsedEvent("a\nb")]
    assert parser.comments == ["", "hello", " two"]


def test_bom_at_stream_start_is_skipped_only_once() -> None:
    """A leading U+FEFF is stripped (spec), even when it arrives cut into pieces; a second one is data."""
    stream = "\ufeffdata: x\n\n".encode()
    assert parse(stream)[0] == [ParsedEvent("x")]
    assert_split_invariant(stream, [ParsedEvent("x")])
    # Only the very first BOM: a second one makes the first field name "\ufeffdata", which is unknown.
    assert parse("\ufeff\ufeffdata: x\n\n".encode())[0] == []


@pytest.mark.parametrize("value", ["", "12a", "-5", "  5", "1.5", "٣"])
def test_retry_with_non_digits_is_ignored(value: str) -> None:
    """Spec: ``retry`` is used only if the value is all ASCII digits; anything else leaves it unchanged."""
    events, parser = parse(f"retry: 100\nretry:{value}\ndata: x\n\n".encode())
    assert events == [ParsedEvent("x")]
    assert parser.retry == 100


def test_retry_digits_set_the_delay_without_dispatch() -> None:
    events, parser = parse(retry_frame(3000))
    assert events == []
    assert parser.retry == 3000


def test_id_with_nul_is_ignored() -> None:
    """Spec: an ``id`` containing NUL is ignored (the previous id stays)."""
    stream = b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n"
    expected = [ParsedEvent("a", id="1"), ParsedEvent("b", id="1")]
    assert parse(stream)[0] == expected
    assert_split_invariant(stream, expected)


def test_event_without_data_is_not_dispatched() -> None:
    """Spec: a blank line with an empty data buffer resets the event type and dispatches nothing."""
    stream = b"event: lonely\n\ndata: x\n\n"
    assert parse(stream)[0] == [ParsedEvent("x", "message")]


def test_event_type_resets_after_dispatch() -> None:
    stream = b"event: patch\ndata: 1\n\ndata: 2\n\n"
    assert parse(stream)[0] == [ParsedEvent("1", "patch"), ParsedEvent("2", "message")]


def test_unknown_fields_are_ignored() -> None:
    stream = b"foo: bar\nDATA: upper\ndata: ok\n\n"
    assert parse(stream)[0] == [ParsedEvent("ok")]


def test_mixed_line_ends() -> None:
    """CR, LF and CRLF may be mixed freely in one stream; a CRLF is one line end, never a blank line."""
    stream = b"data: a\rdata: b\r\ndata: c\n\r\ndata: d\r\rdata: e\n\n"
    expected = [ParsedEvent("a\nb\nc"), ParsedEvent("d"), ParsedEvent("e")]
    assert parse(stream)[0] == expected
    assert_split_invariant(stream, expected)


def test_last_event_id_persists_to_later_events() -> None:
    """Spec: the last event id buffer is not reset on dispatch, so later events without ``id`` carry it."""
    stream = b"id: 7\ndata: a\n\ndata: b\n\nid: 8\n\ndata: c\n\n"
    expected = [ParsedEvent("a", id="7"), ParsedEvent("b", id="7"), ParsedEvent("c", id="8")]
    events, parser = parse(stream)
    assert events == expected
    assert parser.last_event_id == "8"
    assert_split_invariant(stream, expected)


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    """Spec: the stream is decoded as UTF-8 with replacement; one bad byte must not kill the connection."""
    assert parse(b"data: a\xffb\n\n")[0] == [ParsedEvent("a\ufffdb")]


def test_empty_feed_between_cr_and_lf_keeps_the_crlf() -> None:
    """An empty read (``b""``) is a legal chunk for a push parser and must not change the result."""
    assert parse_chunks([b"data: a\r", b"", b"\ndata: b\n\n"]) == [ParsedEvent("a\nb")]


def test_empty_feeds_elsewhere_are_harmless() -> None:
    assert parse_chunks([b"", b"data: a\n", b"", b"\n", b""]) == [ParsedEvent("a")]


# --- comment(), retry_frame(), parse_last_event_id() -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("", b":\n\n"),
        ("ping", b": ping\n\n"),
        ("a\nb", b": a\n: b\n\n"),
        ("a\r\nb\rc", b": a\n: b\n: c\n\n"),
        ("a\n\nb", b": a\n:\n: b\n\n"),
    ],
)
def test_comment_frame(text: str, wire: bytes) -> None:
    """Each line becomes its own comment line, so a newline in the text cannot start a real field."""
    assert comment(text) == wire
    events, parser = parse(wire)
    assert events == []
    assert parser.comments == split_lines(text)


def test_comment_default_is_heartbeat() -> None:
    assert comment() == b":\n\n"


def test_retry_frame() -> None:
    assert retry_frame(1500) == b"retry: 1500\n\n"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("\t", None),
        ("42", "42"),
        ("  42 \t", "42"),
        ("1700000000000-3", "1700000000000-3"),
        ("a\rb", None),
        ("a\nb", None),
        ("a\0b", None),
        ("42\r\n", None),
        ("x" * 256, "x" * 256),
        ("x" * 257, None),
    ],
)
def test_parse_last_event_id(value: str | None, expected: str | None) -> None:
    """Untrusted header: blanks trimmed, empty means "no id", CR/LF/NUL and over-long values are dropped."""
    assert parse_last_event_id(value) == expected
