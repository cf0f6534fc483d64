"""Bounded waits for things a test cannot await: another process's state, the kernel's socket table, a counter.

Where there is an event to await (an ``asyncio.Event``, a stream's next frame, a process's exit), await it under
``asyncio.timeout`` instead. These helpers poll, and every poll ends: a condition that never comes true raises
``TimeoutError`` naming ``what`` was awaited, so a stuck test fails with a reason instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

INTERVAL = 0.02  # seconds between polls: short next to every timeout used, cheap for the process asked


async def wait_until(predicate: Callable[[], bool | Awaitable[bool]], timeout: float, *, what: str,
                     interval: float = INTERVAL) -> None:
    """Poll ``predicate`` (plain or async) until it returns true; ``TimeoutError`` after ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not await _truth(predicate()):  # noqa: ASYNC110 - polling is this helper's purpose
                await asyncio.sleep(interval)
    except TimeoutError:
        raise TimeoutError(f"waited {timeout} s for {what}") from None


def poll_until(predicate: Callable[[], bool], timeout: float, *, what: str, interval: float = INTERVAL) -> None:
    """The blocking twin of :func:`wait_until`, for fixtures and helpers outside an event loop."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(interval)


async def _truth(value: bool | Awaitable[bool]) -> bool:
    return bool(await value) if inspect.isawaitable(value) else bool(value)
