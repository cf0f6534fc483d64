"""Fan-out's direct HTTP/3 writes append DATA frames to the QUIC stream themselves (``h3_direct.data_frame``): the
bytes must be exactly those aioquic's ``H3Connection.send_data`` appends, at every varint length boundary."""

from __future__ import annotations

import pytest
from aioquic.h3.connection import FrameType, encode_frame
from aioquic.quic.packet_builder import QuicDeliveryState
from aioquic.quic.stream import QuicStreamSender
from hypothesis import given
from hypothesis import strategies as st

from gateway.web.hypercorn.h3_direct import append_data_frame, data_frame

pytestmark = pytest.mark.unit

BOUNDARIES = [0, 1, 63, 64, 16383, 16384, 70_000]  # where the length's varint grows (1, 2, 4 bytes)


@pytest.mark.parametrize("size", BOUNDARIES)
def test_data_frame_at_the_varint_boundaries(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert data_frame(data) == encode_frame(FrameType.DATA, data)


@given(st.binary(max_size=2048))
def test_data_frame_is_aioquics(data: bytes) -> None:
    assert data_frame(data) == encode_frame(FrameType.DATA, data)


def _state(sender: QuicStreamSender) -> tuple[object, ...]:
    return (bytes(sender._buffer), sender._buffer_start, sender._buffer_stop, list(sender._pending),
            sender.buffer_is_empty, sender.highest_offset, sender.next_offset)


# A sender's life as a list of steps: write an event, send a frame of at most n bytes, lose or acknowledge what
# was sent last: pending ranges with gaps, ranges that end at the buffer's end or before it.
STEPS = st.lists(st.one_of(st.tuples(st.just("write"), st.binary(max_size=300)),
                           st.tuples(st.just("send"), st.integers(min_value=1, max_value=500)),
                           st.tuples(st.just("lose"), st.none()), st.tuples(st.just("ack"), st.none())),
                 max_size=40)


@given(STEPS)
def test_appending_a_frame_is_aioquics_write(steps: list[tuple[str, object]]) -> None:
    ours, theirs = QuicStreamSender(0, True), QuicStreamSender(0, True)
    sent: list[tuple[int, int]] = []
    for step, arg in steps:
        if step == "write":
            assert isinstance(arg, bytes)
            append_data_frame(ours, arg)
            theirs.write(data_frame(arg))
        elif step == "send":
            assert isinstance(arg, int)
            frames = [sender.get_frame(arg) for sender in (ours, theirs)]
            if frames[0] is not None:
                assert frames[1] is not None
                assert (frames[0].offset, frames[0].data) == (frames[1].offset, frames[1].data)
                sent.append((frames[0].offset, frames[0].offset + len(frames[0].data)))
        elif sent:
            start, stop = sent.pop()
            delivery = QuicDeliveryState.LOST if step == "lose" else QuicDeliveryState.ACKED
            for sender in (ours, theirs):
                sender.on_data_delivery(delivery, start, stop, False)
        assert _state(ours) == _state(theirs)
