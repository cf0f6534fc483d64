"""The penalty box's kernel filter: the program drops exactly the boxed addresses (checked by an interpreter over
many address sets), and the kernel, given it on a real listening socket, leaves a boxed address's connection
attempts unanswered while everyone else connects, until the box lets it out."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.connections import PenaltyBox
from gateway.core.synfilter import DROP, MAX_INSTRUCTIONS, program
from gateway.web.hypercorn import syn_filter
from tests.support.cbpf import run
from tests.support.wait import wait_until

IPV4_CAPACITY = (MAX_INSTRUCTIONS - 9) // 2
IPV6_CAPACITY = (MAX_INSTRUCTIONS - 9) // 9


def ipv4_header(source: ipaddress.IPv4Address) -> bytes:
    return bytes([0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 6, 0, 0]) + source.packed + bytes([127, 0, 0, 1])


def ipv6_header(source: ipaddress.IPv6Address) -> bytes:
    return bytes([0x60, 0, 0, 0, 0, 40, 6, 64]) + source.packed + ipaddress.IPv6Address("::1").packed


def header(address: str) -> bytes:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        return ipv4_header(ip.ipv4_mapped) if ip.ipv4_mapped else ipv6_header(ip)
    return ipv4_header(ip)


ipv4s = st.builds(lambda n: str(ipaddress.IPv4Address(n)), st.integers(0, 2**32 - 1))
ipv6s = st.builds(lambda n: str(ipaddress.IPv6Address(n)), st.integers(0, 2**128 - 1))
# Few distinct values, so that probes hit boxed addresses often; mapped forms of the same IPv4 addresses.
near4 = st.builds(lambda n: f"10.0.0.{n}", st.integers(0, 15))
mapped = st.builds(lambda n: f"::ffff:10.0.0.{n}", st.integers(0, 15))
addresses = st.one_of(ipv4s, ipv6s, near4, mapped)


@pytest.mark.unit
@settings(max_examples=300, deadline=None)
@given(boxed=st.lists(addresses, max_size=40), probes=st.lists(addresses, min_size=1, max_size=20))
def test_the_program_drops_exactly_the_boxed_addresses(boxed: list[str], probes: list[str]) -> None:
    built = program(boxed)
    assert built.left_out == 0
    as_packet = {header(address) for address in boxed}
    for probe in [*boxed, *probes]:
        verdict = run(built.instructions, header(probe))
        assert (verdict == DROP) == (header(probe) in as_packet), probe


@pytest.mark.unit
def test_other_ip_versions_and_non_addresses_are_kept() -> None:
    built = program(["10.0.0.1", "::1", "unix-socket-peer", ""])
    assert [str(ip) for ip in built.dropped] == ["10.0.0.1", "::1"]
    assert run(built.instructions, bytes([0x50]) + bytes(39)) != DROP  # version 5: neither
    assert run(program([]).instructions, ipv4_header(ipaddress.IPv4Address("10.0.0.1"))) != DROP


@pytest.mark.unit
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_a_full_program_keeps_the_newest_and_says_how_many_did_not_fit(family: str) -> None:
    capacity = IPV4_CAPACITY if family == "ipv4" else IPV6_CAPACITY
    first = ipaddress.ip_address("10.0.0.0" if family == "ipv4" else "2001:db8::")
    boxed = [str(first + n) for n in range(capacity + 25)]
    built = program(boxed)
    assert len(built.instructions) <= MAX_INSTRUCTIONS
    assert len(built.dropped) == capacity
    assert built.left_out == 25
    assert run(built.instructions, header(boxed[0])) == DROP
    assert run(built.instructions, header(boxed[capacity - 1])) == DROP
    assert run(built.instructions, header(boxed[capacity])) != DROP, "left out: refused at accept instead"


# The kernel's side: a real listening socket given the filter through the module the accept loop uses.


def attempt(source: str | None, family: socket.AddressFamily, host: str, port: int) -> bool:
    """True when a TCP connection from ``source`` is established within a short bound (a dropped SYN is only
    retransmitted after 1 s, so 0.3 s tells a drop from a slow answer on loopback)."""
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(0.3)
        if source is not None:
            client.bind((source, 0))
        try:
            client.connect((host, port))
        except (TimeoutError, OSError):
            return False
        return True


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, int]]:
    syn_filter.reset()
    syn_filter.configure(True)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual stack: IPv4 clients too
        sock.bind(("::", 0))
    except OSError:
        sock.close()
        pytest.skip("no IPv6 on this host: the dual-stack listener these tests use cannot bind")
    sock.listen(128)
    syn_filter.listening(sock)
    yield sock, sock.getsockname()[1]
    sock.close()
    syn_filter.reset()
    syn_filter.configure(False)


live = pytest.mark.live


@live
@pytest.mark.asyncio
async def test_the_kernel_drops_a_boxed_address_until_it_leaves_the_box(listener: tuple[socket.socket, int]) -> None:
    _, port = listener
    loop = asyncio.get_running_loop()
    changes: list[int] = []
    syn_filter.configure(True, changes.append)
    box = PenaltyBox(strikes=1, cooldown=1.0)
    assert attempt("127.0.0.2", socket.AF_INET, "127.0.0.1", port)
    box.strike("::ffff:127.0.0.2", loop.time())  # how a dual-stack listener names an IPv4 peer
    syn_filter.update(box, loop)
    assert syn_filter.attached() == ("::ffff:127.0.0.2",)
    assert not attempt("127.0.0.2", socket.AF_INET, "127.0.0.1", port), "the boxed address got through"
    assert attempt("127.0.0.1", socket.AF_INET, "127.0.0.1", port), "another IPv4 address was dropped"
    assert attempt(None, socket.AF_INET6, "::1", port), "an IPv6 client was dropped"
    await wait_until(lambda: syn_filter.attached() == (), 3.0, what="the filter rebuilt when the box opened")
    assert attempt("127.0.0.2", socket.AF_INET, "127.0.0.1", port), "still dropped after the cooldown"
    assert changes == [1, 0]


@live
@pytest.mark.asyncio
async def test_the_kernel_drops_a_boxed_ipv6_address(listener: tuple[socket.socket, int]) -> None:
    _, port = listener
    loop = asyncio.get_running_loop()
    box = PenaltyBox(strikes=1, cooldown=30.0)
    box.strike("::1", loop.time())
    syn_filter.update(box, loop)
    assert not attempt(None, socket.AF_INET6, "::1", port)
    assert attempt("127.0.0.1", socket.AF_INET, "127.0.0.1", port)


@live
@pytest.mark.asyncio
async def test_the_kernel_takes_a_full_program_and_a_listener_registered_later(
        listener: tuple[socket.socket, int]) -> None:
    _, port = listener
    loop = asyncio.get_running_loop()
    box = PenaltyBox(strikes=1, cooldown=30.0, max_addresses=10_000)
    # 127.0.0.2 boxed first, so it is the oldest: with IPV4_CAPACITY - 1 newer ones it is the last that fits.
    box.strike("127.0.0.2", loop.time())
    for n in range(IPV4_CAPACITY - 1):
        box.strike(str(ipaddress.IPv4Address(0x0A000000 + n)), loop.time())
    syn_filter.update(box, loop)
    assert not attempt("127.0.0.2", socket.AF_INET, "127.0.0.1", port)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as late:
        late.bind(("127.0.0.1", 0))
        late.listen(16)
        syn_filter.listening(late)  # a listener the accept loop meets after the filter was built
        assert not attempt("127.0.0.2", socket.AF_INET, "127.0.0.1", late.getsockname()[1])
        assert attempt("127.0.0.3", socket.AF_INET, "127.0.0.1", late.getsockname()[1])
        box.strike("10.255.0.1", loop.time())  # one more: 127.0.0.2 no longer fits in the kernel's filter
        syn_filter.update(box, loop)  # (within MIN_INTERVAL of the last rebuild: deferred to its end)
        await wait_until(lambda: syn_filter.attached()[:1] == ("10.255.0.1",), 3.0, what="the rebuild")
        assert attempt("127.0.0.2", socket.AF_INET, "127.0.0.1", port), "left out of the filter: for accept"


@live
@pytest.mark.asyncio
async def test_a_flood_of_boxings_costs_a_few_rebuilds(listener: tuple[socket.socket, int]) -> None:
    """Boxing 200 addresses one by one (a distributed attacker) rebuilds the filter at most once per
    MIN_INTERVAL, and the last rebuild holds them all."""
    _, port = listener
    loop = asyncio.get_running_loop()
    changes: list[int] = []
    syn_filter.configure(True, changes.append)
    box = PenaltyBox(strikes=1, cooldown=30.0)
    started = loop.time()
    for n in range(200):
        box.strike(str(ipaddress.IPv4Address(0x0A000000 + n)), loop.time())
        syn_filter.update(box, loop)
    box.strike("127.0.0.2", loop.time())
    syn_filter.update(box, loop)
    await wait_until(lambda: len(syn_filter.attached()) == 201, 3.0, what="every boxed address in the filter")
    elapsed = loop.time() - started
    assert len(changes) <= 1 + elapsed / syn_filter.MIN_INTERVAL + 1, changes
    assert changes[0] == 1
    assert changes[-1] == 201
    assert not attempt("127.0.0.2", socket.AF_INET, "127.0.0.1", port)


@live
@pytest.mark.asyncio
async def test_off_means_no_filter(listener: tuple[socket.socket, int]) -> None:
    _, port = listener
    syn_filter.configure(False)
    loop = asyncio.get_running_loop()
    box = PenaltyBox(strikes=1, cooldown=30.0)
    box.strike("127.0.0.2", loop.time())
    syn_filter.update(box, loop)
    assert syn_filter.attached() == ()
    assert attempt("127.0.0.2", socket.AF_INET, "127.0.0.1", port)
