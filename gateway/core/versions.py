"""State versions: opaque strings on the wire, totally ordered inside the gateway.

Every bus backend stamps each notification with a version that increases across *all* topics of that bus: the
in-memory bus uses a global counter (``"41"``), a Redis bus uses Stream ids (``"1700000000000-3"``). Because the
order is global, one ``Last-Event-ID`` can resume a subscription to several topics, and a view over several
topics can use the greatest version among them as its own state version.
"""

from __future__ import annotations

VersionKey = tuple[int, int]

ZERO = "0"


def version_key(version: str) -> VersionKey:
    """``"41"`` -> ``(41, 0)``, ``"1700000000000-3"`` -> ``(1700000000000, 3)``; anything else is ValueError."""
    head, sep, tail = version.partition("-")
    if not (version.isascii() and head.isdigit() and (not sep or tail.isdigit())) or len(version) > 40:
        raise ValueError(f"not a state version: {version!r}")
    return int(head), int(tail) if sep else 0


def try_version_key(version: str | None) -> VersionKey | None:
    """``version_key`` for untrusted input (a client's Last-Event-ID): ``None`` instead of an error."""
    if version is None:
        return None
    try:
        return version_key(version)
    except ValueError:
        return None


def latest(versions: list[str]) -> str:
    """The greatest of several versions; ``ZERO`` for none."""
    return max(versions, key=version_key, default=ZERO)
