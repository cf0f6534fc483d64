"""``h3_send_coalescing.datagrams`` writes the STREAM frames of a connection's busy streams inside aioquic's own
packet loop: checked here between two real aioquic connections in memory (``tests/support/quicpair``), where a
test controls windows, losses and resets. Every stream must get every byte in order, whatever flow control,
congestion control, loss recovery and resets do; the send queue must keep every stream, in aioquic's rotation.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from aioquic import tls
from aioquic.quic.connection import QuicConnection

from gateway.web.hypercorn import h3_send_coalescing
from gateway.web.hypercorn.h3_send_coalescing import FEW_STREAMS, QUIET, Service, datagrams, track_changes
from tests.support.quicpair import ADDRESS, QuicPair

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True, params=["every flush visits the streams", "quiet connections skip them"])
def tracking(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Every scenario twice: with ``track_changes`` (as installed in the gateway), a flush of a connection to which
    nothing can have come since its last flush left nothing to do skips its streams; without, none does."""
    track_changes()  # (class patches that only count: installing them for the whole test process changes nothing)
    on: bool = request.param.startswith("quiet")
    monkeypatch.setattr(h3_send_coalescing, "_tracked", [on])
    return on

STREAMS = 40  # more than ``FEW_STREAMS``: the service, not aioquic's own walk, builds the packets
assert STREAMS > FEW_STREAMS


def events(stream_id: int, count: int) -> list[bytes]:
    """``count`` events of sizes from 9 to ~400 bytes, different on every stream: frames end mid-packet, split
    across packets, and a misplaced byte shows."""
    return [b"%d.%d:" % (stream_id, n) + bytes([65 + (stream_id + n) % 26]) * ((stream_id * 31 + n * 57) % 400)
            for n in range(count)]


def write_all(pair: QuicPair, ids: list[int], count: int, *, end: bool = False,
              rounds: bool = True) -> dict[int, bytes]:
    """Every event of every stream, what each stream must receive. With ``rounds``, as a broadcast does: one event to
    every stream, then one step of the pair (a flush), and so on; without, all at once, as a burst."""
    chunks = {stream_id: events(stream_id, count) for stream_id in ids}
    for n in range(count):
        for stream_id in ids:
            pair.server.send_stream_data(stream_id, chunks[stream_id][n], end_stream=end and n == count - 1)
        if rounds:
            pair.step()
    return {stream_id: b"".join(chunks[stream_id]) for stream_id in ids}


def test_every_stream_gets_every_byte_in_order_through_tiny_windows(certs: tuple[Path, Path]) -> None:
    # 700 bytes a stream and 1,500 a connection at first: most frames wait for the client's MAX_STREAM_DATA and
    # MAX_DATA; one byte past a limit and the client closes the connection (FLOW_CONTROL_ERROR).
    pair = QuicPair(certs, max_stream_data=700, max_data=1500)
    ids = pair.open(STREAMS)
    expected = write_all(pair, ids, 30)
    expected = {i: expected[i] + more for i, more in write_all(pair, ids, 10, rounds=False).items()}
    pair.until(lambda: all(bytes(pair.received.get(i, b"")) == expected[i] for i in ids))
    # The client's packets (its MAX_DATA and MAX_STREAM_DATA) were acknowledged in the server's packets.
    pair.until(lambda: pair.client._loss.bytes_in_flight == 0)
    assert pair.terminated is None


def test_lost_packets_are_sent_again_until_every_byte_is_there(certs: tuple[Path, Path]) -> None:
    pair = QuicPair(certs, drop=lambda number: number % 5 == 0)  # every fifth datagram of the server is lost
    ids = pair.open(STREAMS)
    sent_before = pair.sent
    expected = write_all(pair, ids, 20)
    expected = {i: expected[i] + more for i, more in write_all(pair, ids, 10, rounds=False).items()}
    pair.until(lambda: all(bytes(pair.received.get(i, b"")) == expected[i] for i in ids))
    assert pair.sent - sent_before >= 10  # (so losses happened: two per ten datagrams)
    pair.until(lambda: pair.server._loss.bytes_in_flight == 0)  # every retransmission acknowledged too


def test_a_reset_mid_burst_spares_the_others_and_finished_streams_are_discarded(certs: tuple[Path, Path]) -> None:
    pair = QuicPair(certs)
    ids = pair.open(STREAMS)
    doomed = ids[STREAMS // 2]
    expected = write_all(pair, ids, 40, end=True, rounds=False)
    pair.until(lambda: len(pair.received.get(doomed, b"")) > 0)
    assert len(pair.received[doomed]) < len(expected[doomed]), "the burst reached the stream whole: make it longer"
    pair.server.reset_stream(doomed, 0x10C)  # as Hypercorn does on the client's STOP_SENDING
    for stream_id in ids:
        pair.client.send_stream_data(stream_id, b"", end_stream=True)  # each request's side ends
    kept = [i for i in ids if i != doomed]
    pair.until(lambda: pair.ended >= set(kept) and doomed in pair.reset)
    assert all(bytes(pair.received[i]) == expected[i] for i in kept)
    assert pair.reset[doomed] == 0x10C
    assert expected[doomed].startswith(bytes(pair.received[doomed]))
    # Each stream is finished once its FIN or reset is acknowledged: aioquic discards it (the queue follows).
    pair.until(lambda: not any(i in pair.server._streams for i in ids))


def test_streams_not_served_go_first_next_time(certs: tuple[Path, Path]) -> None:
    pair = QuicPair(certs)
    ids = pair.open(STREAMS)
    write_all(pair, ids, 1, rounds=False)
    for stream_id in ids:  # 2 KB each, 80 KB in all: far more than the congestion window lets out at once
        pair.server.send_stream_data(stream_id, b"x" * 2000)
    order = [stream.stream_id for stream in pair.server._streams_queue if stream.stream_id in ids]
    out, more = datagrams(pair.server, pair.now)
    assert out
    assert not more
    served = [i for i in order if pair.server._streams[i].sender.highest_offset > 0]
    assert 0 < len(served) < STREAMS
    assert served == order[:len(served)]  # in queue order, from the front
    after = [stream.stream_id for stream in pair.server._streams_queue if stream.stream_id in ids]
    # Those that waited now come first, in their order; the served ones after them.
    assert after[:STREAMS - len(served)] == order[len(served):]
    assert sorted(after[STREAMS - len(served):]) == sorted(served)


def quiet_pair(certs: tuple[Path, Path], events: int) -> tuple[QuicPair, list[int], dict[int, bytes]]:
    """A pair whose ``events`` on every stream were all delivered and acknowledged, the server's last flush having
    left it quiet (``QUIET``)."""
    pair = QuicPair(certs)
    ids = pair.open(STREAMS)
    expected = write_all(pair, ids, events)
    pair.until(lambda: all(bytes(pair.received.get(i, b"")) == expected[i] for i in ids)
               and pair.server._loss.bytes_in_flight == 0 and pair.server.__dict__.get(QUIET) is True)
    return pair, ids, expected


def services_built(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The connection of every packet service built from now on (a flush that visits a connection's streams)."""
    built: list[object] = []

    class Counting(Service):
        __slots__ = ()

        def __init__(self, quic: object, queue: list[object]) -> None:
            built.append(quic)
            super().__init__(quic, queue)

    monkeypatch.setattr(h3_send_coalescing, "Service", Counting)
    return built


@pytest.mark.parametrize("tracking", ["quiet connections skip them"], indirect=True)
def test_a_quiet_connection_skips_its_streams_until_something_comes_to_one(certs: tuple[Path, Path], tracking: bool,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    assert tracking
    pair, ids, expected = quiet_pair(certs, 3)
    services = services_built(monkeypatch)
    for _ in range(10):  # ACKs and timers only: no flush visits a stream
        pair.step()
    assert services == []
    pair.server.send_stream_data(ids[7], b"one more")  # something for one stream: the next flush sees it
    pair.until(lambda: bytes(pair.received[ids[7]]).endswith(b"one more"))
    assert services
    assert all(bytes(pair.received[i]) == expected[i] for i in ids if i != ids[7])


@pytest.mark.parametrize("tracking", ["quiet connections skip them"], indirect=True)
def test_a_stop_sending_followed_by_an_older_ack_is_still_answered(certs: tuple[Path, Path], tracking: bool) -> None:
    """A STOP_SENDING touches the connection; an ACK-only packet that the network delivers after it (sent earlier)
    must not make the connection quiet again, or the RESET_STREAM it calls for would wait for some other event."""
    assert tracking
    pair, ids, _ = quiet_pair(certs, 2)
    pair.server.send_stream_data(ids[3], b"more")  # something for the client to acknowledge
    out, _ = datagrams(pair.server, pair.now)
    for data, _ in out:
        pair.client.receive_datagram(data, ADDRESS, now=pair.now)
    pair.now += 0.05  # past the client's ACK delay
    ack_only = [data for data, _ in pair.client.datagrams_to_send(now=pair.now)]
    assert ack_only
    assert pair.server.__dict__.get(QUIET)  # that flush left the server quiet
    # The client's STOP_SENDING, through aioquic's own method: the gateway's counting of local calls stays out of it.
    unwrapped: Callable[..., None] = QuicConnection.stop_stream.__wrapped__  # type: ignore[attr-defined]
    unwrapped(pair.client, ids[5], 0x10C)
    stop = [data for data, _ in pair.client.datagrams_to_send(now=pair.now)]
    for data in stop + ack_only:  # the newer packet first, the older ACK-only one after it
        pair.server.receive_datagram(data, ADDRESS, now=pair.now)
    pair.until(lambda: pair.reset.get(ids[5]) is not None)


@pytest.mark.parametrize("tracking", ["quiet connections skip them"], indirect=True)
def test_a_quiet_connection_stays_quiet_while_another_one_gets_writes(certs: tuple[Path, Path], tracking: bool,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """What comes to one connection's streams says nothing about another's: during a broadcast every ACK of a
    connection asks for a flush while fan-out writes to the others, and that flush must not visit its streams."""
    assert tracking
    quiet, _, _ = quiet_pair(certs, 2)
    busy, busy_ids, _ = quiet_pair(certs, 1)
    services = services_built(monkeypatch)
    for stream_id in busy_ids:
        busy.server.send_stream_data(stream_id, b"an event")
    datagrams(quiet.server, quiet.now)
    assert services == []
    busy.until(lambda: all(bytes(busy.received[i]).endswith(b"an event") for i in busy_ids))
    assert services
    quiet.step()  # its ACKs and timers
    assert all(quic is busy.server for quic in services)
    assert quiet.server.__dict__.get(QUIET)


@pytest.mark.parametrize("tracking", ["quiet connections skip them"], indirect=True)
def test_acknowledging_frames_in_order_leaves_a_connection_quiet(certs: tuple[Path, Path], tracking: bool) -> None:
    """An ACK gives a stream nothing to send, also for the frames aioquic wrote itself (a frame split at the end
    of a packet): a connection whose flush sent everything stays quiet while its packets are acknowledged."""
    assert tracking
    pair, ids, _ = quiet_pair(certs, 1)
    for stream_id in ids:  # ~70 bytes each: 3 packets, frames split across them, written by aioquic's own method
        pair.server.send_stream_data(stream_id, b"%d:" % stream_id + b"e" * 64)
    out, _ = datagrams(pair.server, pair.now)
    assert len(out) > 1
    assert pair.server.__dict__.get(QUIET)  # everything sent whole: nothing left to do
    for data, _ in out:
        pair.client.receive_datagram(data, ADDRESS, now=pair.now)
    acks = [data for data, _ in pair.client.datagrams_to_send(now=pair.now + 0.05)]
    assert acks
    for data in acks:
        pair.server.receive_datagram(data, ADDRESS, now=pair.now + 0.05)
    assert pair.server._loss.bytes_in_flight == 0  # every packet acknowledged
    assert pair.server.__dict__.get(QUIET)


def test_a_lost_reset_is_sent_again_when_the_connection_was_quiet(certs: tuple[Path, Path]) -> None:
    """A RESET_STREAM that is lost after the connection went quiet is rescheduled by its delivery handler inside
    aioquic's loss recovery: the connection must be visited again, or the reset never leaves."""
    pair, ids, _ = quiet_pair(certs, 2)
    lost = pair.sent + 1
    pair.drop = lambda number: number == lost  # the server's next datagram: the one carrying the RESET_STREAM
    pair.server.reset_stream(ids[5], 0x10C)
    pair.until(lambda: pair.reset.get(ids[5]) == 0x10C)
    assert pair.sent > lost


def test_packets_of_stream_frames_are_in_flight_and_ack_eliciting(certs: tuple[Path, Path]) -> None:
    """The packets the service fills count in the congestion window and arm loss detection, as aioquic's own
    STREAM frames make them, and each frame's delivery handler is registered."""
    pair, ids, _ = quiet_pair(certs, 1)
    for stream_id in ids:
        pair.server.send_stream_data(stream_id, b"%d:" % stream_id + b"f" * 64)
    out, _ = datagrams(pair.server, pair.now)
    packets = list(pair.server._spaces[tls.Epoch.ONE_RTT].sent_packets.values())
    assert len(packets) == len(out) > 1
    assert all(packet.in_flight and packet.is_ack_eliciting for packet in packets)
    assert pair.server._loss.bytes_in_flight == sum(packet.sent_bytes for packet in packets)
    assert sum(len(packet.delivery_handlers) for packet in packets) >= len(ids)
    assert pair.server._loss.get_loss_detection_time(amplification_limited=False) is not None
