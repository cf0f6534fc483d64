"""Two real aioquic connections, a client and a server, joined in memory with a clock of their own.

For tests of what the gateway does inside aioquic's packet building (``h3_send_coalescing.datagrams``): every
datagram the server sends goes through it, the client is plain aioquic, and nothing runs on a socket or a timer,
so each step is deterministic and a test decides which datagrams are lost. ``step`` moves the clock, fires the
timers that are due and delivers what both sides have to send; every loop a test runs is bounded by a step count.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived, StreamReset

from gateway.web.hypercorn.h3_send_coalescing import datagrams

ADDRESS = ("127.0.0.1", 4433)
TICK = 0.005  # seconds of the pair's clock per step: a fifth of aioquic's ACK delay
MAX_STEPS = 5000  # a loop that has not converged by then has failed


class QuicPair:
    """A client connected to a server; ``received`` holds each stream's bytes as the client got them, in order."""

    def __init__(self, certs: tuple[Path, Path], *, max_stream_data: int = 1 << 20, max_data: int = 1 << 20,
                 drop: Callable[[int], bool] | None = None,
                 client_send: Callable[[QuicConnection, float], list[tuple[bytes, NetworkAddress]]] | None = None,
                 ) -> None:
        cert, key = certs
        server_config = QuicConfiguration(is_client=False, alpn_protocols=["h3"])
        server_config.load_cert_chain(cert, key)
        client_config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], max_stream_data=max_stream_data,
                                          max_data=max_data)
        client_config.verify_mode = 0
        self.now = 1000.0
        self.client = QuicConnection(configuration=client_config)
        self.client.connect(ADDRESS, now=self.now)
        self.server = QuicConnection(configuration=server_config,
                                     original_destination_connection_id=self.client.original_destination_connection_id)
        self.drop = drop or (lambda number: False)
        # how the client builds its datagrams: aioquic's own method, or the load generator's (``benchmarks.loadgen``)
        self.client_send = client_send or (lambda quic, now: quic.datagrams_to_send(now=now))
        self.sent = 0  # datagrams the server sent, lost ones included
        self.received: dict[int, bytearray] = {}
        self.reset: dict[int, int] = {}  # stream id -> error code of the server's RESET_STREAM
        self.ended: set[int] = set()
        self.terminated: ConnectionTerminated | None = None
        for _ in range(20):
            self.step()

    def open(self, count: int) -> list[int]:
        """``count`` request streams, each opened by a few bytes from the client; their ids, once the server has
        them."""
        ids = []
        for _ in range(count):
            stream_id = self.client.get_next_available_stream_id()
            self.client.send_stream_data(stream_id, b"GET", end_stream=False)
            ids.append(stream_id)
        self.until(lambda: all(stream_id in self.server._streams for stream_id in ids))
        return ids

    def step(self) -> None:
        self.now += TICK
        for quic in (self.server, self.client):
            timer = quic.get_timer()
            if timer is not None and timer <= self.now:
                quic.handle_timer(now=self.now)
        for data, _ in self.client_send(self.client, self.now):
            self.server.receive_datagram(data, ADDRESS, now=self.now)
        while self.server.next_event() is not None:
            pass
        out, _ = datagrams(self.server, self.now)
        assert len(self.server._streams_queue) == len(self.server._streams)
        assert set(map(id, self.server._streams_queue)) == set(map(id, self.server._streams.values()))
        for data, _ in out:
            self.sent += 1
            if not self.drop(self.sent):
                self.client.receive_datagram(data, ADDRESS, now=self.now)
        while (event := self.client.next_event()) is not None:
            self.on(event)

    def on(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self.received.setdefault(event.stream_id, bytearray()).extend(event.data)
            if event.end_stream:
                self.ended.add(event.stream_id)
        elif isinstance(event, StreamReset):
            self.reset[event.stream_id] = event.error_code
        elif isinstance(event, ConnectionTerminated):
            self.terminated = event

    def until(self, done: Callable[[], bool]) -> int:
        """Step until ``done()``; the steps it took. Fails past ``MAX_STEPS`` or if the connection ended."""
        for steps in range(MAX_STEPS):
            if done():
                return steps
            assert self.terminated is None, self.terminated
            self.step()
        raise AssertionError(f"not done after {MAX_STEPS} steps")
