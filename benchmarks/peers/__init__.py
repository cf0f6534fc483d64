"""The servers the benchmark compares against, each started and stopped by the harness.

Every peer is one process or worker (so CPU time compares fairly), listens on a free loopback port, is pinned to
the CPU it is given, has the hard open-files limit and room for 10,000+ streams, logs to a file in the work
directory and sends heartbeats, if any, no more often than every 15 s::

    peer = PEERS["nchan"]
    if (why := peer.missing()) is None:
        with peer.start(workdir, cpu=0) as target:
            request = target.publish("prices", '{"eur": 1.08}')
            ...  # GET target.subscribe_path("prices") with Accept: text/event-stream, send `request`

Importing this package starts nothing and needs none of the peers' packages: the apps are loaded by the server
processes only.
"""

from __future__ import annotations

from benchmarks.peers.base import Peer, PublishRequest, Target
from benchmarks.peers.gateway import GatewayPeer
from benchmarks.peers.nchan import NchanPeer
from benchmarks.peers.python_apps import NaiveQuartPeer, StarlettePeer

__all__ = ["PEERS", "GatewayPeer", "NaiveQuartPeer", "NchanPeer", "Peer", "PublishRequest", "StarlettePeer", "Target"]

PEERS: dict[str, Peer] = {
    peer.name: peer
    for peer in (
        GatewayPeer(),
        NchanPeer(),
        StarlettePeer(),
        NaiveQuartPeer(),
        NaiveQuartPeer(
            brotli=True,
            name="naive-quart-br",
            description="naive-quart with a Brotli compressor per stream (q4, 64 KiB window), flushed per event",
        ),
    )
}
