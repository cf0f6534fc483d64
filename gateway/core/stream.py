"""The whole life of one SSE stream, sans-IO: frames in, bytes and decisions out, never an await.

The web layer owns the socket and the task; this object owns every rule. Fan-out feeds it frames (``feed``) or,
when it is idle, asks it for the bytes of a direct write (``write_direct``); the stream's task asks it what to do
next (``poll``), hands back the bytes it wrote (``written``) or a write that failed (``write_failed``). Deadlines
(heartbeat, lifetime, the write in flight) are instants on the caller's clock, passed in as ``now``.

States and the inputs that move them (``TRANSITIONS``, the table below, is the whole truth):

- ``OPEN``     the request is admitted, no byte sent.           START -> WRITING (the head and first bytes)
- ``IDLE``     nothing queued, no write in flight: the task      NEWS -> PENDING, TAKE -> WRITING (a heartbeat)
               sleeps, and fan-out may write directly.
- ``PENDING``  the mailbox holds news the task has to take.      TAKE -> WRITING, NEWS -> PENDING
- ``WRITING``  the task writes; news waits in the mailbox.       WRITTEN -> IDLE, NEWS -> WRITING
- ``ENDING``   a reason to end is set (``end``); the task         WRITTEN -> ENDING, END -> ENDING
               writes the goodbye if the reason is graceful.
- ``CLOSED``   final; resources are released once.               CLOSE -> CLOSED, END -> CLOSED (both no-ops)

END is allowed from every state, CLOSE from every state. A TAKE that finds only versions older than the last one
sent is followed by WRITTEN at once (PENDING -> WRITING -> IDLE). Anything else is a bug and raises
``IllegalTransition`` naming the state and the input. The first reason given to ``end`` stays, except that
``CLIENT_CLOSED`` replaces any other: once the client is gone nothing graceful can be written. A write that failed
or was abandoned half-way (its deadline passed) leaves the encoder in an unknown state: ``interrupted`` is set and
no goodbye is written.

Backpressure rules (DESIGN.md): a view's mailbox conflates (it keeps the newest version only), a hub's is bounded
in items and bytes (overflow: end with ``SLOW_CONSUMER``, or drop the oldest and announce a ``gap``). Whatever the
mailbox, a stream that keeps news waiting longer than ``grace`` while more arrives is ended as a slow consumer.
A stream never sends a version older than the last it sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

import orjson

from gateway.core.cohort import Seat
from gateway.core.datastar import PatchInfo, encode_signals_fold
from gateway.core.encoders import StreamEncoder
from gateway.core.mailbox import BoundedMailbox, ConflatingMailbox, PutResult
from gateway.core.mergepatch import Fold
from gateway.core.sse import Event, comment, retry_frame
from gateway.core.versions import VersionKey

HEARTBEAT = comment("")
NEVER = 1e12  # seconds: the heartbeat interval of a cohort member, whose heartbeats are its cohort's


@dataclass(frozen=True, slots=True)
class Frame:
    """An SSE frame ready to encode, with the version that orders it and the SSE id it carries."""

    key: VersionKey
    version: str
    data: bytes | None  # None: a per-request view must render this version itself
    id: str = ""
    patch: PatchInfo | None = None  # a hub frame holding one Datastar patch: what conflation may fold
    origin: float | None = None  # wall clock when the change it carries began (gateway.core.stamps), if known
    trace: Any = None  # gateway.tracing.TraceHandle of a traced version (one for all its subscribers), or None
    raw: int = -1  # a cohort's chunk (``data`` already compressed): the size of what it encodes; else -1
    check: int = 0  # a gzip cohort's chunk: the CRC-32 of everything the cohort encoded up to its end


class State(Enum):
    OPEN = "open"
    IDLE = "idle"
    PENDING = "pending"
    WRITING = "writing"
    ENDING = "ending"
    CLOSED = "closed"


class Input(Enum):
    START = "start"
    NEWS = "news"
    TAKE = "take"
    WRITTEN = "written"
    END = "end"
    CLOSE = "close"


class CloseReason(Enum):
    """Why a stream ended; the value is the ``reason`` label of ``gateway_streams_closed_total``."""

    CLIENT_CLOSED = "client_closed"
    DRAIN = "drain"
    SLOW_CONSUMER = "slow_consumer"
    WRITE_TIMEOUT = "write_timeout"
    SEND_FAILED = "send_failed"
    LIFETIME = "lifetime"
    TOKEN_EXPIRED = "token_expired"  # the token the stream was authorized with expired: reconnect with a new one
    CANCELLED = "cancelled"

    @property
    def goodbye(self) -> str | None:
        """The comment of the farewell frame for a reason that deserves one (the client can still read)."""
        return _GOODBYES.get(self)


_GOODBYES = {CloseReason.DRAIN: "draining",
             CloseReason.SLOW_CONSUMER: "slow consumer: reconnect with Last-Event-ID",
             CloseReason.LIFETIME: "stream lifetime reached: reconnect",
             CloseReason.TOKEN_EXPIRED: "token expired: reconnect with a fresh token"}

_LIVE = (State.OPEN, State.IDLE, State.PENDING, State.WRITING)
# Read on every direct delivery: a member looked up on its Enum class costs ~40 ns on CPython 3.11 (the class
# attribute goes through the enum's descriptor), a module-level name ~7.
IDLE = State.IDLE

TRANSITIONS: dict[tuple[State, Input], State] = {
    (State.OPEN, Input.START): State.WRITING,
    (State.IDLE, Input.NEWS): State.PENDING,
    (State.IDLE, Input.TAKE): State.WRITING,
    (State.PENDING, Input.NEWS): State.PENDING,
    (State.PENDING, Input.TAKE): State.WRITING,
    (State.WRITING, Input.NEWS): State.WRITING,
    (State.WRITING, Input.WRITTEN): State.IDLE,
    (State.ENDING, Input.WRITTEN): State.ENDING,
    (State.ENDING, Input.END): State.ENDING,
    (State.CLOSED, Input.END): State.CLOSED,
    **{(state, Input.END): State.ENDING for state in _LIVE},
    **{(state, Input.CLOSE): State.CLOSED for state in State},
}


class IllegalTransition(RuntimeError):
    def __init__(self, state: State, event: Input) -> None:
        super().__init__(f"stream in state {state.value!r} cannot take {event.value!r}")
        self.state = state
        self.event = event


class Feed(Enum):
    """What the I/O layer must do after ``feed``."""

    WAKE = "wake"  # the task sleeps: wake it
    QUEUED = "queued"  # the task is awake or busy and will find it
    CONFLATED = "conflated"  # an older pending version was replaced (count it), the task will find the newest
    DROPPED_OLDEST = "dropped_oldest"  # room was made by dropping the oldest events (count it)
    CUT = "cut"  # the stream must end now (slow consumer): abandon a write in flight and wake the task
    IGNORED = "ignored"  # the stream is ending: nothing more is queued


@dataclass(frozen=True, slots=True)
class Wait:
    """``poll``: nothing to do before ``until`` (the next heartbeat or the end of the lifetime) or news."""

    until: float


@dataclass(frozen=True, slots=True)
class Write:
    """``poll``: write these frames (oldest first; a per-request view frame with ``data=None`` is rendered
    first); ``prefix`` is framing the stream adds itself (a ``gap`` event), already SSE-encoded."""

    frames: list[Frame]
    prefix: bytes = b""
    heartbeat: bool = False


@dataclass(frozen=True, slots=True)
class End:
    """``poll``: the stream is over for ``reason``; write ``goodbye()`` if it returns bytes, then ``close``."""

    reason: CloseReason


Step = Wait | Write | End


@dataclass(slots=True)
class Counts:
    """Plain counters the I/O layer moves into Prometheus in batches (a metric ``inc`` takes a lock)."""

    bytes_in: int = 0
    bytes_out: int = 0
    events: int = 0
    writes: int = 0  # through the task
    direct_writes: int = 0  # by fan-out, without the task
    encode_seconds: float = 0.0
    patches_superseded: int = 0  # Datastar element patches a newer patch of the same target made irrelevant
    patches_merged: int = 0  # Datastar signal patches folded into a newer one


@dataclass(frozen=True, slots=True)
class Timing:
    """A stream's clocks, in seconds."""

    heartbeat: float = 15.0
    write_timeout: float = 10.0
    grace: float = 10.0
    lifetime: float | None = None  # None: no limit; else the instant (caller's clock) the stream must end
    ends: CloseReason = CloseReason.LIFETIME  # why it ends at ``lifetime`` (its token's expiry, or the maximum)

    def __post_init__(self) -> None:
        if self.heartbeat <= 0 or self.write_timeout <= 0 or self.grace < 0:
            raise ValueError(f"stream timing must be positive: {self}")


Mailbox = ConflatingMailbox[Frame] | BoundedMailbox[Frame]


class SSEStream:
    """One stream's state, mailbox, encoder, deadlines and counters."""

    __slots__ = ("_clock", "_identity", "_shared", "counts", "encoder", "heartbeat_at", "interrupted", "last_key",
                 "mailbox", "pending_since", "reason", "started_at", "state", "timing", "write_deadline")

    def __init__(self, mailbox: Mailbox, encoder: StreamEncoder, timing: Timing, now: float, *,
                 last_key: VersionKey | None = None, counts: Counts | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.state = State.OPEN
        self.mailbox = mailbox
        self.encoder = encoder
        self.timing = timing
        self.last_key = last_key
        self.heartbeat_at = now + timing.heartbeat
        self.write_deadline: float | None = None
        self.pending_since: float | None = None
        self.reason: CloseReason | None = None
        self.interrupted = False
        self.started_at: float | None = None  # when START was taken (the response head went out)
        self.counts = counts if counts is not None else Counts()  # shared by the streams of one route
        self._identity = encoder.name == "identity"
        self._shared = False  # a cohort member: its frames are chunks its cohort compressed (gateway.core.cohort)
        self._clock = clock
        if isinstance(mailbox, BoundedMailbox) and mailbox.merge is None:
            mailbox.merge = _merged_signals  # the stream knows frames: it tells its mailbox how to fold them

    def _to(self, event: Input) -> State:
        try:
            self.state = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise IllegalTransition(self.state, event) from None
        return self.state

    @property
    def live(self) -> bool:
        return self.state in _LIVE

    def join(self, seat: Seat, mailbox: BoundedMailbox[Frame], last_key: VersionKey) -> None:
        """Become a compression cohort's member before the first write (``gateway.core.cohort``): from now on
        every frame is a chunk of the cohort, in the cohort's order (``last_key`` is the position of the last chunk
        of the opening); nothing is conflated, because a member skipping a chunk would no longer match the shared
        encoder; the heartbeats are the cohort's. Whatever was fed before is covered by the opening."""
        if self.state is not State.OPEN:
            raise IllegalTransition(self.state, Input.START)
        mailbox.merge = _merged_signals
        self.mailbox = mailbox
        self.encoder = seat
        self.last_key = last_key
        self.pending_since = None
        self.timing = replace(self.timing, heartbeat=NEVER)
        self.heartbeat_at = NEVER
        self._identity = self._shared = True

    # -- the task's side ---------------------------------------------------------------------------------------

    def start(self, first: bytes, now: float, raw: int = -1) -> bytes:
        """The response head is going out: the encoded first bytes (a ``retry:`` hint, the current state; a
        cohort member's are already compressed, from ``raw`` bytes)."""
        self._to(Input.START)
        self.started_at = now
        self._begin_write(now)
        self.counts.writes += 1
        return self._encode(first, 0, raw)

    def poll(self, now: float) -> Step:
        """What the task must do next. ``Write`` and a due heartbeat move the stream to WRITING."""
        if self.reason is not None:
            return End(self.reason)
        if self.state is not State.IDLE and self.state is not State.PENDING:
            raise IllegalTransition(self.state, Input.TAKE)  # the task polls only between its writes
        lifetime = self.timing.lifetime
        if lifetime is not None and now >= lifetime:
            self.end(self.timing.ends)
            return End(self.timing.ends)
        if self.state is State.PENDING:
            step = self._take()
            if step is not None:
                self._begin_write(now)
                return step
        if now >= self.heartbeat_at:
            self._to(Input.TAKE)
            self._begin_write(now)
            return Write([], HEARTBEAT, heartbeat=True)
        return Wait(self.heartbeat_at if lifetime is None else min(self.heartbeat_at, lifetime))

    def _begin_write(self, now: float) -> None:
        self.write_deadline = now + self.timing.write_timeout

    def _take(self) -> Write | None:
        self._to(Input.TAKE)
        self.pending_since = None
        box, last = self.mailbox, self.last_key
        prefix = b""
        if isinstance(box, ConflatingMailbox):
            item = box.take()
            frames = [] if item is None or (last is not None and item.key <= last) else [item]
        else:
            lost = box.take_gap()
            if lost is not None:  # drop-oldest: say what was lost, never a silent hole
                data = orjson.dumps({"reason": "dropped", "firstLostId": lost.id}).decode()
                prefix = Event(data=data, event="gap").encode()
            frames = [f for f in box.take_all() if last is None or f.key > last]
        if not frames and not prefix:
            self._to(Input.WRITTEN)  # everything queued was older than what was sent
            return None
        return Write(frames, prefix)

    def encode(self, data: bytes, events: int, frames: list[Frame] | None = None) -> bytes:
        """The encoded (and flushed) bytes of a write the task is about to send (``data``: the prefix and the
        ``frames``)."""
        self.counts.writes += 1
        if self._shared and frames:
            return self._encode(data, *self._chunks(frames))
        return self._encode(data, events)

    def written(self, sent: VersionKey | None, now: float) -> None:
        """The task's write completed; ``sent`` is the newest version it carried, if any."""
        if sent is not None:
            self.last_key = sent
        self.write_deadline = None
        self.heartbeat_at = now + self.timing.heartbeat
        if self._to(Input.WRITTEN) is State.IDLE and len(self.mailbox):
            self._to(Input.NEWS)  # news came while writing; the task polls again before it sleeps

    def write_failed(self, reason: CloseReason) -> None:
        """The write in flight failed or passed its deadline: the encoder's state is unknown, nothing more goes
        out. A cut that abandoned the write keeps its own reason."""
        self.interrupted = True
        self.write_deadline = None
        self.end(reason)

    def goodbye(self, retry_ms: int) -> bytes | None:
        """The farewell bytes (``retry:`` hint, a comment, the encoder's end) when the reason deserves one and
        the client can still read; None otherwise."""
        reason = self.reason
        if reason is None or reason.goodbye is None or self.interrupted or self.state is not State.ENDING:
            return None
        frames = retry_frame(retry_ms) + comment(reason.goodbye)
        self.counts.writes += 1
        encoder = self.encoder
        if isinstance(encoder, Seat):  # its own bytes after the cohort's: framed raw, then the end
            encoded = encoder.tail(frames)
            self.counts.bytes_in += len(frames)
            self.counts.bytes_out += len(encoded)
            return encoded + encoder.finish()
        return self._encode(frames, 0) + encoder.finish()

    # -- fan-out's side ----------------------------------------------------------------------------------------

    def feed(self, frame: Frame, size: int, now: float) -> Feed:
        """Queue a frame for the task. Never blocks; may decide the stream is too slow to keep."""
        if not self.live:
            return Feed.IGNORED
        box = self.mailbox
        if isinstance(box, ConflatingMailbox):
            result = box.put(frame)
        elif frame.patch is None:
            result = box.put(frame, size)
        else:
            superseded, merged = box.superseded, box.merged
            result = box.put(frame, size, frame.patch)
            self.counts.patches_superseded += box.superseded - superseded
            self.counts.patches_merged += box.merged - merged
        if result is PutResult.OVERFLOW or (
            self.pending_since is not None and now - self.pending_since > self.timing.grace
        ):
            self.end(CloseReason.SLOW_CONSUMER)
            return Feed.CUT
        if self.pending_since is None:
            self.pending_since = now
        was = self.state
        if was is State.OPEN:
            return Feed.QUEUED  # the first write takes it
        self._to(Input.NEWS)
        if result is PutResult.REPLACED:
            return Feed.CONFLATED
        if result is PutResult.DROPPED_OLDEST:
            return Feed.DROPPED_OLDEST
        return Feed.WAKE if was is State.IDLE else Feed.QUEUED

    @property
    def direct_ready(self) -> bool:
        """Fan-out may write now: nothing queued and no write in flight (nothing can be overtaken, and the
        encoder is free)."""
        return self.state is IDLE

    def write_direct(self, frames: list[Frame], now: float) -> bytes | None:
        """The encoded bytes of ``frames`` (oldest first) for fan-out to write at once; None when all of them
        are older than what was sent. The stream stays IDLE: the bytes are handed to a buffer that never
        blocks."""
        if self.state is not IDLE:
            raise IllegalTransition(self.state, Input.TAKE)
        last = self.last_key
        if last is not None and frames[0].key <= last:
            frames = [f for f in frames if f.key > last]
            if not frames:
                return None
        data = _joined(frames)
        self.last_key = frames[-1].key
        self.heartbeat_at = now + self.timing.heartbeat
        self.counts.direct_writes += 1
        if self._shared:
            return self._encode(data, *self._chunks(frames))
        return self._encode(data, len(frames))

    # -- both --------------------------------------------------------------------------------------------------

    def _chunks(self, frames: list[Frame]) -> tuple[int, int]:
        """(events, uncompressed bytes) of the cohort chunks a member is writing (a heartbeat chunk, version "", is
        no event); its seat keeps the CRC-32 and length of what it has then sent (gzip's trailer)."""
        summed: tuple[int, int] | None = _last_sums.of(frames)  # the cohort's list of the round: summed once
        if summed is None:
            events = raw = 0
            for frame in frames:
                raw += frame.raw
                if frame.version:
                    events += 1
            summed = _last_sums.keep(frames, (events, raw))
        events, raw = summed
        seat = self.encoder
        assert isinstance(seat, Seat)
        seat.check = frames[-1].check
        seat.length += raw
        return events, raw

    def _encode(self, data: bytes, events: int, raw: int = -1) -> bytes:
        """``raw``: the uncompressed size of ``data`` that is a cohort's chunks (counted as the bytes in)."""
        counts = self.counts
        if self._identity:
            encoded = data
        else:
            started = self._clock()
            encoded = self.encoder.encode_flush(data)
            counts.encode_seconds += self._clock() - started
        counts.bytes_in += len(data) if raw < 0 else raw
        counts.bytes_out += len(encoded)
        counts.events += events
        return encoded

    def end(self, reason: CloseReason) -> bool:
        """Ask the stream to end (drain, cut-off, client gone...). The first reason wins; True if it was it."""
        if self.state is State.CLOSED:
            self._to(Input.END)
            return False
        first = self.reason is None
        if first or (reason is CloseReason.CLIENT_CLOSED and self.reason is not reason):
            self.reason = reason
        self._to(Input.END)
        return first

    def close(self) -> bool:
        """Final; True the first time (the caller releases resources then), False after."""
        if self.state is State.CLOSED:
            return False
        self._to(Input.CLOSE)
        return True


class _LastOfList:
    """What was last worked out from a list of frames, kept for the next stream that writes the same list: fan-out
    hands the streams of a hub topic, and the members of a cohort, one list per round. The list itself (held, so
    no other list can take its identity) and its length say it is the same; a list that grew is worked out again."""

    __slots__ = ("_frames", "_length", "_value")

    def __init__(self) -> None:
        self._frames: list[Frame] | None = None
        self._length = 0
        self._value: Any = None

    def of(self, frames: list[Frame]) -> Any:
        return self._value if frames is self._frames and len(frames) == self._length else None

    def keep(self, frames: list[Frame], value: Any) -> Any:
        self._frames, self._length, self._value = frames, len(frames), value
        return value


_last_join = _LastOfList()  # the bytes of the list last joined
_last_sums = _LastOfList()  # (events, uncompressed bytes) of the cohort chunks last summed


def _joined(frames: list[Frame]) -> bytes:
    """The frames' bytes in one piece (joined once per shared list, ``_LastOfList``)."""
    if len(frames) == 1:
        return frames[0].data or b""
    data: bytes | None = _last_join.of(frames)
    if data is None:
        data = _last_join.keep(frames, b"".join([f.data or b"" for f in frames]))
    return data


def _merged_signals(newest: Frame, folded: Fold) -> tuple[Frame, int]:
    """The frame that replaces queued signal patches: their fold, with the newest one's version and id."""
    data = encode_signals_fold(folded, newest.id)
    return (Frame(newest.key, newest.version, data, newest.id, PatchInfo(signals=folded), newest.origin,
                  newest.trace), len(data))
