"""HTTP/3 address validation (Retry) and the QUIC connection cap, on a real gateway over loopback UDP.

``gateway.web.hypercorn.quic_retry``: a new client's first Initial gets a Retry, a token that does not belong to
the address presenting it opens nothing, and past ``limits.max_quic_connections`` a new connection is refused
while the open ones keep working.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from aioquic._buffer import Buffer
from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated
from aioquic.quic.packet import QuicErrorCode, QuicPacketType, pull_quic_header

from tests.support.h3client import H3Client, H3ConnectionClosed
from tests.support.metrics import metric, wait_metric
from tests.support.server import Server, start_server
from tests.support.wait import wait_until

pytestmark = [pytest.mark.live, pytest.mark.asyncio]

UDP_WAIT = 5.0  # seconds any one datagram from the gateway may take on loopback


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path]) -> Iterator[Server]:
    """A gateway with the defaults: Retry always."""
    srv = start_server(tmp_path_factory.mktemp("quic-retry"), certs)
    yield srv
    assert srv.stop() == 0, srv.output()


def _client_connection(token: bytes = b"") -> QuicConnection:
    configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, token=token)
    configuration.verify_mode = ssl.CERT_NONE
    return QuicConnection(configuration=configuration)


def _udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(UDP_WAIT)
    return sock


def _exchange(client: QuicConnection, sock: socket.socket, server: tuple[str, int]) -> bytes:
    """Send what ``client`` has to send from ``sock``; the first datagram the gateway answers."""
    for data, _ in client.datagrams_to_send(now=time.monotonic()):
        sock.sendto(data, server)
    return sock.recv(65536)


def _close_code(client: QuicConnection, datagram: bytes, server: tuple[str, int]) -> int | None:
    """The CONNECTION_CLOSE error code ``datagram`` carries for ``client``, or None if it closes nothing."""
    client.receive_datagram(datagram, server, now=time.monotonic())
    timer = client.get_timer()
    if timer is not None:  # a received CONNECTION_CLOSE is reported once the draining period ends: skip to it
        client.handle_timer(now=timer)
    while (event := client.next_event()) is not None:
        if isinstance(event, ConnectionTerminated):
            return event.error_code
    return None


def _packet_type(datagram: bytes) -> QuicPacketType:
    return pull_quic_header(Buffer(data=datagram), host_cid_length=8).packet_type


async def test_a_new_client_is_sent_a_retry_and_completes_its_request(gateway: Server) -> None:
    before = await metric(gateway.http, "gateway_quic_retries_total")
    async with H3Client("127.0.0.1", gateway.tls_port, verify=False) as client:
        response = await client.request("GET", "/healthz")
    assert response.status == 200
    # aioquic's client follows the Retry by itself: the gateway counted one for this connection.
    assert await metric(gateway.http, "gateway_quic_retries_total") == before + 1


async def test_a_token_presented_from_another_address_or_forged_opens_nothing(gateway: Server) -> None:
    server = ("127.0.0.1", gateway.tls_port)
    before = await metric(gateway.http, "gateway_quic_refused_total", reason="bad_token")
    client = _client_connection()
    client.connect(server, now=time.monotonic())
    with _udp_socket() as owner, _udp_socket() as other:
        retry = _exchange(client, owner, server)
        assert _packet_type(retry) == QuicPacketType.RETRY, "the first Initial was answered without a Retry"
        client.receive_datagram(retry, server, now=time.monotonic())
        # The Initial carrying the token, replayed from another port: the token binds address and port.
        answer = _exchange(client, other, server)
    assert _close_code(client, answer, server) == QuicErrorCode.INVALID_TOKEN

    forged = _client_connection(token=os.urandom(64))
    forged.connect(server, now=time.monotonic())
    with _udp_socket() as sock:
        answer = _exchange(forged, sock, server)
    assert _close_code(forged, answer, server) == QuicErrorCode.INVALID_TOKEN
    await wait_metric(gateway.http, "gateway_quic_refused_total", before + 2, reason="bad_token")


async def test_past_the_cap_a_new_connection_is_refused_and_the_open_ones_keep_working(
        tmp_path: Path, certs: tuple[Path, Path]) -> None:
    srv = start_server(tmp_path, certs, env={"GATEWAY_LIMITS_MAX_QUIC_CONNECTIONS": "2"})
    try:
        async with AsyncExitStack() as stack:
            first = await stack.enter_async_context(H3Client("127.0.0.1", srv.tls_port, verify=False, timeout=5))
            second = await stack.enter_async_context(H3Client("127.0.0.1", srv.tls_port, verify=False, timeout=5))
            with pytest.raises(H3ConnectionClosed) as refused:
                async with H3Client("127.0.0.1", srv.tls_port, verify=False, timeout=5):
                    pass
            assert refused.value.error_code == QuicErrorCode.CONNECTION_REFUSED
            assert await metric(srv.http, "gateway_quic_refused_total", reason="cap") == 1
            for client in (first, second):
                assert (await client.request("GET", "/healthz")).status == 200
            await first.close()  # CONNECTION_CLOSE: the gateway ends it after its draining period

            async def admitted() -> bool:
                try:
                    async with H3Client("127.0.0.1", srv.tls_port, verify=False, timeout=2) as client:
                        return (await client.request("GET", "/healthz")).status == 200
                except H3ConnectionClosed:
                    return False

            await wait_until(admitted, 15, what="a new HTTP/3 connection admitted once one of the two closed")
            assert (await second.request("GET", "/healthz")).status == 200
    finally:
        assert srv.stop() == 0, srv.output()
