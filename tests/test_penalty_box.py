"""The penalty box: repeated abuse from one address refuses its new connections for a while, and only its own."""

from __future__ import annotations

import pytest

from gateway.core.connections import PenaltyBox

pytestmark = pytest.mark.unit


def test_strikes_within_the_cooldown_box_the_address_for_the_cooldown() -> None:
    box = PenaltyBox(strikes=3, cooldown=30.0)
    assert not box.strike("10.0.0.1", 0.0)
    assert not box.strike("10.0.0.1", 10.0)
    assert not box.penalized("10.0.0.1", 10.0)
    assert box.strike("10.0.0.1", 20.0)  # the third within 30 s
    assert box.penalized("10.0.0.1", 20.0)
    assert box.penalized("10.0.0.1", 49.9)
    assert not box.penalized("10.0.0.2", 25.0), "another address pays nothing"
    assert not box.penalized("10.0.0.1", 50.0), "the box opens after the cooldown"
    assert len(box) == 0


def test_strikes_spread_wider_than_the_cooldown_do_not_box() -> None:
    box = PenaltyBox(strikes=3, cooldown=30.0)
    assert not any(box.strike("10.0.0.1", t) for t in (0.0, 20.0, 40.0, 60.0, 80.0))
    assert not box.penalized("10.0.0.1", 80.0)


def test_disabled_and_bounded() -> None:
    off = PenaltyBox(strikes=0)
    assert not any(off.strike("10.0.0.1", float(t)) for t in range(10))
    box = PenaltyBox(strikes=1, cooldown=60.0, max_addresses=100)
    for i in range(10_000):  # a flood of distinct addresses
        box.strike(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 1.0)
    assert len(box) == 100
    assert box.penalized("10.0.39.15", 2.0), "the newest are remembered"
    assert not box.penalized("10.0.0.0", 2.0), "the oldest were forgotten first"
