"""Server CPU as the benchmarks read it (``benchmarks.procstat``): exact where the same threads lived at both
readings, in clock ticks where a thread came or went."""

from __future__ import annotations

import os
import threading
import time

import pytest

from benchmarks.procstat import cpu_between, cpu_reading

pytestmark = pytest.mark.unit


def _spin(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_the_cpu_between_two_readings_of_the_same_threads_is_exact() -> None:
    me = (os.getpid(),)
    before, started = cpu_reading(me), time.thread_time()
    _spin(0.013)  # a tick and a third: counted in ticks this would come out as 10 or 20 ms
    spent = time.thread_time() - started
    between = cpu_between(before, cpu_reading(me))
    assert before.threads, "no thread's schedstat could be read"
    # Within a millisecond below and 5 above (other threads of this process may run a little meanwhile): counted in
    # ticks, 13 ms would come out as 10 or 20.
    assert spent - 0.001 <= between <= spent + 0.005


def test_a_thread_that_came_or_went_falls_back_to_ticks() -> None:
    me = (os.getpid(),)
    before = cpu_reading(me)
    thread = threading.Thread(target=_spin, args=(0.05,))
    thread.start()
    during = cpu_reading(me)
    thread.join()
    after = cpu_reading(me)
    assert during.threads.keys() != before.threads.keys()
    assert cpu_between(before, during) == during.ticks - before.ticks
    assert cpu_between(during, after) == after.ticks - during.ticks
    assert cpu_between(before, after) >= 0.04  # the thread's time is counted after it ended (as ticks)
