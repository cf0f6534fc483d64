"""Per-client limits must not be fooled by a client writing its own X-Forwarded-For."""

from __future__ import annotations

import pytest

from gateway.core.clientaddr import client_address, parse_networks

pytestmark = pytest.mark.unit

PROXIES = parse_networks(["127.0.0.1", "10.0.0.0/8"])


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    assert client_address("203.0.113.5", "1.2.3.4", ()) == "203.0.113.5"


def test_header_from_an_untrusted_peer_is_ignored() -> None:
    assert client_address("203.0.113.5", "1.2.3.4", PROXIES) == "203.0.113.5"


def test_rightmost_untrusted_hop_is_the_client() -> None:
    assert client_address("127.0.0.1", "198.51.100.7", PROXIES) == "198.51.100.7"
    # The client forged "1.2.3.4"; the proxies appended the real address after it.
    assert client_address("127.0.0.1", "1.2.3.4, 198.51.100.7, 10.1.2.3", PROXIES) == "198.51.100.7"


def test_garbage_in_the_chain_stops_the_walk() -> None:
    assert client_address("127.0.0.1", "198.51.100.7, not-an-ip", PROXIES) == "198.51.100.7"
    assert client_address("127.0.0.1", "", PROXIES) == "127.0.0.1"


def test_all_hops_trusted_gives_the_leftmost() -> None:
    assert client_address("127.0.0.1", "10.0.0.9, 10.0.0.8", PROXIES) == "10.0.0.9"


def test_ipv6() -> None:
    trusted = parse_networks(["::1"])
    assert client_address("::1", "2001:db8::1", trusted) == "2001:db8::1"
    assert client_address(None, "2001:db8::1", trusted) == "unknown"
