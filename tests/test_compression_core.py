"""The sans-IO compression decisions: route policies, window sizing, and the budget's downgrade chain."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.compression import MemoryBudget, RouteCompression, WindowCaps, WindowSizer
from gateway.core.encoder_memory import estimate_bytes, window_bytes
from gateway.core.encoders import CodecSettings, acceptable

pytestmark = pytest.mark.unit

BASE = CodecSettings()  # br q4 lgwin 16
ALL = frozenset({"br", "zstd", "gzip", "identity"})


def test_route_policy_resolves_over_the_gateway_defaults() -> None:
    policy = RouteCompression(brotli_quality=5, zstd_window_log=20)
    resolved = policy.resolve(BASE)
    assert (resolved.brotli_quality, resolved.brotli_lgwin, resolved.zstd_window_log) == (5, 16, 20)
    assert RouteCompression().resolve(BASE) is BASE


def test_route_policy_restricts_codecs_but_identity_stays_possible() -> None:
    pref = ("br", "zstd", "gzip", "identity")
    assert RouteCompression().allowed(pref) == pref
    assert RouteCompression(encodings=("gzip",)).allowed(pref) == ("gzip", "identity")
    assert RouteCompression(encodings=()).allowed(pref) == ("identity",)


def test_route_policy_is_checked_when_declared() -> None:
    with pytest.raises(ValueError, match="unknown encodings"):
        RouteCompression(encodings=("lzma",))
    with pytest.raises(ValueError, match="brotli_lgwin"):
        RouteCompression(brotli_lgwin=30)


def test_sizer_grows_windows_to_hold_a_render_with_headroom() -> None:
    sizer = WindowSizer()
    assert sizer.fit(BASE, WindowCaps()) == BASE  # nothing seen yet
    sizer.observe(5_000)
    assert sizer.fit(BASE, WindowCaps()) == BASE  # 5 KB fits the 64 KiB default
    sizer.observe(60_000)
    grown = sizer.fit(BASE, WindowCaps())
    assert window_bytes("br", grown) >= 60_000 * 1.25
    assert grown.brotli_lgwin == 17
    assert window_bytes("zstd", grown) >= 60_000 * 1.25
    assert grown.gzip_wbits == 15  # gzip cannot go beyond 32 KiB


def test_sizer_never_shrinks_below_configuration_and_respects_caps() -> None:
    sizer = WindowSizer()
    sizer.observe(100)
    assert sizer.fit(CodecSettings(brotli_lgwin=20), WindowCaps()).brotli_lgwin == 20
    sizer.observe(50_000_000)
    capped = sizer.fit(BASE, WindowCaps(max_brotli_lgwin=19, max_zstd_window_log=21))
    assert (capped.brotli_lgwin, capped.zstd_window_log) == (19, 21)


def test_sizer_forgets_old_sizes() -> None:
    sizer = WindowSizer(memory=4)
    sizer.observe(200_000)
    for _ in range(4):
        sizer.observe(1_000)
    assert sizer.largest == 1_000


def test_budget_gives_the_first_choice_while_it_fits_and_accounts_it() -> None:
    budget = MemoryBudget(10 * estimate_bytes("br", BASE))
    decision = budget.choose("br", BASE, ALL, needed_window=20_000)
    assert (decision.name, decision.settings, decision.downgrade) == ("br", BASE, None)
    assert budget.in_use == decision.estimate
    budget.release(decision.estimate)
    assert budget.in_use == 0


def test_budget_downgrades_in_order_window_quality_gzip_identity() -> None:
    needed = 20_000  # a render of ~16 KB: the window may shrink to 32 KiB, not below
    first = estimate_bytes("br", BASE)
    budget = MemoryBudget(first + 1)
    assert budget.choose("br", BASE, ALL, needed).downgrade is None
    reasons = []
    for _ in range(200):
        decision = budget.choose("br", BASE, ALL, needed)
        reasons.append(decision.downgrade)
        if decision.name == "br":
            assert window_bytes("br", decision.settings) >= needed  # never below one render
            assert decision.settings.brotli_quality >= 2  # never a quality that ignores the window
        if decision.name == "identity":
            break
    order = [r for i, r in enumerate(reasons) if i == 0 or reasons[i - 1] != r]
    expected = ["window", "quality", "gzip", "identity"]
    assert order == [r for r in expected if r in order]  # whichever steps fit, they come in this order
    assert order[-1] == "identity"
    assert budget.in_use <= budget.budget


def test_budget_skips_gzip_the_client_does_not_accept() -> None:
    budget = MemoryBudget(0)
    decision = budget.choose("br", BASE, frozenset({"br", "identity"}), 20_000)
    assert decision.name == "identity"


def test_zero_budget_serves_identity_never_refuses() -> None:
    budget = MemoryBudget(0)
    for name in ("br", "zstd", "gzip", "identity"):
        decision = budget.choose(name, BASE, ALL, 0)
        assert decision.name == "identity"
        assert decision.estimate == 0


def test_acceptable_lists_what_the_client_takes() -> None:
    assert acceptable("br, gzip") == {"br", "gzip", "identity"}
    assert acceptable("gzip;q=0, *") == {"br", "zstd", "identity"}
    assert acceptable(None) == {"identity"}
    assert acceptable("br", preference=("gzip", "identity")) == {"identity"}


@settings(max_examples=300, deadline=None)
@given(memory=st.integers(1, 8), sizes=st.lists(st.integers(0, 20), max_size=60))
def test_the_sizer_tracks_the_largest_recent_size_and_says_when_it_changes(memory: int, sizes: list[int]) -> None:
    """``observe`` keeps the largest of the last ``memory`` sizes without rescanning them, and returns True exactly
    when that largest changed: the engine refits windows only then."""
    sizer = WindowSizer(memory=memory)
    for index, size in enumerate(sizes):
        before = sizer.largest
        changed = sizer.observe(size)
        expected = max(sizes[max(0, index + 1 - memory):index + 1])
        assert sizer.largest == expected
        assert changed == (expected != before)
