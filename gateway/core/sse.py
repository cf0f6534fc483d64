"""The Server-Sent-Events wire format, both ways, without I/O.

Encoding follows the WHATWG "event stream interpretation" rules so that any conforming parser (a browser's
``EventSource``) reads back exactly what was sent:
- ``data`` may hold any text: it is split on CRLF, CR and LF into one ``data:`` line per line, and the parser
  joins them with LF again (so CRLF and CR come back as LF, which is the format's own normal form);
- ``event`` and ``id`` are single-line fields: CR, LF or NUL in them would inject fields, so they are refused;
- every field is written as ``name: value`` so that a value starting with a space keeps it (the parser strips
  exactly one).

The parser is the spec's algorithm as a push parser: ``feed(bytes)`` returns the events completed by those
bytes, whatever the chunk boundaries (even inside a UTF-8 sequence or between CR and LF).
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field

_FORBIDDEN = ("\r", "\n", "\0")


def check_single_line(name: str, value: str) -> None:
    """Refuse a value for the single-line field ``name`` (event, id) that holds CR, LF or NUL (field injection)."""
    for ch in _FORBIDDEN:
        if ch in value:
            raise ValueError(f"SSE {name} must not contain CR, LF or NUL: {value!r}")


def split_lines(text: str) -> list[str]:
    """Split on CRLF, CR and LF, the three line ends of the event-stream format."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n")


@dataclass(frozen=True, slots=True)
class Event:
    """One SSE message. ``data=None`` sends no data field (useful for an id- or retry-only frame)."""

    data: str | None = None
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    comment: str | None = None

    def __post_init__(self) -> None:
        if self.event is not None:
            check_single_line("event", self.event)
        if self.id is not None:
            check_single_line("id", self.id)
        if self.retry is not None and (
            isinstance(self.retry, bool) or not isinstance(self.retry, int) or self.retry < 0
        ):
            raise ValueError(f"SSE retry must be a non-negative integer of milliseconds: {self.retry!r}")

    def encode(self) -> bytes:
        """The frame as UTF-8 bytes, terminated by the blank line that dispatches it."""
        parts: list[str] = []
        if self.comment is not None:
            parts.extend(f": {line}\n" for line in split_lines(self.comment))
        if self.retry is not None:
            parts.append(f"retry: {self.retry}\n")
        if self.event is not None:
            parts.append(f"event: {self.event}\n")
        if self.id is not None:
            parts.append(f"id: {self.id}\n")
        if self.data is not None:
            parts.extend(f"data: {line}\n" for line in split_lines(self.data))
        parts.append("\n")
        return "".join(parts).encode("utf-8")


def encode_message(data: str, *, event: str | None = None, id: str | None = None) -> bytes:
    """``Event(data=data, event=event, id=id).encode()`` (the same checks, the same bytes) without building the
    event: the frame of every hub publish and every view render."""
    head = ""
    if event is not None:
        check_single_line("event", event)
        head = f"event: {event}\n"
    if id is not None:
        check_single_line("id", id)
        head += f"id: {id}\n"
    if "\r" in data:
        data = data.replace("\r\n", "\n").replace("\r", "\n")
    return (head + "data: " + data.replace("\n", "\ndata: ") + "\n\n").encode()


def comment(text: str = "") -> bytes:
    """A comment frame: ignored by parsers, used as heartbeat and to push headers out early."""
    return b"".join(f":{' ' if line else ''}{line}\n".encode() for line in split_lines(text)) + b"\n"


def retry_frame(milliseconds: int) -> bytes:
    """Sets the client's reconnection delay without dispatching an event."""
    return Event(retry=milliseconds).encode()


def parse_last_event_id(value: str | None) -> str | None:
    """Normalise a ``Last-Event-ID`` header or ``lastEventId`` parameter; unusable values become ``None``.

    The spec makes a client drop an id containing NUL, and an empty header means "no id"; a value with CR/LF
    cannot have come from this gateway, so it is treated as absent rather than trusted.
    """
    if value is None:
        return None
    value = value.strip(" \t")
    if not value or any(ch in value for ch in _FORBIDDEN) or len(value) > 256:
        return None
    return value


@dataclass(frozen=True, slots=True)
class ParsedEvent:
    """An event as a conforming client dispatches it."""

    data: str
    event: str = "message"
    id: str | None = None


@dataclass(slots=True)
class SSEParser:
    """Incremental, spec-conformant event-stream parser (for tests, the load generator and clients)."""

    last_event_id: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)
    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )
    _buffer: str = ""
    _data: list[str] = field(default_factory=list)
    _event: str = ""
    _started: bool = False
    _pending_cr: bool = False

    def feed(self, chunk: bytes) -> list[ParsedEvent]:
        """Consume bytes; return the events they complete, in order."""
        text = self._decoder.decode(chunk)
        if not self._started and text:
            self._started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        if self._pending_cr and text:
            self._pending_cr = False
            if text.startswith("\n"):
                text = text[1:]
        buf = self._buffer + text
        events: list[ParsedEvent] = []
        start = 0
        n = len(buf)
        while True:
            lf = buf.find("\n", start)
            cr = buf.find("\r", start)
            if lf < 0 and cr < 0:
                break
            if cr < 0 or (0 <= lf < cr):
                end, nxt = lf, lf + 1
            elif cr == n - 1:
                # CR at the very end: the line is complete, but a following LF belongs to it.
                end, nxt = cr, cr + 1
                self._pending_cr = True
            else:
                end = cr
                nxt = cr + 2 if buf[cr + 1] == "\n" else cr + 1
            self._line(buf[start:end], events)
            start = nxt
        self._buffer = buf[start:]
        return events

    def _line(self, line: str, events: list[ParsedEvent]) -> None:
        if not line:
            self._dispatch(events)
            return
        if line[0] == ":":
            self.comments.append(line[1:].removeprefix(" "))
            return
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_event_id = value or None
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)

    def _dispatch(self, events: list[ParsedEvent]) -> None:
        if self._data:
            events.append(ParsedEvent("\n".join(self._data), self._event or "message", self.last_event_id))
        self._data = []
        self._event = ""
