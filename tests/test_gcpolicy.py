"""The GC policy: established objects leave the collector's scans; closed streams' cycles are still reclaimed."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from gateway.web import gcpolicy
from gateway.web.gcpolicy import GCPolicy
from tests.support.wait import wait_until

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _unfrozen(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(gcpolicy, "FREEZE_DELAY", 0.01)
    yield
    gc.unfreeze()  # leave the test process as it was


class _Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.mark.asyncio
async def test_streams_opening_together_freeze_once_after_the_delay() -> None:
    policy = GCPolicy()
    gc.unfreeze()
    for _ in range(50):
        policy.opened()
    assert gc.get_freeze_count() == 0, "frozen at once: the objects of the streams still opening would be missed"
    await wait_until(lambda: gc.get_freeze_count() > 0, 2, what="the freeze FREEZE_DELAY after the first open")
    policy.opened()
    assert policy._freeze is not None  # the next wave schedules one more freeze, not one per stream
    policy.close()
    assert policy._freeze is None


@pytest.mark.asyncio
async def test_a_wave_of_closes_sweeps_the_cycles_frozen_objects_left() -> None:
    policy = GCPolicy(sweep_min=10)
    garbage = _Cycle()
    gc.freeze()  # the cycle was alive when frozen, as a stream's objects are
    del garbage
    assert not any(isinstance(o, _Cycle) for o in gc.get_objects()), "frozen objects are not in any generation"
    for _ in range(9):
        policy.closed(8)
    assert policy.sweeps == 0, "9 closes are below the sweep threshold"
    policy.closed(8)
    assert policy.sweeps == 1
    assert policy.closed_since_sweep == 0
    gc.unfreeze()
    gc.collect()
    assert not any(isinstance(o, _Cycle) for o in gc.get_objects()), "the sweep did not reclaim the cycle"


@pytest.mark.asyncio
async def test_with_many_streams_open_a_wave_is_half_of_them() -> None:
    policy = GCPolicy(sweep_min=10)
    for _ in range(4_999):
        policy.closed(10_000)
    assert policy.sweeps == 0, "a sweep walks every object: not for a few closes among 10,000 streams"
    policy.closed(10_000)
    assert policy.sweeps == 1


def test_disabled_policy_does_nothing() -> None:
    policy = GCPolicy(enabled=False, sweep_min=1)
    policy.closed(0)
    assert policy.sweeps == 0
