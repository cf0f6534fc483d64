"""Timestamps that travel with changes: view stamps and hub payloads, read back in any process."""

from __future__ import annotations

import time

import pytest

from gateway.core import hub, stamps
from gateway.core.hub import HubEvent, UnknownPayload

pytestmark = pytest.mark.unit


def test_a_view_stamp_round_trips_with_or_without_an_origin() -> None:
    assert stamps.read(stamps.stamp(1700000000.25, 1700000000.5)) == (1700000000.25, 1700000000.5)
    assert stamps.read(stamps.stamp(None, 1700000000.5)) == (None, 1700000000.5)


@pytest.mark.parametrize("payload", [b"", b"app payload", b"ts1 nan inf", b"ts1 x", b"ts1 "])
def test_anything_else_has_no_stamp(payload: bytes) -> None:
    assert stamps.read(payload) == (None, None)


def test_a_hub_payload_carries_its_publication_time() -> None:
    before = time.time()
    frame = hub.decode(HubEvent("t", "x y", id="my id").payload, "5")
    assert frame.published is not None
    assert before <= frame.published <= time.time()
    assert frame.id == "my id"  # an id may hold spaces: the timestamp comes first
    assert frame.data == b"id: my id\ndata: x y\n\n"
    assert hub.event_id(HubEvent("t", "x", id="my id").payload, "5") == "my id"
    assert hub.decode(HubEvent("t", "x").payload, "5").id == "5"


def test_a_payload_from_before_the_timestamp_still_decodes() -> None:
    frame = hub.decode(b"sse1 p-1\ndata: x\n\n", "5")
    assert (frame.id, frame.data, frame.published) == ("p-1", b"id: p-1\ndata: x\n\n", None)
    assert hub.event_id(b"sse1 \ndata: x\n\n", "5") == "5"


@pytest.mark.parametrize("payload", [b"sse2 notanumber id\ndata: x\n\n", b"sse2 12.5\ndata: x\n\n",
                                     b"sse2 12.5 id", b"sse3 1 x\ndata: x\n\n"])
def test_a_malformed_hub_payload_is_refused(payload: bytes) -> None:
    with pytest.raises(UnknownPayload):
        hub.decode(payload, "5")
