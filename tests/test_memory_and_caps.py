"""The compression budget derived from the host's memory, each client's share of it, and the connection caps."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.core.compression import MemoryBudget
from gateway.core.connections import ConnectionCaps, Refusal
from gateway.core.encoder_memory import estimate_bytes
from gateway.core.encoders import CodecSettings
from gateway.metrics import Metrics
from gateway.web.compression import CompressionEngine, budget_from_host, host_memory

pytestmark = pytest.mark.unit

BASE = CodecSettings()
ACCEPTED = frozenset({"br", "gzip", "identity"})


def _meminfo(tmp_path: Path, kib: int) -> Path:
    path = tmp_path / "meminfo"
    path.write_text(f"MemTotal:       {kib} kB\nMemFree:        1000 kB\n", encoding="ascii")
    return path


def test_budget_is_a_fraction_of_memtotal_without_a_cgroup_limit(tmp_path: Path) -> None:
    meminfo = _meminfo(tmp_path, 16 * 1024 * 1024)  # 16 GiB
    unlimited = tmp_path / "memory.max"
    unlimited.write_text("max\n", encoding="ascii")
    assert host_memory(meminfo, (unlimited, tmp_path / "absent")) == 16 << 30
    assert budget_from_host(0.25, meminfo, (unlimited,)) == 4 << 30


def test_a_cgroup_limit_below_memtotal_wins(tmp_path: Path) -> None:
    meminfo = _meminfo(tmp_path, 64 * 1024 * 1024)
    limit = tmp_path / "memory.max"
    limit.write_text(f"{2 << 30}\n", encoding="ascii")
    assert budget_from_host(0.25, meminfo, (limit,)) == 512 << 20


def test_an_unreadable_host_falls_back_to_one_gib(tmp_path: Path) -> None:
    assert budget_from_host(0.25, tmp_path / "no-meminfo", ()) == 1 << 30


def test_the_default_settings_derive_the_budget_from_this_host() -> None:
    engine = CompressionEngine(Settings(), Metrics())
    assert engine.budget.budget == int(host_memory() * 0.25)
    assert engine.budget.client_limit == int(engine.budget.budget * 0.05)


def test_one_client_cannot_take_more_than_its_share() -> None:
    one = estimate_bytes("br", BASE)
    budget = MemoryBudget(100 * one, client_share=0.05)  # 5 connections' worth per client
    greedy = [budget.choose("br", BASE, ACCEPTED, 0, "10.0.0.1") for _ in range(8)]
    assert [d.downgrade for d in greedy[:5]] == [None] * 5
    assert all(d.downgrade is not None and d.estimate < one for d in greedy[5:])
    assert budget.by_client["10.0.0.1"] <= budget.client_limit
    # Another client still gets the configured encoder: the greedy one did not spend the budget.
    assert budget.choose("br", BASE, ACCEPTED, 0, "10.0.0.2").downgrade is None
    for decision in greedy:
        budget.release(decision.estimate, "10.0.0.1")
    assert "10.0.0.1" not in budget.by_client
    assert budget.choose("br", BASE, ACCEPTED, 0, "10.0.0.1").downgrade is None


def test_connection_caps_per_address_and_in_total() -> None:
    caps = ConnectionCaps(max_total=5, max_per_address=2)
    assert caps.admit("a") is None
    assert caps.admit("a") is None
    assert caps.admit("a") is Refusal.ADDRESS
    assert [caps.admit("proxy", exempt=True) for _ in range(3)] == [None] * 3  # a trusted proxy: no address cap
    assert caps.admit("b") is Refusal.GLOBAL
    caps.release("a")
    assert caps.admit("b") is None
    caps.release("proxy", exempt=True)
    assert caps.total == 5 - 1
    assert caps.by_address == {"a": 1, "b": 1}


def test_caps_of_zero_are_off() -> None:
    caps = ConnectionCaps(0, 0)
    assert all(caps.admit("a") is None for _ in range(10_000))
