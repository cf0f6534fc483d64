"""Fan-out's direct HTTP/3 writes append DATA frames to the QUIC stream themselves (``h3_direct.data_frame``): the
bytes must be exactly those aioquic's ``H3Connection.send_data`` appends, at every varint length boundary."""

from __future__ import annotations

import pytest
from aioquic.h3.connection import FrameType, encode_frame
from hypothesis import given
from hypothesis import strategies as st

from gateway.web.hypercorn.h3_direct import data_frame

pytestmark = pytest.mark.unit

BOUNDARIES = [0, 1, 63, 64, 16383, 16384, 70_000]  # where the length's varint grows (1, 2, 4 bytes)


@pytest.mark.parametrize("size", BOUNDARIES)
def test_data_frame_at_the_varint_boundaries(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert data_frame(data) == encode_frame(FrameType.DATA, data)


@given(st.binary(max_size=2048))
def test_data_frame_is_aioquics(data: bytes) -> None:
    assert data_frame(data) == encode_frame(FrameType.DATA, data)
