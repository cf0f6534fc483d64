"""HTTP/3 sends coalesced per connection and round (``gateway.web.hypercorn.h3_send_coalescing``), on a real gateway
over loopback UDP: many hub streams sharing one QUIC connection receive every event, in order; an event to all of
them is one packet-building pass, not one per stream; a stream reset by its client and a connection closed in the
middle of a broadcast cost the other streams nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.h3client import H3Client
from tests.support.h3readers import kept_and_dropped, publish, subscribed
from tests.support.metrics import wait_metric
from tests.support.quic_flushes import FlushProbe, WrittenProbe
from tests.support.server import Server, start_server

pytestmark = [pytest.mark.live, pytest.mark.asyncio]

STREAMS = 60  # on one QUIC connection: Hypercorn alone builds packets once per stream's write, so 60+ per event
WAIT = 20.0  # seconds any one step may take on a loaded machine


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path]) -> Iterator[tuple[Server, FlushProbe]]:
    tmp = tmp_path_factory.mktemp("h3-coalescing")
    probe = FlushProbe(tmp)
    srv = start_server(tmp, certs, env=probe.env)
    yield srv, probe
    assert srv.stop() == 0, srv.output()
    assert "Traceback" not in srv.output(), srv.output()  # a flush or timer that failed is logged with one


async def test_one_event_to_many_streams_is_one_flush(gateway: tuple[Server, FlushProbe]) -> None:
    srv, probe = gateway
    async with (H3Client("127.0.0.1", srv.tls_port, verify=False, timeout=WAIT) as client,
                httpx.AsyncClient(base_url=srv.http, timeout=WAIT) as http,
                subscribed(client, "flushes", STREAMS, WAIT) as readers):
        await wait_metric(srv.http, "gateway_streams_active", STREAMS, WAIT, kind="hub")
        await publish(http, "flushes", ["warm-up"])  # every stream's task has written once, its state is made
        for reader in readers:
            assert await reader.at_least(1) == ["warm-up"]
        before = probe.count()
        await publish(http, "flushes", ["one"])
        for reader in readers:
            assert await reader.at_least(2) == ["warm-up", "one"]
        passes = probe.count() - before
    # Its writes leave in one flush; the client's ACKs of its packets each let a few more go (congestion control).
    # Without the correction: one pass per stream's write, STREAMS or more.
    assert 1 <= passes < STREAMS // 4, f"{passes} packet-building passes for one event to {STREAMS} streams"


async def test_many_streams_on_one_connection_get_every_event_in_order(gateway: tuple[Server, FlushProbe]) -> None:
    srv, _ = gateway
    sent = [f"event {n:03d} " + "x" * (n * 7 % 300) for n in range(40)]  # sizes vary: frames cross packets
    async with (H3Client("127.0.0.1", srv.tls_port, verify=False, timeout=WAIT) as client,
                httpx.AsyncClient(base_url=srv.http, timeout=WAIT) as http,
                subscribed(client, "order", STREAMS, WAIT) as readers):
        await wait_metric(srv.http, "gateway_streams_active", STREAMS, WAIT, kind="hub")
        await publish(http, "order", sent)
        for reader in readers:
            assert await reader.at_least(len(sent)) == sent


async def test_a_reset_stream_and_a_closed_connection_mid_broadcast_disturb_no_other(
    gateway: tuple[Server, FlushProbe]
) -> None:
    srv, _ = gateway
    sent = [f"event {n:03d}" for n in range(60)]
    async with kept_and_dropped(srv, "mid", WAIT) as two:  # (once the other tests' streams are gone)
        readers, doomed = two.readers, two.doomed
        publishing = asyncio.create_task(publish(two.http, "mid", sent))
        await readers[0].at_least(15)
        assert not publishing.done(), "the broadcast ended before the reset: publish more events"
        readers[-1].stream.cancel()  # RESET_STREAM + STOP_SENDING, as a browser dropping an EventSource
        await two.dropped.close()  # CONNECTION_CLOSE with ten streams open
        await publishing
        for reader in readers[:-1]:
            assert await reader.at_least(len(sent)) == sent
        assert all(len(reader.data) < len(sent) for reader in doomed)
        # The gateway closed the reset stream and the closed connection's ten, and nothing else.
        await wait_metric(srv.http, "gateway_streams_active", 29, WAIT, kind="hub")


async def test_each_connection_is_flushed_as_soon_as_its_streams_are_written(
    tmp_path: Path, certs: tuple[Path, Path]
) -> None:
    """Fan-out's direct writes to two connections: the first one's packets are built before the second one's
    streams are written (not once every stream of the round is), so they leave while fan-out works on the rest."""
    probe = WrittenProbe(tmp_path)
    srv = start_server(tmp_path, certs, env=probe.env)
    streams = 20
    try:
        async with (H3Client("127.0.0.1", srv.tls_port, verify=False, timeout=WAIT) as first,
                    H3Client("127.0.0.1", srv.tls_port, verify=False, timeout=WAIT) as second,
                    httpx.AsyncClient(base_url=srv.http, timeout=WAIT) as http,
                    subscribed(first, "early", streams, WAIT) as readers,
                    subscribed(second, "early", streams, WAIT) as others):
            await wait_metric(srv.http, "gateway_streams_active", 2 * streams, WAIT, kind="hub")
            await publish(http, "early", ["warm-up"])  # every stream's task has written once, its state is made
            for reader in (*readers, *others):
                assert await reader.at_least(1) == ["warm-up"]
            before = probe.totals()
            await publish(http, "early", ["one"])
            for reader in (*readers, *others):
                assert await reader.at_least(2) == ["warm-up", "one"]
            after = probe.totals()[len(before):]
    finally:
        assert srv.stop() == 0, srv.output()
    assert "Traceback" not in srv.output(), srv.output()
    written = before[-1]
    grown = [total - written for total in after if total > written]
    assert grown, after
    # The event's first pass saw one connection's frames written, not both connections'.
    assert grown[0] < grown[-1], f"the first pass after the event came once all its frames were written: {grown}"
