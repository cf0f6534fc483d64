"""Fan-out's direct writes to HTTP/3 streams (``gateway.web.hypercorn.h3_direct``), on a real gateway over loopback
UDP: many hub streams sharing one QUIC connection receive every event in order, and the writes are direct ones
(``gateway_stream_writes_total{path="direct"}``; with ``sse.h3_direct_writes`` off the same run takes none); a
stream reset by its client and a connection closed mid-broadcast cost the others nothing; a client that stops
reading (no flow-control credit) makes its stream fall back to the task path, where its slow-client rules cut it,
while the others on the same gateway keep receiving everything; Brotli streams decode event by event.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.h3client import H3Client
from tests.support.h3readers import kept_and_dropped, publish, stop_granting_credit, subscribed
from tests.support.metrics import metric, wait_metric
from tests.support.server import Server, start_server

pytestmark = [pytest.mark.live, pytest.mark.asyncio]

STREAMS = 40  # on one QUIC connection
WAIT = 20.0  # seconds any one step may take on a loaded machine
MAX_EVENTS = 20  # a hub subscriber's mailbox, in events, before it is cut off as too slow
BIG = 16 * 1024  # bytes of a big event: aioquic's 1 MiB stream window holds 64 of them


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path]) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("h3-direct")
    srv = start_server(tmp, certs, env={"GATEWAY_HUB_MAX_BUFFERED_EVENTS": str(MAX_EVENTS)})
    yield srv
    assert srv.stop() == 0, srv.output()
    assert "Traceback" not in srv.output(), srv.output()  # a direct write or flush that failed is logged with one


async def _direct(srv: Server) -> float:
    return await metric(srv.http, "gateway_stream_writes_total", kind="hub", path="direct")


@pytest.mark.parametrize("direct", [True, False], ids=["h3-direct", "h3-task-only"])
async def test_many_streams_on_one_connection_get_every_event_in_order(
    tmp_path: Path, certs: tuple[Path, Path], direct: bool
) -> None:
    srv = start_server(tmp_path, certs, env={"GATEWAY_SSE_H3_DIRECT_WRITES": str(direct).lower()})
    sent = [f"event {n:03d} " + "x" * (n * 7 % 300) for n in range(40)]  # sizes vary: frames cross packets
    try:
        async with (H3Client("127.0.0.1", srv.tls_port, verify=False, timeout=WAIT) as client,
                    httpx.AsyncClient(base_url=srv.http, timeout=WAIT) as http,
                    subscribed(client, "order", STREAMS, WAIT) as readers):
            await wait_metric(srv.http, "gateway_streams_active", STREAMS, WAIT, kind="hub")
            before = await _direct(srv)
            await publish(http, "order", sent)
            for reader in readers:
                assert await reader.at_least(len(sent)) == sent
            taken = await _direct(srv) - before
    finally:
        assert srv.stop() == 0, srv.output()
    assert "Traceback" not in srv.output(), srv.output()
    if direct:  # most writes direct: a stream is on the task path only while its previous write is in flight
        assert taken >= STREAMS * len(sent) / 2, f"{taken} direct writes for {STREAMS * len(sent)} events"
    else:
        assert taken == 0


async def test_a_reset_stream_and_a_closed_connection_mid_broadcast_disturb_no_other(gateway: Server) -> None:
    srv = gateway
    sent = [f"event {n:03d}" for n in range(60)]
    async with kept_and_dropped(srv, "mid", WAIT) as two:
        readers, doomed = two.readers, two.doomed
        before = await _direct(srv)
        await publish(two.http, "mid", sent[:15])
        await readers[0].at_least(15)
        readers[-1].stream.cancel()  # RESET_STREAM + STOP_SENDING, as a browser dropping an EventSource
        await two.dropped.close()  # CONNECTION_CLOSE with ten streams open
        await publish(two.http, "mid", sent[15:])
        for reader in readers[:-1]:
            assert await reader.at_least(len(sent)) == sent
        assert all(len(reader.data) < len(sent) for reader in doomed)
        # The gateway closed the reset stream and the closed connection's ten, and nothing else.
        await wait_metric(srv.http, "gateway_streams_active", 29, WAIT, kind="hub")
        assert await _direct(srv) - before >= 29 * len(sent) / 2


async def test_a_client_that_stops_reading_falls_back_to_the_task_path_and_is_cut(gateway: Server) -> None:
    srv = gateway
    sent = [f"big {n:03d} " + "y" * BIG for n in range(150)]  # 2.4 MB: past the 1 MiB window and every buffer
    await wait_metric(srv.http, "gateway_streams_active", 0, WAIT, kind="hub")
    cut = await metric(srv.http, "gateway_streams_closed_total", kind="hub", reason="slow_consumer")
    async with (H3Client("127.0.0.1", srv.tls_port, verify=False, timeout=WAIT) as healthy,
                H3Client("127.0.0.1", srv.tls_port, verify=False, timeout=WAIT) as stalled,
                httpx.AsyncClient(base_url=srv.http, timeout=WAIT) as http,
                subscribed(healthy, "slow", 5, WAIT) as readers,
                subscribed(stalled, "slow", 1, WAIT) as (stuck,)):
        await wait_metric(srv.http, "gateway_streams_active", 6, WAIT, kind="hub")
        stop_granting_credit(stalled)
        tasks_before = await metric(srv.http, "gateway_stream_writes_total", kind="hub", path="task")
        for n, data in enumerate(sent, 1):  # in step with the healthy readers, whose own pace is not on trial
            await publish(http, "slow", [data])
            for reader in readers:
                await reader.at_least(n)
        for reader in readers:
            assert reader.data == sent
        # Cut as a slow consumer (its mailbox overflowed while its task's send waited for credit), not earlier.
        await wait_metric(srv.http, "gateway_streams_closed_total", cut + 1, WAIT, kind="hub", reason="slow_consumer")
        await wait_metric(srv.http, "gateway_streams_active", 5, WAIT, kind="hub")
        tasks = await metric(srv.http, "gateway_stream_writes_total", kind="hub", path="task") - tasks_before
        assert tasks >= 1, "the stalled stream never took the task path"
        assert len(stuck.data) < len(sent)
        assert stuck.received <= (1 << 20) + 4096, "the server sent past the window the client granted"


async def test_brotli_streams_decode_every_event(gateway: Server) -> None:
    srv = gateway
    sent = [f'{{"n": {n}, "text": "{"abc" * (n % 50)}"}}' for n in range(50)]
    await wait_metric(srv.http, "gateway_streams_active", 0, WAIT, kind="hub")
    async with (H3Client("127.0.0.1", srv.tls_port, verify=False, timeout=WAIT) as client,
                httpx.AsyncClient(base_url=srv.http, timeout=WAIT) as http,
                subscribed(client, "br", 20, WAIT, headers={"accept-encoding": "br"}) as readers):
        await wait_metric(srv.http, "gateway_streams_active", 20, WAIT, kind="hub")
        assert all(reader.stream.header("content-encoding") == "br" for reader in readers)
        before = await _direct(srv)
        await publish(http, "br", sent)
        for reader in readers:
            assert await reader.at_least(len(sent)) == sent
        assert await _direct(srv) - before >= 20 * len(sent) / 2
