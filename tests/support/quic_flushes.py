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


class _SiteProbe:
    """A ``sitecustomize`` (``template``, given the file it writes) that a gateway process started with ``env``
    imports first; what it records is in ``path``, replaced whole each time."""

    def __init__(self, directory: Path, name: str, template: str) -> None:
        site = directory / f"{name}-probe"
        site.mkdir()
        self.path = directory / name
        (site / "sitecustomize.py").write_text(
            template.format(path=str(self.path), temporary=str(directory / f"{name}.tmp")))
        self.env = {"PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)}


class FlushProbe(_SiteProbe):
    """``env`` makes a gateway process count its packet-building passes; ``count()`` reads the count so far."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, "flushes", SITECUSTOMIZE)

    def count(self) -> int:
        """Passes so far (0 before the first): a small local file, replaced whole on every pass."""
        try:
            return int(self.path.read_text() or 0)
        except FileNotFoundError:
            return 0


WRITTEN_SITECUSTOMIZE = """\
import os
import weakref
from aioquic.quic.connection import QuicConnection

_timer = QuicConnection.get_timer
_known = weakref.WeakSet()
_log = []


def get_timer(self):
    _known.add(self)
    _log.append(str(sum(stream.sender._buffer_stop for quic in list(_known) for stream in quic._streams.values())))
    with open({temporary!r}, "w") as out:
        out.write(",".join(_log))
    os.replace({temporary!r}, {path!r})
    return _timer(self)


QuicConnection.get_timer = get_timer
"""


class WrittenProbe(_SiteProbe):
    """``env`` makes a gateway process note, at every packet-building pass, how many bytes have been written to the
    QUIC streams of every connection it has built packets for so far; ``totals()`` reads them, oldest first."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, "written", WRITTEN_SITECUSTOMIZE)

    def totals(self) -> list[int]:
        try:
            return [int(total) for total in self.path.read_text().split(",") if total]
        except FileNotFoundError:
            return []
