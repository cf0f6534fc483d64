"""The one port chooser the tests and benchmarks start servers on: never a port the kernel may hand to an outgoing
connection meanwhile, never the same port twice, free for TCP and UDP alike."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

from benchmarks import ports

pytestmark = pytest.mark.unit


def test_ports_are_outside_the_ephemeral_range_and_bindable_for_tcp_and_udp() -> None:
    ephemeral = ports._ephemeral_range()
    if all(p in ephemeral for p in ports._FIXED_RANGE):
        pytest.skip(f"this kernel's ephemeral range {ephemeral} covers the fixed range: the fallback is bind(0)")
    for _ in range(20):
        port = ports.free_port()
        assert port not in ephemeral, (port, ephemeral)
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET, kind) as sock:
                sock.bind(("127.0.0.1", port))


def test_a_port_is_handed_out_once_even_to_threads_asking_at_once() -> None:
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda _: ports.free_port(), range(400)))
    assert len(set(got)) == len(got)


def test_a_port_something_holds_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        monkeypatch.setattr(ports, "_FIXED_RANGE", range(taken, taken + 2))
        monkeypatch.setattr(ports, "_ephemeral_range", lambda: range(0))
        monkeypatch.setattr(ports, "_HANDED_OUT", set())
        assert ports.free_port() == taken + 1  # the UDP-only holder rules its number out for the pair
