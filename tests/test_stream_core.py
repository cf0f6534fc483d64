"""The sans-IO stream object: every transition of its table, the illegal ones, and the rules it applies."""

from __future__ import annotations

import brotli
import pytest

from gateway.core.encoders import create_encoder
from gateway.core.mailbox import BoundedMailbox, ConflatingMailbox, Limits
from gateway.core.sse import SSEParser
from gateway.core.stream import (
    HEARTBEAT,
    TRANSITIONS,
    CloseReason,
    End,
    Feed,
    Frame,
    IllegalTransition,
    Input,
    SSEStream,
    State,
    Timing,
    Wait,
    Write,
)

pytestmark = pytest.mark.unit

TIMING = Timing(heartbeat=15.0, write_timeout=5.0, grace=10.0)


def frame(n: int, data: bytes | None = None) -> Frame:
    return Frame((n, 0), str(n), data if data is not None else b"id: %d\ndata: v%d\n\n" % (n, n), str(n))


def view(timing: Timing = TIMING, encoding: str = "identity") -> SSEStream:
    return SSEStream(ConflatingMailbox(), create_encoder(encoding), timing, 0.0)


def hub(limits: Limits, timing: Timing = TIMING) -> SSEStream:
    return SSEStream(BoundedMailbox(limits), create_encoder("identity"), timing, 0.0)


def stream_in(state: State) -> SSEStream:
    """A fresh stream driven to ``state`` through its public inputs only."""
    s = view()
    if state is State.OPEN:
        return s
    s.start(b"retry: 1000\n\n", 0.0)
    if state is State.WRITING:
        return s
    s.written(None, 0.0)
    if state is State.PENDING:
        assert s.feed(frame(1), 10, 0.0) is Feed.WAKE
    elif state is State.ENDING:
        s.end(CloseReason.DRAIN)
    elif state is State.CLOSED:
        s.close()
    assert s.state is state
    return s


# --- the table ----------------------------------------------------------------------------------------------

LEGAL = sorted(TRANSITIONS.items(), key=lambda kv: (kv[0][0].value, kv[0][1].value))


def test_the_table_is_the_documented_one() -> None:
    """Written out independently, so an accidental edit of the table shows up as a diff."""
    live = (State.OPEN, State.IDLE, State.PENDING, State.WRITING)
    expected = {
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
        **{(s, Input.END): State.ENDING for s in live},
        **{(s, Input.CLOSE): State.CLOSED for s in State},
    }
    assert expected == TRANSITIONS


@pytest.mark.parametrize(("key", "target"), LEGAL, ids=[f"{s.value}-{i.value}" for (s, i), _ in LEGAL])
def test_every_legal_transition(key: tuple[State, Input], target: State) -> None:
    state, event = key
    s = stream_in(state)
    assert s._to(event) is target
    assert s.state is target


ILLEGAL = [(s, i) for s in State for i in Input if (s, i) not in TRANSITIONS]


def test_illegal_transitions_are_the_expected_ones() -> None:
    assert len(ILLEGAL) == len(State) * len(Input) - len(TRANSITIONS)
    assert (State.IDLE, Input.START) in ILLEGAL  # the head goes out once
    assert (State.CLOSED, Input.NEWS) in ILLEGAL
    assert (State.OPEN, Input.TAKE) in ILLEGAL  # nothing is written before the head


@pytest.mark.parametrize(("state", "event"), ILLEGAL, ids=[f"{s.value}-{i.value}" for s, i in ILLEGAL])
def test_every_illegal_transition_is_refused_naming_state_and_input(state: State, event: Input) -> None:
    s = stream_in(state)
    with pytest.raises(IllegalTransition, match=f"'{state.value}'.*'{event.value}'") as info:
        s._to(event)
    assert (info.value.state, info.value.event) == (state, event)
    assert s.state is state  # a refused transition leaves the state alone


def test_public_inputs_out_of_order_are_refused() -> None:
    s = view()
    with pytest.raises(IllegalTransition):
        s.poll(0.0)  # before the head went out
    s.start(b"", 0.0)
    with pytest.raises(IllegalTransition):
        s.start(b"", 0.0)
    with pytest.raises(IllegalTransition):
        s.write_direct([frame(1)], 0.0)  # a write is in flight
    s.written(None, 0.0)
    s.close()
    with pytest.raises(IllegalTransition):
        s.written(None, 0.0)


# --- the rules ------------------------------------------------------------------------------------------------


def test_a_sleeping_stream_is_woken_once_and_writes_the_newest_version_only() -> None:
    s = stream_in(State.IDLE)
    assert s.direct_ready
    assert s.feed(frame(1), 10, 1.0) is Feed.WAKE
    assert not s.direct_ready
    assert s.feed(frame(2), 10, 1.0) is Feed.CONFLATED
    step = s.poll(1.0)
    assert isinstance(step, Write)
    assert [f.version for f in step.frames] == ["2"]
    assert s.state is State.WRITING
    assert s.write_deadline == 1.0 + TIMING.write_timeout
    assert s.feed(frame(3), 10, 1.5) is Feed.QUEUED
    s.written((2, 0), 2.0)
    assert s.state is State.PENDING  # news came during the write: the task polls again before it sleeps
    assert s.heartbeat_at == 2.0 + TIMING.heartbeat


def test_an_older_version_is_never_sent_after_a_newer_one() -> None:
    s = stream_in(State.IDLE)
    s.last_key = (5, 0)
    s.feed(frame(4), 10, 0.0)
    assert isinstance(s.poll(0.0), Wait)
    assert s.state is State.IDLE
    assert s.write_direct([frame(3), frame(4)], 0.0) is None
    assert s.write_direct([frame(5), frame(6)], 0.0) == frame(6).data
    assert s.last_key == (6, 0)


def test_fed_before_the_head_goes_out_it_is_written_right_after() -> None:
    s = view()
    assert s.feed(frame(1), 10, 0.0) is Feed.QUEUED
    s.start(b"", 0.0)
    s.written(None, 0.0)
    assert s.state is State.PENDING


def test_heartbeat_and_lifetime_deadlines() -> None:
    s = SSEStream(ConflatingMailbox(), create_encoder("identity"),
                  Timing(heartbeat=15.0, write_timeout=5.0, grace=10.0, lifetime=40.0), 0.0)
    s.start(b"", 0.0)
    s.written(None, 1.0)
    assert s.poll(2.0) == Wait(16.0)
    step = s.poll(16.0)
    assert isinstance(step, Write)
    assert step.heartbeat
    assert step.prefix == HEARTBEAT
    assert not step.frames
    s.written(None, 16.0)
    assert s.poll(30.0) == Wait(31.0)
    assert s.poll(31.0 + 9.0) == End(CloseReason.LIFETIME)
    assert s.state is State.ENDING


def test_a_direct_write_pushes_the_heartbeat_back_and_counts_apart() -> None:
    s = stream_in(State.IDLE)
    assert s.write_direct([frame(1)], 10.0) == frame(1).data
    assert s.heartbeat_at == 10.0 + TIMING.heartbeat
    assert (s.counts.direct_writes, s.counts.writes, s.counts.events) == (1, 1, 1)  # the start was a task write


def test_hub_overflow_disconnects_and_drop_oldest_announces_the_gap() -> None:
    s = hub(Limits(max_items=2, max_bytes=1000, policy="disconnect"))
    s.start(b"", 0.0)
    s.written(None, 0.0)
    assert [s.feed(frame(i), 10, 0.0) for i in (1, 2)] == [Feed.WAKE, Feed.QUEUED]
    assert s.feed(frame(3), 10, 0.0) is Feed.CUT
    assert s.poll(0.0) == End(CloseReason.SLOW_CONSUMER)

    d = hub(Limits(max_items=2, max_bytes=1000, policy="drop-oldest"))
    d.start(b"", 0.0)
    d.written(None, 0.0)
    for i in (1, 2):
        d.feed(frame(i), 10, 0.0)
    assert d.feed(frame(3), 10, 0.0) is Feed.DROPPED_OLDEST
    step = d.poll(0.0)
    assert isinstance(step, Write)
    assert [f.version for f in step.frames] == ["2", "3"]
    (gap,) = SSEParser().feed(step.prefix)
    assert gap.event == "gap"
    assert '"firstLostId":"1"' in gap.data


def test_news_kept_waiting_past_the_grace_cuts_the_stream() -> None:
    s = stream_in(State.IDLE)
    s.feed(frame(1), 10, 0.0)
    step = s.poll(0.0)
    assert isinstance(step, Write)  # the task is stuck in this write from now on
    assert s.feed(frame(2), 10, 1.0) is Feed.QUEUED
    assert s.feed(frame(3), 10, 1.0 + TIMING.grace + 0.1) is Feed.CUT
    s.write_failed(CloseReason.WRITE_TIMEOUT)  # the web layer abandons the write
    assert s.reason is CloseReason.SLOW_CONSUMER
    assert s.interrupted
    assert s.goodbye(1000) is None  # the encoder may hold half a write: nothing more goes out


def test_graceful_ends_say_goodbye_through_the_encoder() -> None:
    s = SSEStream(ConflatingMailbox(), create_encoder("br"), TIMING, 0.0)
    first = s.start(b"retry: 1000\n\n", 0.0)
    s.written(None, 0.0)
    s.end(CloseReason.DRAIN)
    assert s.end(CloseReason.LIFETIME) is False  # the first reason stays
    bye = s.goodbye(2500)
    assert bye is not None
    text = brotli.decompress(first + bye).decode()
    assert text.endswith("retry: 2500\n\n: draining\n\n")
    assert s.feed(frame(1), 10, 0.0) is Feed.IGNORED


def test_a_client_that_left_gets_no_goodbye_and_its_reason_wins() -> None:
    s = stream_in(State.IDLE)
    s.end(CloseReason.DRAIN)
    s.end(CloseReason.CLIENT_CLOSED)
    assert s.reason is CloseReason.CLIENT_CLOSED
    assert s.goodbye(1000) is None
    assert s.close() is True
    assert s.close() is False  # idempotent: a disconnect and a server-side end can race
    assert s.end(CloseReason.DRAIN) is False
    assert s.state is State.CLOSED


def test_a_lifetime_set_by_a_token_ends_with_its_own_reason_and_goodbye() -> None:
    s = SSEStream(ConflatingMailbox(), create_encoder("identity"),
                  Timing(heartbeat=15.0, lifetime=4.0, ends=CloseReason.TOKEN_EXPIRED), 0.0)
    s.start(b"", 0.0)
    s.written(None, 0.5)
    assert s.poll(1.0) == Wait(4.0)  # woken for the expiry, before the heartbeat
    assert s.poll(4.0) == End(CloseReason.TOKEN_EXPIRED)
    assert s.goodbye(1000) == b"retry: 1000\n\n: token expired: reconnect with a fresh token\n\n"


def test_close_reasons_are_the_metric_labels() -> None:
    assert {r.value for r in CloseReason} == {"client_closed", "drain", "slow_consumer", "write_timeout",
                                              "send_failed", "lifetime", "token_expired", "cancelled"}
    assert {r for r in CloseReason if r.goodbye} == {CloseReason.DRAIN, CloseReason.SLOW_CONSUMER,
                                                     CloseReason.LIFETIME, CloseReason.TOKEN_EXPIRED}


def test_timing_is_validated() -> None:
    with pytest.raises(ValueError, match="positive"):
        Timing(heartbeat=0)


def test_streams_writing_one_shared_list_get_its_bytes_as_it_is_when_each_writes() -> None:
    """Fan-out hands the streams of a hub topic one list of the round's events: each stream's bytes are those of the
    list as it is then (joined once for all of them), and a list that grew since is joined again."""
    def data(*numbers: int) -> bytes:
        return b"".join(b"id: %d\ndata: v%d\n\n" % (n, n) for n in numbers)

    shared = [frame(1), frame(2)]
    first, second, third = (stream_in(State.IDLE) for _ in range(3))
    assert first.write_direct(shared, 0.0) == data(1, 2)
    assert second.write_direct(shared, 0.0) == data(1, 2)
    shared.append(frame(3))
    assert third.write_direct(shared, 0.0) == data(1, 2, 3)
    assert first.write_direct([frame(3), frame(4)], 0.0) == data(3, 4)


def test_cohort_members_writing_one_list_count_its_events_and_bytes_as_it_is_when_each_writes() -> None:
    """A cohort's members write the round's chunks from one list: each counts the events (a heartbeat chunk is
    none) and the uncompressed bytes of the list as it is then, and keeps them in its seat."""
    from gateway.core.cohort import Seat

    def member() -> SSEStream:
        limits = Limits(max_items=10, max_bytes=100_000, policy="disconnect")
        s = SSEStream(BoundedMailbox(limits), create_encoder("br"), TIMING, 0.0)
        s.join(Seat("br"), BoundedMailbox(limits), (0, 0))
        s.start(b"", 0.0, 0)
        s.written(None, 0.0)
        return s

    def chunk(n: int, raw: int, version: str) -> Frame:
        return Frame((n, 0), version, b"c%d" % n, version, None, None, None, raw, n)

    shared = [chunk(1, 100, "1"), chunk(2, 7, "")]
    first, second, third = member(), member(), member()
    for s in (first, second):
        s.write_direct(shared, 0.0)
        assert (s.counts.events, s.counts.bytes_in) == (1, 107)
    shared.append(chunk(3, 50, "3"))
    third.write_direct(shared, 0.0)
    assert (third.counts.events, third.counts.bytes_in) == (2, 157)
    seat = third.encoder
    assert isinstance(seat, Seat)
    assert (seat.length, seat.check) == (157, 3)
