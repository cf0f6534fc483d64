"""How many streams one HTTP/2 client may reset in a window, and how often a repeated warning may be logged.

Both are sans-IO: the caller passes the monotonic clock in, so the rules are tested without sleeping.

An HTTP/2 client that opens a stream and resets it at once (HEADERS + RST_STREAM, "Rapid Reset",
CVE-2023-44487) costs the server a request set-up and tear-down without ever counting against
``MAX_CONCURRENT_STREAMS``: the stream is closed before the next one opens. ``ResetBudget`` counts a connection's
client resets in a sliding window; past ``max_resets`` the connection is told to calm down and closed. A browser
resets a stream when a tab closes an ``EventSource`` or cancels a fetch: a few per second at most, far below the
default budget.
"""

from __future__ import annotations

from collections import deque


class ResetBudget:
    """At most ``max_resets`` client stream resets within any ``window`` seconds; memory is ``max_resets`` floats."""

    __slots__ = ("_times", "max_resets", "window")

    def __init__(self, max_resets: int, window: float) -> None:
        if max_resets < 1 or not window > 0:
            raise ValueError(f"a reset budget needs max_resets >= 1 and window > 0 s, not {max_resets} per "
                             f"{window} s")
        self.max_resets = max_resets
        self.window = window
        self._times: deque[float] = deque(maxlen=max_resets + 1)

    def spend(self, now: float) -> bool:
        """Count one reset at ``now``; False once more than ``max_resets`` fell within the last ``window``."""
        times = self._times
        while times and times[0] <= now - self.window:
            times.popleft()
        times.append(now)
        return len(times) <= self.max_resets

    @property
    def recent(self) -> int:
        """Resets counted in the window as of the last ``spend``."""
        return len(self._times)


class Throttle:
    """One log line per ``interval`` seconds for an event that may repeat thousands of times a second.

    ``hit(now)`` counts one occurrence and returns how many to report in a line due now (this one and those held
    back since the last line), or 0 when the line must wait.
    """

    __slots__ = ("_held", "_last", "interval")

    def __init__(self, interval: float) -> None:
        if not interval > 0:
            raise ValueError(f"a log throttle needs an interval > 0 s, not {interval}")
        self.interval = interval
        self._held = 0
        self._last: float | None = None

    def hit(self, now: float) -> int:
        self._held += 1
        if self._last is not None and now - self._last < self.interval:
            return 0
        self._last = now
        count, self._held = self._held, 0
        return count
