"""Corrections that replace parts of asyncio's private code are only installed on the Python they were checked on.

asyncio's internals (the accept loop, the stream protocols' drain waiters, ``StreamWriter``'s attributes) change
between minor versions without notice; a correction written against 3.11's would silently break another's. Each
such correction asks ``verified`` first, and on any other version leaves asyncio as it is and says so once.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("gateway.hypercorn")


def verified(version: tuple[int, int], what: str) -> bool:
    """True on the ``version`` a correction of ``what`` was verified on; otherwise logs that it is not installed."""
    if sys.version_info[:2] == version:
        return True
    log.warning("%s: verified on Python %d.%d only, not installed on %d.%d", what, *version, *sys.version_info[:2])
    return False
