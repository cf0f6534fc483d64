"""Clients that stop reading, made to bite on loopback, and what is left of their streams once they read again."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from gateway.core.sse import ParsedEvent
from tests.support.raw_stream import RawStream

# A receive buffer this small, and an Ethernet-sized MSS, keep the kernel from taking in megabytes for a client
# that reads nothing (on loopback its 64 KiB MSS would let the server's send buffer autotune to tcp_wmem's maximum).
RCVBUF = 4096
MSS = 1460


async def open_stalled(port: int, path: str, *, headers: dict[str, str] | None = None) -> RawStream:
    """An HTTP/1.1 SSE stream whose client reads the head and then nothing, until the test reads it."""
    return await RawStream.open(port, path, "identity", headers=headers, rcvbuf=RCVBUF, mss=MSS)


def kernel_send_buffer_max() -> int:
    """The most the kernel may ever buffer for one socket (``tcp_wmem``'s maximum; 4 MiB by default): a test
    that must see the gateway itself hold bytes for a stalled client sends more than this."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 * 1024 * 1024


async def read_until_gone(stream: RawStream, timeout: float = 20) -> list[ParsedEvent]:
    """Every event still on the way, until the response or the connection ends (a cut-off connection may be
    reset rather than closed: what arrived before counts)."""
    events: list[ParsedEvent] = []
    async with asyncio.timeout(timeout):
        while True:
            try:
                events.append(await stream.next_parsed(timeout))
            except (EOFError, asyncio.IncompleteReadError, ConnectionError):
                return events


async def close_now(*streams: RawStream, timeout: float = 5) -> None:
    """Close the client sockets and wait until they are closed: one closed with unread data answers the server
    with a reset, which fails a write the server has stuck on it at once, instead of at its deadline (a server
    stopped with such a write pending would wait that long to drain)."""
    for stream in streams:
        stream.close()
    for stream in streams:
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(stream.writer.wait_closed(), timeout)
