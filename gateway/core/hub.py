"""A hub event: validated once where it enters, encoded once into the bytes the bus carries and subscribers get.

``HubEvent`` checks its fields when it is built (topic, single-line event type and id, sizes) and its ``payload``
is what goes on the bus: the SSE fields of the event, already encoded, behind the publisher's id. Fan-out turns a
payload into the frame a subscriber receives by prefixing one ``id:`` line (the publisher's id, or the bus version
when it gave none); no JSON decode or SSE re-encode happens per delivery or per replay.

Payload layout: ``sse1 <id>\\n`` + the event's ``event:`` and ``data:`` lines and the blank line that ends it. An id
cannot hold a line feed, so the first one ends the header. Anything else on a hub topic (written by another
version, or by hand) is not understood: ``decode`` raises ``UnknownPayload``, and fan-out counts and skips it.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from gateway.core.sse import Event
from gateway.core.topics import check_topic

_MAGIC = b"sse1 "
MAX_FIELD = 256  # characters of an event type or id


class UnknownPayload(ValueError):
    """A hub notification whose payload is not an encoded ``HubEvent``."""


@dataclass(frozen=True, slots=True)
class HubEvent:
    """One event for the subscribers of ``topic``; ``data`` is text (JSON values are serialised by ``of``)."""

    topic: str
    data: str
    event: str | None = None
    id: str | None = None

    def __post_init__(self) -> None:
        check_topic(self.topic)
        for name in ("event", "id"):
            value = getattr(self, name)
            if value is not None and not 1 <= len(value) <= MAX_FIELD:
                raise ValueError(f"{name}: must be 1-{MAX_FIELD} characters")
        # Event() refuses CR, LF and NUL in the event type and id (SSE field injection).
        Event(data=self.data, event=self.event, id=self.id)

    @classmethod
    def of(cls, topic: str, data: object, *, event: str | None = None, id: str | None = None) -> HubEvent:
        """An event whose data is ``data`` as it is when text, else its JSON serialisation."""
        text = data if isinstance(data, str) else orjson.dumps(data).decode()
        return cls(topic, text, event, id)

    @property
    def payload(self) -> bytes:
        """The bytes the bus carries for this event."""
        fields = Event(data=self.data, event=self.event).encode()
        return _MAGIC + (self.id or "").encode() + b"\n" + fields


@dataclass(frozen=True, slots=True)
class HubFrame:
    """A hub notification ready to send: its SSE id and its complete frame."""

    id: str
    data: bytes


def decode(payload: bytes, version: str) -> HubFrame:
    """The frame of a hub notification stamped ``version`` by the bus; raises ``UnknownPayload``."""
    if not payload.startswith(_MAGIC):
        raise UnknownPayload("not an encoded hub event")
    end = payload.find(b"\n")
    if end < 0 or not payload.endswith(b"\n\n"):
        raise UnknownPayload("truncated hub event")
    given = payload[len(_MAGIC):end]
    event_id = given or version.encode()
    return HubFrame(event_id.decode("utf-8", "replace"), b"id: " + event_id + b"\n" + payload[end + 1:])


def event_id(payload: bytes, version: str) -> str:
    """The SSE id a hub notification is sent with (the publisher's, or else the bus version)."""
    if payload.startswith(_MAGIC):
        end = payload.find(b"\n")
        if end > len(_MAGIC):
            return payload[len(_MAGIC):end].decode("utf-8", "replace")
    return version
