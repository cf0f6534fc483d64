"""A hub event: validated once where it enters, encoded once into the bytes the bus carries and subscribers get.

``HubEvent`` checks its fields when it is built (topic, single-line event type and id, sizes) and its ``payload``
is what goes on the bus: the SSE fields of the event, already encoded, behind the publisher's id. Fan-out turns a
payload into the frame a subscriber receives by prefixing one ``id:`` line (the publisher's id, or the bus version
when it gave none); no JSON decode or SSE re-encode happens per delivery or per replay.

Payload layout: ``sse2 <published> <id>\\n`` + the event's ``event:`` and ``data:`` lines and the blank line that ends
it. ``published`` is the publisher's wall clock (seconds since the epoch, as text), from which every process
measures the event's bus lag and delivery latency; an id cannot hold a line feed, so the first one ends the header.
``sse1 <id>\\n`` payloads (written before the timestamp was added, still in a topic's history during an upgrade)
decode without one. Anything else on a hub topic (written by hand) is not understood: ``decode`` raises
``UnknownPayload``, and fan-out counts and skips it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import orjson

from gateway.core.sse import check_single_line, encode_message
from gateway.core.topics import check_topic

_MAGIC = b"sse2 "
_MAGIC_V1 = b"sse1 "
MAX_FIELD = 256  # characters of an event type or id


class UnknownPayload(ValueError):
    """A hub notification whose payload is not an encoded ``HubEvent``."""


class InvalidField(ValueError):
    """A ``HubEvent`` field that cannot be sent; ``field`` names it (``topic``, ``event`` or ``id``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class HubEvent:
    """One event for the subscribers of ``topic``; ``data`` is text (JSON values are serialised by ``of``).

    Its fields are checked here, once, wherever an event enters (the publish endpoint, ``Gateway.publish``):
    ``InvalidField`` says which field and why."""

    topic: str
    data: str
    event: str | None = None
    id: str | None = None

    def __post_init__(self) -> None:
        try:
            check_topic(self.topic)
        except ValueError as exc:
            raise InvalidField("topic", str(exc)) from None
        for name in ("event", "id"):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                check_single_line(name, value)  # CR, LF or NUL would inject SSE fields
            except ValueError as exc:
                raise InvalidField(name, f"{name}: {exc}") from None
            if not 1 <= len(value) <= MAX_FIELD:
                raise InvalidField(name, f"{name}: must be 1-{MAX_FIELD} characters")

    @classmethod
    def of(cls, topic: str, data: object, *, event: str | None = None, id: str | None = None) -> HubEvent:
        """An event whose data is ``data`` as it is when text, else its JSON serialisation."""
        text = data if isinstance(data, str) else orjson.dumps(data).decode()
        return cls(topic, text, event, id)

    @property
    def payload(self) -> bytes:
        """The bytes the bus carries for this event, stamped with the time of this call (its publication)."""
        return self.stamped(time.time())

    def stamped(self, published: float) -> bytes:
        fields = encode_message(self.data, event=self.event)
        return b"%s%.6f %s\n%s" % (_MAGIC, published, (self.id or "").encode(), fields)


@dataclass(frozen=True, slots=True)
class HubFrame:
    """A hub notification ready to send: its SSE id, its complete frame, and when it was published (None for a
    payload without the timestamp)."""

    id: str
    data: bytes
    published: float | None = None


def _header(payload: bytes) -> tuple[bytes, float | None, int]:
    """The publisher's id, the publication time and the end of the header line; raises ``UnknownPayload``."""
    end = payload.find(b"\n")
    if end < 0:
        raise UnknownPayload("truncated hub event")
    if payload.startswith(_MAGIC):
        stamp, sep, given = payload[len(_MAGIC):end].partition(b" ")
        try:
            value = float(stamp)
        except ValueError:
            raise UnknownPayload("hub event with a malformed timestamp") from None
        if not sep:
            raise UnknownPayload("hub event header without an id field")
        return given, value if math.isfinite(value) else None, end
    if payload.startswith(_MAGIC_V1):
        return payload[len(_MAGIC_V1):end], None, end
    raise UnknownPayload("not an encoded hub event")


def decode(payload: bytes, version: str) -> HubFrame:
    """The frame of a hub notification stamped ``version`` by the bus; raises ``UnknownPayload``."""
    given, published, end = _header(payload)
    if not payload.endswith(b"\n\n"):
        raise UnknownPayload("truncated hub event")
    event_id = given or version.encode()
    return HubFrame(event_id.decode("utf-8", "replace"), b"id: " + event_id + b"\n" + payload[end + 1:], published)


def event_id(payload: bytes, version: str) -> str:
    """The SSE id a hub notification is sent with (the publisher's, or else the bus version)."""
    try:
        given, _, _ = _header(payload)
    except UnknownPayload:
        return version
    return given.decode("utf-8", "replace") if given else version
