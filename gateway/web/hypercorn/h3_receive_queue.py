"""HTTP/3 drops every datagram past ten waiting to be handled (Hypercorn 0.18.0).

Defect: Hypercorn's ``UDPServer`` puts each received datagram on an ``asyncio.Queue(10)`` that one task drains,
handling one datagram at a time (and a datagram that opens request streams or flushes events can take a while);
``datagram_received`` throws away whatever does not fit. A few busy clients send more than ten datagrams while one
is handled, so the server loses their ACKs and requests: their packets are retransmitted after a probe timeout
that doubles each time, their congestion windows collapse, and the streams stall. Measured with the load
generator (``benchmarks/loadgen/h3.py``), 1,000 SSE streams over ten QUIC connections on one core: 3-30% of the
streams had no response head after 10 s, and no event reached any stream for 15 s after a publish; with aioquic's
own client, which acknowledges more often, the heads took 8-11 s. With this correction every stream opened and
every event arrived, run after run.

Correction: the queue holds ``RECEIVE_QUEUE`` datagrams (at most ~1.5 KiB each, so ~6 MiB), enough for every
connection the gateway admits to have a flight in it; past that, datagrams are still dropped, so memory stays
bounded whatever the clients send.

Upstream: Hypercorn has no issue for it (``hypercorn/asyncio/udp_server.py``, ``asyncio.Queue(10)``, unchanged
since HTTP/3 support was added). The upstream fix: a configurable bound, or handling the datagram in
``datagram_received`` as aioquic's own server does.

Test that fails without it: ``tests/test_loadgen.py::test_h3_receive_queue_keeps_a_burst_of_datagrams``.

Remove it when Hypercorn's UDP server keeps a burst of datagrams: pin it, delete this module, and the test above
must still pass.
"""

from __future__ import annotations

import asyncio
from typing import Any

RECEIVE_QUEUE = 4096  # datagrams waiting to be handled, per UDP listener


def install() -> None:
    from hypercorn.asyncio.udp_server import UDPServer

    original_init = UDPServer.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.protocol_queue = asyncio.Queue(RECEIVE_QUEUE)

    UDPServer.__init__ = __init__  # type: ignore[method-assign]
