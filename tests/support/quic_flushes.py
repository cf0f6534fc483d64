"""Counting how often a gateway process builds QUIC packets for its connections, from outside it.

Hypercorn's ``QuicProtocol.send_all`` asks aioquic for its datagrams and then for its next timer (``get_timer``)
after every write of every HTTP/3 stream; ``gateway.web.hypercorn.h3_send_coalescing`` does both once per flush
of a connection. Either way one ``get_timer`` call is one packet-building pass, so counting those calls counts
sends. The gateway has no such counter (it would cost a call per flush for nothing in production), so a
``sitecustomize`` module on the process's ``PYTHONPATH`` wraps ``QuicConnection.get_timer`` and keeps the count
in a file: the same trick ``tests/test_hypercorn_corrections.py`` uses to fake a version, with no test hook in the
product.
"""

from __future__ import annotations

import os
from pathlib import Path

SITECUSTOMIZE = """\
import os
from aioquic.quic.connection import QuicConnection

_real = QuicConnection.get_timer
_count = [0]


def get_timer(self):
    _count[0] += 1
    with open({temporary!r}, "w") as out:
        out.write(str(_count[0]))
    os.replace({temporary!r}, {path!r})
    return _real(self)


QuicConnection.get_timer = get_timer
"""


class FlushProbe:
    """``env`` makes a gateway process count its packet-building passes; ``count()`` reads the count so far."""

    def __init__(self, directory: Path) -> None:
        site = directory / "flush-probe"
        site.mkdir()
        self.path = directory / "flushes"
        (site / "sitecustomize.py").write_text(
            SITECUSTOMIZE.format(path=str(self.path), temporary=str(directory / "flushes.tmp")))
        self.env = {"PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)}

    def count(self) -> int:
        """Passes so far (0 before the first): a small local file, replaced whole on every pass."""
        try:
            return int(self.path.read_text() or 0)
        except FileNotFoundError:
            return 0


ORDER_SITECUSTOMIZE = """\
import os
from aioquic.quic.connection import QuicConnection
from aioquic.quic.stream import QuicStreamSender

_timer = QuicConnection.get_timer
_write = QuicStreamSender.write
_log = []


def get_timer(self):
    _log.append("f")
    with open({temporary!r}, "w") as out:
        out.write("".join(_log))
    os.replace({temporary!r}, {path!r})
    return _timer(self)


def write(self, data, end_stream=False):
    _log.append("w")
    return _write(self, data, end_stream)


QuicConnection.get_timer = get_timer
QuicStreamSender.write = write
"""


class OrderProbe:
    """``env`` makes a gateway process log, in order, every write to a QUIC stream's send buffer (``w``) and every
    packet-building pass (``f``); ``log()`` reads the log as of the last pass."""

    def __init__(self, directory: Path) -> None:
        site = directory / "order-probe"
        site.mkdir()
        self.path = directory / "order"
        (site / "sitecustomize.py").write_text(
            ORDER_SITECUSTOMIZE.format(path=str(self.path), temporary=str(directory / "order.tmp")))
        self.env = {"PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)}

    def log(self) -> str:
        try:
            return self.path.read_text()
        except FileNotFoundError:
            return ""
