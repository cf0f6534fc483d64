"""When a change began, carried with it across processes, so that every process can say how late it delivers.

A view change is announced with an empty payload; the gateway stamps it (``stamp``) with two wall-clock instants:
``origin``, when the change began (the command that made it was accepted, possibly in another process), and
``published``, when it went on the bus. Fan-out reads them back (``read``) to measure the bus lag (``published`` to
fan-out) and the delivery latency (``origin`` to the bytes handed to a client's socket). A hub event carries its
publication time in its own payload (``gateway.core.hub``), which is its origin too.

Wall clocks: across machines the measures include their clock offset (keep them NTP-synchronised); a negative
duration (a clock stepped back) is counted as zero rather than dropped, so counts stay comparable.

Format: ``ts1 <origin> <published>`` (seconds since the epoch, ``-`` for an unknown origin), followed by
`` <traceparent>`` when the change was made inside a sampled trace (``gateway.tracing``): the W3C ``traceparent`` of
the publish, which fan-out's render and delivery spans hang from (``trace``). A stamp without it reads as before;
with tracing off nothing is appended, so the stamp is byte for byte the old one. An application's own payload
(anything else) is left alone and simply has no stamp.
"""

from __future__ import annotations

import math

__all__ = ["read", "stamp", "trace"]

_MAGIC = b"ts1 "


_TRACE_CHARS = frozenset(b"0123456789abcdef-")
_MAX_TRACE = 128  # a W3C traceparent is 55 characters (version 00); later versions may add fields


def stamp(origin: float | None, published: float, trace: str | None = None) -> bytes:
    """The payload of a view change that began at ``origin`` and is published at ``published`` (inside the trace
    whose ``traceparent`` is ``trace``, when traced)."""
    first = b"-" if origin is None else b"%.6f" % origin
    stamped = b"%s%s %.6f" % (_MAGIC, first, published)
    if trace:
        encoded = trace.encode("ascii", "replace")
        if len(encoded) <= _MAX_TRACE and _TRACE_CHARS.issuperset(encoded):
            stamped += b" " + encoded
    return stamped


def read(payload: bytes) -> tuple[float | None, float | None]:
    """``(origin, published)`` of a stamped payload; ``(None, None)`` for anything else."""
    if not payload.startswith(_MAGIC):
        return None, None
    first, _, rest = payload[len(_MAGIC):].partition(b" ")
    return _instant(first), _instant(rest.partition(b" ")[0])


def trace(payload: bytes) -> str | None:
    """The ``traceparent`` a stamp carries, or None (an untraced or older stamp, or no stamp)."""
    if not payload.startswith(_MAGIC):
        return None
    fields = payload[len(_MAGIC):].split(b" ")
    if len(fields) < 3 or not fields[2] or len(fields[2]) > _MAX_TRACE or not _TRACE_CHARS.issuperset(fields[2]):
        return None
    return fields[2].decode("ascii")


def _instant(text: bytes) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
