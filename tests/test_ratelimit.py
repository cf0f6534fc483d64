"""The per-client token bucket table, on a fake clock: refill, Retry-After rounding, expiry and the LRU bound."""

from __future__ import annotations

import pytest

from gateway.core.ratelimit import TokenBuckets

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_rate() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=2, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # empty: the next token is half a second away
    clock.now += 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == pytest.approx(0.5)


def test_a_refused_request_costs_nothing() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=1, burst=1, clock=clock)
    assert buckets.take("a") == 0.0
    for _ in range(5):
        assert buckets.take("a") == pytest.approx(1.0)
    clock.now += 1.0
    assert buckets.take("a") == 0.0


def test_clients_are_counted_apart() -> None:
    buckets = TokenBuckets(rate=1, burst=2, clock=Clock())
    assert buckets.take("a") == buckets.take("a") == 0.0
    assert buckets.take("a") > 0
    assert buckets.take("b") == 0.0


def test_refill_stops_at_the_burst() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=10, burst=2, clock=clock)
    buckets.take("a")
    clock.now += 3600
    assert [buckets.take("a") > 0 for _ in range(3)] == [False, False, True]


@pytest.mark.parametrize(("wait", "header"), [(0.001, 1), (0.5, 1), (1.0, 1), (1.01, 2), (59.2, 60)])
def test_retry_after_is_rounded_up(wait: float, header: int) -> None:
    assert TokenBuckets(rate=1, burst=1, clock=Clock()).retry_after(wait) == header


def test_a_flood_of_addresses_stays_within_the_table() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=1, burst=5, clock=clock, max_clients=100)
    for n in range(10_000):
        assert buckets.take(f"10.0.{n // 256}.{n % 256}") == 0.0
        assert len(buckets) <= 100


def test_the_least_recently_seen_client_is_forgotten_first() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=1, burst=1, clock=clock, max_clients=2)
    buckets.take("old")
    buckets.take("kept")
    buckets.take("kept")  # seen again: most recent
    buckets.take("new")  # evicts "old", whose bucket restarts full
    assert buckets.take("kept") > 0  # still remembered, still empty
    assert buckets.take("old") == 0.0


def test_idle_clients_expire_once_their_bucket_is_full_again() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=2, burst=4, clock=clock)
    for client in ("a", "b", "c"):
        buckets.take(client)
    assert len(buckets) == 3
    clock.now += 2.0  # burst / rate: every bucket is full again
    buckets.take("d")
    assert len(buckets) == 1


@pytest.mark.parametrize(("rate", "burst", "clients"), [(0, 1, 1), (-1, 1, 1), (1, 0, 1), (1, 1, 0)])
def test_nonsense_is_refused(rate: float, burst: int, clients: int) -> None:
    with pytest.raises(ValueError, match="token bucket"):
        TokenBuckets(rate, burst, Clock(), clients)
