"""Slow-client rules per hub topic and per view: matching, falling back, merging, validation, and the settings
that carry them (a TOML array of tables, JSON in the environment)."""

from __future__ import annotations

import time
import tomllib
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram

from gateway import Gateway
from gateway.config import Settings
from gateway.core.errors import SettingsError
from gateway.core.mailbox import Limits
from gateway.core.slowclient import (
    NO_POLICY,
    HubLimits,
    PolicyError,
    SlowClientPolicy,
    TopicRule,
    ViewLimits,
    ViewRule,
    first_match,
    hub_limits,
    view_limits,
)
from gateway.metrics import BYTES_BEHIND_BUCKETS, LATENCY_BUCKETS, Latency, Spread

pytestmark = pytest.mark.unit

BASE = HubLimits(Limits(1000, 4 * 2**20, "disconnect"), 10.0)


def topic(selector: str, **fields: object) -> TopicRule:
    return TopicRule.from_table({"topic": selector, **fields})


RULES = [
    topic("prices.eur", overflow="disconnect", max_events=5),
    topic("prices.*", overflow="drop-oldest", max_events=50, grace=30),
    topic("audit", max_bytes=8192),
    topic("*", grace=60),
]


# -- matching and falling back ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("prices.eur", SlowClientPolicy(overflow="disconnect", max_events=5)),  # exact, before the wider prefix
        ("prices.usd", SlowClientPolicy(overflow="drop-oldest", max_events=50, grace=30)),
        ("prices.", SlowClientPolicy(overflow="drop-oldest", max_events=50, grace=30)),  # an empty rest matches
        ("audit", SlowClientPolicy(max_bytes=8192)),
        ("audit.log", SlowClientPolicy(grace=60)),  # "audit" is exact: only the catch-all covers this
        ("prices", SlowClientPolicy(grace=60)),
    ],
)
def test_the_first_matching_rule_applies_alone(name: str, expected: SlowClientPolicy) -> None:
    assert first_match(RULES, name) == expected


def test_no_rule_no_policy_and_no_rules_the_globals() -> None:
    assert first_match(RULES[:3], "news") is NO_POLICY
    assert hub_limits(("news",), RULES[:3], BASE) == BASE
    assert hub_limits(("a", "b"), [], BASE) is BASE


def test_unset_fields_fall_back_to_the_globals_not_to_a_later_rule() -> None:
    # prices.eur sets no grace: it takes the global 10 s, not the 30 s of prices.* nor the 60 s of *.
    assert hub_limits(("prices.eur",), RULES, BASE) == HubLimits(Limits(5, 4 * 2**20, "disconnect"), 10.0)
    assert hub_limits(("prices.usd",), RULES, BASE) == HubLimits(Limits(50, 4 * 2**20, "drop-oldest"), 30.0)
    assert hub_limits(("audit",), RULES, BASE) == HubLimits(Limits(1000, 8192, "disconnect"), 10.0)


# -- several topics in one subscription: the strictest ----------------------------------------------------------


def test_several_topics_take_the_strictest_limits_and_disconnect_if_any_asks() -> None:
    assert hub_limits(("prices.usd", "prices.eur"), RULES, BASE) == HubLimits(Limits(5, 4 * 2**20, "disconnect"),
                                                                                10.0)
    assert hub_limits(("prices.usd", "audit"), RULES, BASE) == HubLimits(Limits(50, 8192, "disconnect"), 10.0)
    # "other" has no overflow of its own: the global disconnect speaks for it, and wins over prices.usd's.
    assert hub_limits(("prices.usd", "other"), RULES, BASE) == HubLimits(Limits(50, 4 * 2**20, "disconnect"), 30.0)


def test_the_order_of_the_topics_does_not_matter() -> None:
    topics = ("prices.usd", "audit", "prices.eur", "x")
    assert hub_limits(topics, RULES, BASE) == hub_limits(tuple(reversed(topics)), RULES, BASE)


def test_drop_oldest_stays_when_every_topic_asks_for_it() -> None:
    lossy = HubLimits(Limits(1000, 4 * 2**20, "drop-oldest"), 10.0)
    rules = [topic("a", max_events=7), topic("b", grace=2)]
    assert hub_limits(("a", "b"), rules, lossy) == HubLimits(Limits(7, 4 * 2**20, "drop-oldest"), 2.0)


# -- views ------------------------------------------------------------------------------------------------------


def test_views_globals_then_the_declared_policy_then_the_settings_rule() -> None:
    base = ViewLimits(10.0)
    rules = [ViewRule.from_table({"path": "/rooms/*", "grace": 3})]
    declared = SlowClientPolicy(grace=1.5, max_bytes=2 * 2**20)
    assert view_limits("/todos", None, rules, base) == base
    assert view_limits("/todos", declared, rules, base) == ViewLimits(1.5, 2 * 2**20)
    # The operator's rule wins where it speaks; the declared cap stays where it does not.
    assert view_limits("/rooms/{room}/updates", declared, rules, base) == ViewLimits(3.0, 2 * 2**20)


def test_a_view_policy_names_only_what_a_view_can_use() -> None:
    with pytest.raises(PolicyError, match="does not apply to a view"):
        SlowClientPolicy(overflow="drop-oldest").check_view()
    with pytest.raises(PolicyError, match="max_events"):
        SlowClientPolicy(max_events=3).check_view()
    SlowClientPolicy(grace=2, max_bytes=4096).check_view()


def test_gw_view_carries_the_policy_and_refuses_a_hub_only_field() -> None:
    gw = Gateway(Settings())

    @gw.view("/quick", topics=["t"], slow_client=SlowClientPolicy(grace=1))
    async def quick() -> str:
        return "x"

    assert gw._views["/quick"].slow_client == SlowClientPolicy(grace=1)
    with pytest.raises(ValueError, match=r"view /lossy: slow_client overflow='drop-oldest'.*conflate"):

        @gw.view("/lossy", topics=["t"], slow_client=SlowClientPolicy(overflow="drop-oldest"))
        async def lossy() -> str:
            return "x"


# -- validation ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "allowed"),
    [
        ({"grace": 0}, "grace", "a number from 0.1 to 3600 s"),
        ({"grace": "5"}, "grace", "a number"),
        ({"max_events": 0}, "max_events", "an integer from 1 to 1000000"),
        ({"max_events": 2.5}, "max_events", "an integer"),
        ({"max_bytes": True}, "max_bytes", "an integer from 1024 to 1073741824 bytes"),
        ({"overflow": "drop"}, "overflow", "one of disconnect, drop-oldest"),
    ],
)
def test_a_policy_names_the_field_the_value_and_what_is_allowed(fields: dict[str, object], field: str,
                                                                allowed: str) -> None:
    with pytest.raises(PolicyError) as refused:
        SlowClientPolicy(**fields)  # type: ignore[arg-type]
    assert refused.value.field == field
    assert refused.value.value == fields[field]
    assert allowed in refused.value.allowed


# -- settings -----------------------------------------------------------------------------------------------------


def test_rules_from_a_toml_array_of_tables_in_order(tmp_path: Path) -> None:
    config = tmp_path / "g.toml"
    config.write_text('[hub]\noverflow_policy = "drop-oldest"\n\n'
                      '[[hub.slow_clients]]\ntopic = "orders.*"\noverflow = "disconnect"\nmax_events = 100\n\n'
                      '[[hub.slow_clients]]\ntopic = "*"\ngrace = 2.5\n\n'
                      '[[sse.view_slow_clients]]\npath = "/rooms/*"\ngrace = 30\nmax_bytes = 1048576\n')
    s = Settings.load(config, environ={})
    assert s.hub.slow_clients == [topic("orders.*", overflow="disconnect", max_events=100), topic("*", grace=2.5)]
    assert s.sse.view_slow_clients == [ViewRule("/rooms/*", SlowClientPolicy(grace=30, max_bytes=1048576))]
    assert s.hub.overflow_policy == "drop-oldest"


def test_rules_from_json_in_the_environment_beat_the_file(tmp_path: Path) -> None:
    config = tmp_path / "g.toml"
    config.write_text('[[hub.slow_clients]]\ntopic = "a"\ngrace = 1\n')
    s = Settings.load(config, environ={"GATEWAY_HUB_SLOW_CLIENTS": '[{"topic": "b*", "overflow": "drop-oldest"}]'})
    assert s.hub.slow_clients == [topic("b*", overflow="drop-oldest")]
    assert Settings.load(environ={"GATEWAY_HUB_SLOW_CLIENTS": ""}).hub.slow_clients == []
    assert Settings.load(environ={}).hub.slow_clients == []


@pytest.mark.parametrize(
    ("name", "value", "key", "allowed"),
    [
        ("GATEWAY_HUB_SLOW_CLIENTS", '[{"topic": "a", "overflow": "drop"}]', "hub.slow_clients[0].overflow",
         "must be one of disconnect, drop-oldest"),
        ("GATEWAY_HUB_SLOW_CLIENTS", '[{"topic": "a"}, {"topic": "b", "max_events": -1}]',
         "hub.slow_clients[1].max_events", "from 1 to 1000000"),
        ("GATEWAY_HUB_SLOW_CLIENTS", '[{"topic": "a", "policy": "disconnect"}]', "hub.slow_clients[0].policy",
         "allowed: topic, overflow, max_events, max_bytes, grace"),
        ("GATEWAY_HUB_SLOW_CLIENTS", '[{"grace": 3}]', "hub.slow_clients[0].topic", "every rule needs one"),
        ("GATEWAY_HUB_SLOW_CLIENTS", '[{"topic": "a b"}]', "hub.slow_clients[0].topic", "visible ASCII"),
        ("GATEWAY_HUB_SLOW_CLIENTS", "topic=a", "hub.slow_clients", "must be a JSON array of objects"),
        ("GATEWAY_HUB_SLOW_CLIENTS", '{"topic": "a"}', "hub.slow_clients", "must be an array of tables"),
        ("GATEWAY_SSE_VIEW_SLOW_CLIENTS", '[{"path": "rooms"}]', "sse.view_slow_clients[0].path", "/prefix*"),
        ("GATEWAY_SSE_VIEW_SLOW_CLIENTS", '[{"path": "/r", "max_events": 3}]', "sse.view_slow_clients[0].max_events",
         "allowed: path, grace, max_bytes"),
    ],
)
def test_a_bad_rule_names_its_key_value_source_and_what_is_allowed(name: str, value: str, key: str,
                                                                  allowed: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.load(environ={name: value})
    message = str(refused.value)
    assert f"invalid setting {key}=" in message
    assert f"(from {name})" in message
    assert allowed in message
    assert "\n" not in message


def test_a_bad_rule_in_a_file_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "g.toml"
    config.write_text('[[hub.slow_clients]]\ntopic = "a"\n\n[[hub.slow_clients]]\ntopic = "b"\ngrace = 0.01\n')
    with pytest.raises(SettingsError, match=rf"hub\.slow_clients\[1\]\.grace=0\.01 \(from {config}\): must be a"):
        Settings.load(config, environ={})


def test_a_rule_shows_as_the_toml_it_is_written_as() -> None:
    """``gateway check`` prints the effective value: it reads back as the same rules."""
    rules = [topic("prices.*", overflow="drop-oldest", max_bytes=65536, grace=2.5), topic("*")]
    shown = repr(rules)
    assert shown == '[{topic = "prices.*", overflow = "drop-oldest", max_bytes = 65536, grace = 2.5}, {topic = "*"}]'
    assert [TopicRule.from_table(t) for t in tomllib.loads(f"rules = {shown}")["rules"]] == rules


# -- the batched histogram ------------------------------------------------------------------------------------------


def test_a_spread_reports_what_observe_would_have() -> None:
    registry = CollectorRegistry()
    hist = Histogram("t_behind", "t", ["kind"], registry=registry, buckets=BYTES_BEHIND_BUCKETS)
    batched, direct = Spread(hist.labels("batched")), hist.labels("direct")
    values = [0, 0, 1, 1024, 1025, 65_536, 70_000, 5 * 2**20, 20 * 2**20, 3]
    for value in values:
        batched.observe(value)
        direct.observe(value)
    batched.zeros += 3  # a hot path's zeros, counted without a call
    for _ in range(3):
        direct.observe(0)
    assert registry.get_sample_value("t_behind_count", {"kind": "batched"}) == 0  # nothing before report()
    batched.report()
    batched.report()  # a second report adds nothing
    for bound in [*map(float, BYTES_BEHIND_BUCKETS), float("inf")]:
        le = "+Inf" if bound == float("inf") else str(bound)
        assert (registry.get_sample_value("t_behind_bucket", {"kind": "batched", "le": le})
                == registry.get_sample_value("t_behind_bucket", {"kind": "direct", "le": le})), le
    assert registry.get_sample_value("t_behind_sum", {"kind": "batched"}) == sum(values)


def test_a_spread_without_the_internals_it_relies_on_observes_directly() -> None:
    seen: list[float] = []

    class Child:  # a prometheus-client release that keeps its buckets elsewhere
        def observe(self, value: float) -> None:
            seen.append(value)

    spread = Spread(Child())
    spread.observe(5)
    spread.zeros += 2
    spread.report()
    assert seen == [5, 0, 0]


def test_latency_counts_deliveries_by_origin_and_observes_them_at_the_report() -> None:
    """Direct writes count a delivery under its change's origin; the round's report observes ``now - origin`` once
    per delivery: the buckets are those the histogram's own ``observe`` gives, the sum within the report's time."""
    registry = CollectorRegistry()
    hist = Histogram("t_delivery_seconds", "t", ["path"], registry=registry, buckets=LATENCY_BUCKETS)
    batched, direct = Latency(hist.labels("batched")), hist.labels("direct")
    now = time.time()
    ages = {0.0005: 3, 0.02: 5, 0.3: 1, 7.0: 2, -1.0: 4}  # a clock stepped back counts as 0
    for age, count in ages.items():
        batched.pending[now - age] = count
    batched.report()
    assert not batched.pending
    after = time.time()
    for age, count in ages.items():
        for _ in range(count):
            direct.observe(max(0.0, now - (now - age)))
    for bound in [*map(float, LATENCY_BUCKETS), float("inf")]:
        le = "+Inf" if bound == float("inf") else str(bound)
        got = registry.get_sample_value("t_delivery_seconds_bucket", {"path": "batched", "le": le})
        assert got == registry.get_sample_value("t_delivery_seconds_bucket", {"path": "direct", "le": le}), le
    exact = sum(max(0.0, age) * count for age, count in ages.items())
    total = registry.get_sample_value("t_delivery_seconds_sum", {"path": "batched"})
    assert total is not None  # None only for a sample the registry does not have
    assert exact <= total <= exact + (after - now) * sum(ages.values())


def test_latency_counts_a_list_of_frames_once_per_stream_that_wrote_it() -> None:
    """Direct writes hand over their lists of frames; a list several streams wrote (a topic's shared list) counts
    each of its frames once per stream, as if each stream had counted them itself."""

    class Frame:
        def __init__(self, origin: float | None) -> None:
            self.origin = origin

    registry = CollectorRegistry()
    hist = Histogram("t_delivery_seconds", "t", ["path"], registry=registry, buckets=LATENCY_BUCKETS)
    latency = Latency(hist.labels("hub"))
    now = time.time()
    shared = [Frame(now - 0.0005), Frame(now - 0.3), Frame(None)]
    own = [Frame(now - 0.3)]
    latency.rounds.extend([shared, own, shared, shared])
    latency.report()
    assert not latency.rounds
    assert not latency.pending

    def count(le: str) -> float | None:
        return registry.get_sample_value("t_delivery_seconds_bucket", {"path": "hub", "le": le})

    assert count("+Inf") == 3 + 3 + 1  # three streams wrote the shared list's two timed frames, one its own
    assert count("0.001") == 3
