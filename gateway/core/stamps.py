"""When a change began, carried with it across processes, so that every process can say how late it delivers.

A view change is announced with an empty payload; the gateway stamps it (``stamp``) with two wall-clock instants:
``origin``, when the change began (the command that made it was accepted, possibly in another process), and
``published``, when it went on the bus. Fan-out reads them back (``read``) to measure the bus lag (``published`` to
fan-out) and the delivery latency (``origin`` to the bytes handed to a client's socket). A hub event carries its
publication time in its own payload (``gateway.core.hub``), which is its origin too.

Wall clocks: across machines the measures include their clock offset (keep them NTP-synchronised); a negative
duration (a clock stepped back) is counted as zero rather than dropped, so counts stay comparable.

Format: ``ts1 <origin> <published>`` (seconds since the epoch, ``-`` for an unknown origin). An application's own
payload (anything else) is left alone and simply has no stamp.
"""

from __future__ import annotations

import math

__all__ = ["read", "stamp"]

_MAGIC = b"ts1 "


def stamp(origin: float | None, published: float) -> bytes:
    """The payload of a view change that began at ``origin`` and is published at ``published``."""
    first = b"-" if origin is None else b"%.6f" % origin
    return b"%s%s %.6f" % (_MAGIC, first, published)


def read(payload: bytes) -> tuple[float | None, float | None]:
    """``(origin, published)`` of a stamped payload; ``(None, None)`` for anything else."""
    if not payload.startswith(_MAGIC):
        return None, None
    first, _, second = payload[len(_MAGIC):].partition(b" ")
    return _instant(first), _instant(second)


def _instant(text: bytes) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
