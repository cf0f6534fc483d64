"""What a view's changes cost on the wire, read by a real HTTP/2 client through a real Brotli decoder.

httpx over h2 holds the view with ``Accept-Encoding: br``; the body is read raw (``aiter_raw``: still compressed)
and decoded chunk by chunk with the real ``brotli`` decoder (``tests.support.sse_client``), so a change's cost is
the compressed bytes that arrived until its event was complete. Changes are made one at a time, each awaited on
the stream before the next, so no version is conflated away and two views measured the same way are comparable.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from tests.support.sse_client import SSEReader

__all__ = ["ChangeCost", "cost_of_adds"]


@dataclass(frozen=True)
class ChangeCost:
    """One view's stream: the first event, then one entry per change."""

    http_version: str
    content_encoding: str
    first_event_bytes: int
    wire_bytes: Sequence[int]
    """Compressed bytes per change, as they came off the connection (HTTP/2 framing not counted)."""
    decoded_bytes: Sequence[int]
    """The same changes' SSE bytes after decoding, to show how much the compression saved."""

    @property
    def mean(self) -> float:
        return statistics.fmean(self.wire_bytes)

    def summary(self) -> str:
        return (f"{self.http_version} {self.content_encoding}: first event {self.first_event_bytes} B, then "
                f"{self.mean:.1f} B per change on the wire (median {statistics.median(self.wire_bytes)}, max "
                f"{max(self.wire_bytes)}) for {statistics.fmean(self.decoded_bytes):.0f} B decoded")


async def cost_of_adds(base: str, texts: Sequence[str], *, view: str = "/todos/updates",
                       command: str = "/todos/add", body: Mapping[str, Any] | None = None,
                       headers: Mapping[str, str] | None = None, timeout: float = 10.0) -> ChangeCost:
    """Hold ``view`` on ``base`` (an https URL) and POST ``command`` once per text, ``{"text": text, **body}``
    with ``headers``; each change counts once its event (the first whose data holds the text) is complete."""
    async with httpx.AsyncClient(http1=False, http2=True, verify=False, timeout=timeout) as client, \
            client.stream("GET", base + view, headers={"accept-encoding": "br"}) as response:
        assert response.status_code == 200, response.status_code
        encoding = response.headers.get("content-encoding", "identity")
        reader = SSEReader(response.aiter_raw(), encoding)
        await reader.next_event(timeout)
        first = reader.raw_bytes
        wire: list[int] = []
        decoded: list[int] = []
        for text in texts:
            raw_before, decoded_before = reader.raw_bytes, len(reader.decoded)
            posted = await client.post(base + command, json={"text": text, **(body or {})}, headers=headers)
            assert posted.status_code == 204, (posted.status_code, posted.text)
            await reader.until(lambda event, text=text: text in event.data, timeout)
            wire.append(reader.raw_bytes - raw_before)
            decoded.append(len(reader.decoded) - decoded_before)
        return ChangeCost(response.http_version, encoding, first, wire, decoded)
