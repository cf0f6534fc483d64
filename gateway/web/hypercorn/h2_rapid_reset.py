"""HTTP/2 Rapid Reset takes the whole process down, and one unpaced connection crashes its task (Hypercorn 0.18.0,
h2 4.4.1, priority 2.0.0).

Defect: a client that sends HEADERS and RST_STREAM at once (CVE-2023-44487) never counts against
``MAX_CONCURRENT_STREAMS``, so Hypercorn sets up and tears down a request per frame pair without limit. Each
stream also enters a ``priority.PriorityTree``, whose ``remove_stream`` rebuilds the parent's heap (every stream
hangs off stream 0), so tearing down n streams costs O(n² log n) per connection; the send task falls behind, the
tree fills up to its 1,000 streams and ``insert_stream`` raises ``priority.TooManyStreamsError`` out of
``_create_stream``, ending the connection's task with a traceback and no GOAWAY. Measured on the gateway from
loopback: 10 s of HEADERS+RST_STREAM over h2c (reconnecting every 900 streams) left ``/healthz`` unanswered for
~3 min 20 s after the attack stopped and RSS went from 97 MB to 3.55 GB (2.07 GB after recovery); a 2 s attack
cost ~31 s of downtime.

Correction, per h2 connection:

- client resets are counted in a sliding window (``gateway.core.resets.ResetBudget``, settings
  ``limits.h2_max_resets`` per ``limits.h2_reset_window``); past the budget the connection gets GOAWAY
  ``ENHANCE_YOUR_CALM`` and is closed, and the frames after the one that overdrew it are not handled;
- a stream opened and reset within the same read never reaches the app (no task, no buffer);
- received bytes are fed to h2 in slices of ``FEED`` bytes, yielding to the event loop between slices, so a
  connection told to go away stops being parsed within one slice instead of after a whole 64 KiB read (h2 parses
  ~2,000 frames of HEADERS+RST_STREAM from one read in one call, tens of milliseconds during which no other
  connection is served);
- the priority tree is replaced by ``RoundRobin``, O(1) per operation: streams with data are served in turn.
  HTTP/2 priorities are deprecated (RFC 9113 §5.3) and the gateway's SSE streams do not use them; PRIORITY frames
  are ignored, so they cannot make the server hold state for streams that were never opened.

Upstream: pgjones/hypercorn#146 ("HTTP/2 Rapid Reset") was closed with ``keep_alive_max_requests`` (1,000 requests
per connection, then GOAWAY), which an attacker defeats by reconnecting every 900 streams, as measured above; the
tree's quadratic removal is in python-hyper/priority and unreported. h2 leaves the policy to the server. nginx (a
cap on new streams per read) and Go's net/http (GOAWAY ENHANCE_YOUR_CALM once a client's streams outrun their
handlers) are the models. The upstream fix: count remote resets per connection in ``H2Protocol._handle_events``
and close with ENHANCE_YOUR_CALM past a budget, and schedule streams with a structure whose removal is not linear.

Tests that fail without it: ``tests/test_h2_rapid_reset.py`` (``/healthz`` misses its 1 s bound during the attack;
the unpaced connection sees no GOAWAY and the log has ``TooManyStreamsError``).

Remove it when a Hypercorn release bounds stream resets per connection and removes streams in less than linear
time: pin it, delete this module, and the tests above must still pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

from gateway.core.resets import ResetBudget, Throttle
from gateway.web.hypercorn import connection_limits

MAX_RESETS = 200  # client resets per connection within WINDOW; overridden by limits.h2_max_resets
WINDOW = 10.0  # seconds; overridden by limits.h2_reset_window
FEED = 4 * 1024  # bytes handed to h2 at a time: ~300 frames, a few ms of parsing

log = logging.getLogger("gateway.hypercorn")
_goaways = Throttle(1.0)


class RoundRobin:
    """The subset of ``priority.PriorityTree`` that Hypercorn uses, O(1) (amortised) per operation.

    ``_queue`` holds each stream at most once (``_queued``); a stream blocked or removed since it was queued is
    dropped when it reaches the front.
    """

    def __init__(self) -> None:
        import priority

        self._errors: Any = priority  # Hypercorn catches the tree's own exception types
        self._known: set[int] = set()
        self._active: set[int] = set()
        self._queued: set[int] = set()
        self._queue: deque[int] = deque()

    def insert_stream(self, stream_id: int, depends_on: int | None = None, weight: int = 16,
                      exclusive: bool = False) -> None:
        if stream_id in self._known:
            raise self._errors.DuplicateStreamError(f"stream {stream_id} already scheduled")
        self._known.add(stream_id)
        self._enqueue(stream_id)

    def reprioritize(self, stream_id: int, depends_on: int | None = None, weight: int = 16,
                     exclusive: bool = False) -> None:
        """Priorities are ignored."""

    def remove_stream(self, stream_id: int) -> None:
        self._check(stream_id)
        self._known.discard(stream_id)
        self._active.discard(stream_id)

    def block(self, stream_id: int) -> None:
        self._check(stream_id)
        self._active.discard(stream_id)

    def unblock(self, stream_id: int) -> None:
        self._check(stream_id)
        self._enqueue(stream_id)

    def __iter__(self) -> RoundRobin:
        return self

    def __next__(self) -> int:
        while self._queue:
            stream_id = self._queue.popleft()
            if stream_id in self._active:
                self._queue.append(stream_id)
                return stream_id
            self._queued.discard(stream_id)
        raise self._errors.DeadlockError("no unblocked streams to schedule")

    def __len__(self) -> int:
        return len(self._known)

    def _enqueue(self, stream_id: int) -> None:
        self._active.add(stream_id)
        if stream_id not in self._queued:
            self._queued.add(stream_id)
            self._queue.append(stream_id)

    def _check(self, stream_id: int) -> None:
        if stream_id not in self._known:
            raise self._errors.MissingStreamError(f"stream {stream_id} not scheduled")


def _screen(protocol: Any, events: list[Any]) -> tuple[list[Any], bool]:
    """The events to hand on, and whether the connection overdrew its reset budget."""
    import h2.events

    budget: ResetBudget = protocol.gateway_resets
    now = time.monotonic()
    over = False
    reset: set[int] = set()
    for index, event in enumerate(events):
        if isinstance(event, h2.events.StreamReset) and event.remote_reset:
            if not budget.spend(now):
                events, over = events[:index], True
                break
            reset.add(event.stream_id)
    if not reset:
        return events, over
    opened = {e.stream_id for e in events if isinstance(e, h2.events.RequestReceived) and e.stream_id in reset}
    kept = []
    for event in events:
        if getattr(event, "stream_id", None) not in opened:
            kept.append(event)
        elif isinstance(event, h2.events.DataReceived):  # give the connection window back
            protocol.connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
    return kept, over


async def _go_away(protocol: Any) -> None:
    import h2.errors
    import h2.exceptions
    from hypercorn.events import Closed

    protocol.gateway_calmed = True
    count = _goaways.hit(time.monotonic())
    if count:
        log.warning("h2 client %s reset more than %d streams within %g s: GOAWAY ENHANCE_YOUR_CALM (%d connection%s "
                    "since the last such line)", protocol.client, protocol.gateway_resets.max_resets,
                    protocol.gateway_resets.window, count, "" if count == 1 else "s")
    client = protocol.client
    connection_limits.strike(str(client[0]) if isinstance(client, tuple) and client else "")
    with contextlib.suppress(h2.exceptions.ProtocolError):  # the connection is already closed
        protocol.connection.close_connection(error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
    await protocol._flush()
    await protocol.send(Closed())


def install() -> None:
    from hypercorn.events import RawData
    from hypercorn.protocol.h2 import H2Protocol

    original_init = H2Protocol.__init__
    original_handle = H2Protocol.handle
    original_events = H2Protocol._handle_events

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.priority = RoundRobin()
        self.gateway_resets = ResetBudget(getattr(self.config, "h2_max_resets", MAX_RESETS),
                                          getattr(self.config, "h2_reset_window", WINDOW))
        self.gateway_calmed = False

    async def handle(self: Any, event: Any) -> None:
        if not isinstance(event, RawData) or len(event.data) <= FEED:
            if not (self.gateway_calmed and isinstance(event, RawData)):
                await original_handle(self, event)
            return
        view = memoryview(event.data)
        for start in range(0, len(view), FEED):
            if self.gateway_calmed:
                return
            if start:
                await asyncio.sleep(0)  # let other connections' ready work run between slices
            await original_handle(self, RawData(data=bytes(view[start:start + FEED])))

    async def _handle_events(self: Any, events: list[Any]) -> None:
        if self.gateway_calmed:
            return
        kept, over = _screen(self, events)
        await original_events(self, kept)
        if over:
            await _go_away(self)

    H2Protocol.__init__ = __init__  # type: ignore[method-assign]
    H2Protocol.handle = handle  # type: ignore[method-assign]
    H2Protocol._handle_events = _handle_events  # type: ignore[method-assign]
