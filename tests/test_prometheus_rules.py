"""deploy/prometheus/: the scrape configuration, recording rules and alerts operators load into Prometheus.

Two tiers. The ``live`` tests run Debian's ``promtool`` (package ``prometheus``, installed by .ci/run): ``check
config`` (which checks the rule files it names too), ``check rules`` and ``test rules`` on the unit tests in
deploy/prometheus/tests/; without promtool they skip, or fail under GATEWAY_TEST_STRICT=1 as in CI. The ``unit``
tests read the YAML in-process: every alert has a firing and a quiet unit test case, carries what an operator needs
(severity, summary, description, runbook) and waits past a scrape blip; every metric the rules read is one
gateway/metrics.py registers, with the labels it has, so that renaming a metric there cannot silently leave an
alert that never fires; and process_* series (one per worker under --workers) are read summed over the workers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from gateway.metrics import Metrics
from tests.support.server import ROOT, STRICT, require_binary

PROMETHEUS = ROOT / "deploy" / "prometheus"
CONFIG = PROMETHEUS / "prometheus.yml"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
TEST_FILES = sorted((PROMETHEUS / "tests").glob("*.yml"))
PROMTOOL_TIMEOUT = 60  # seconds; each command takes well under one

# Series Prometheus makes itself, and the labels it adds to every scraped series.
SYNTHETIC: dict[str, tuple[str, frozenset[str]]] = {"up": ("gauge", frozenset())}
TARGET_LABELS = frozenset({"job", "instance"})
# Under `gateway serve --workers N` every process_* series has a label per worker (gateway.metrics.ProcessStats:
# multiprocess mode liveall); a single process has none, and that is what ``exposed()`` sees.
WORKER_LABEL = "pid"
# An aggregation that leaves no per-worker series: `sum without (pid)`, or `by (...)` a list without pid.
WORKERS_AGGREGATED = re.compile(r"\b(?:sum|max|min|avg)\s*(?:without\s*\([^)]*\bpid\b[^)]*\)"
                                r"|by\s*\((?![^)]*\bpid\b)[^)]*\))")
SCRAPE_JOB = "gateway"  # prometheus.yml's job_name; the alerts select `up{job="gateway"}` and process_* by it
MIN_FOR_SECONDS = 60  # an alert must hold at least this long: four scrapes at the configured 15 s
SEVERITIES = {"critical", "warning"}
ANNOTATIONS = {"summary", "description", "runbook"}


# --- helpers ---------------------------------------------------------------------------------------------------------


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules() -> Iterator[dict[str, Any]]:
    for path in RULE_FILES:
        for group in load(path)["groups"]:
            yield from group["rules"]


def alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


def recorded() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def seconds(duration: str) -> float:
    """A Prometheus duration such as ``1m30s`` in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800, "y": 31_536_000}
    parts = re.findall(r"(\d+)(ms|[smhdwy])", duration)
    assert "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(int(n) * units[u] for n, u in parts)


def exposed() -> dict[str, tuple[str, frozenset[str]]]:
    """Every series name a fresh ``Metrics`` exposes, with its type and label names (counters with ``_total``,
    histograms as ``_bucket``/``_sum``/``_count``); process_* names too if its registry has the process collector.

    Label names come from each metric object's ``_labelnames``: prometheus-client keeps them private but has had
    them since its first releases, and a family without children carries no samples to read them from.
    """
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    labels = {m._name: frozenset(m._labelnames) for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}
    names: dict[str, tuple[str, frozenset[str]]] = {}
    for family in registry.collect():
        own = labels.get(family.name, frozenset(label for s in family.samples for label in s.labels))
        if family.type == "counter":
            names[family.name + "_total"] = ("counter", own)
        elif family.type == "histogram":
            names[family.name + "_bucket"] = ("histogram", own | {"le"})
            names[family.name + "_sum"] = names[family.name + "_count"] = ("histogram", own)
        else:
            names[family.name] = (family.type, own)
    return names


KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """The metric names a PromQL expression reads, each with the label names its matchers use.

    Not a PromQL parser, but enough for rules written plainly: strings, range durations and the label lists of
    ``by``/``without``/``on``/``ignoring``/``group_left``/``group_right`` are removed first; a remaining
    identifier not followed by ``(`` (a function) and not a keyword is a metric name.
    """
    found: list[tuple[str, set[str]]] = []
    for match in re.finditer(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", expr):
        matchers = re.sub(r'"(?:[^"\\]|\\.)*"', '""', match.group(2))
        found.append((match.group(1), set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))))
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    bare = re.findall(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", text)
    named = {name for name, _ in found}
    found += [(name, set()) for name in bare if name not in KEYWORDS and name not in named]
    return found


def require_promtool() -> str:
    """promtool's path, by ``require_binary``'s rule (skip, or fail under GATEWAY_TEST_STRICT=1), naming the Debian
    package that ships it: there is no package called promtool."""
    if shutil.which("promtool") is None:
        message = "promtool is not installed (apt-get install prometheus: .ci/run does)"
        if STRICT:
            pytest.fail(message + "; GATEWAY_TEST_STRICT=1 makes this a failure")
        pytest.skip(message)
    return require_binary("promtool")


def promtool(*args: str) -> None:
    """Run promtool from the repository root; fail with everything it printed unless it exits 0."""
    binary = require_promtool()
    argv = [binary, *args]
    try:
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:  # its stdout and stderr are bytes (or None), even with text=True
        pytest.fail(f"{' '.join(argv)} did not finish within {PROMTOOL_TIMEOUT} s:\n{exc.stdout!r}{exc.stderr!r}")
    if done.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited with {done.returncode}:\n{done.stdout}{done.stderr}")


def rel(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


# --- promtool (live: a system binary) --------------------------------------------------------------------------------


@pytest.mark.live
def test_promtool_check_config() -> None:
    """The scrape configuration loads, and with it every rule file it names."""
    promtool("check", "config", str(CONFIG.relative_to(ROOT)))


@pytest.mark.live
def test_promtool_check_rules() -> None:
    promtool("check", "rules", *rel(RULE_FILES))


@pytest.mark.live
def test_promtool_unit_tests_pass() -> None:
    """Every alert fires on its firing case, with exactly the annotations the test expects, and stays quiet on
    its quiet one; the recording rules compute what their tests expect."""
    promtool("test", "rules", *rel(TEST_FILES))


# --- the files, read in-process (unit) -------------------------------------------------------------------------------


@pytest.mark.unit
def test_config_loads_every_rule_file_and_tests_load_them_too() -> None:
    """A rule file that Prometheus does not load, or that the unit tests do not, is an untested or dead file."""
    config = load(CONFIG)
    assert {(CONFIG.parent / f).resolve() for f in config["rule_files"]} == {p.resolve() for p in RULE_FILES}
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == SCRAPE_JOB]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert seconds(config["global"]["scrape_interval"]) * 4 <= MIN_FOR_SECONDS, "the shortest for: must span 4 scrapes"
    for path in TEST_FILES:
        loaded = {(path.parent / f).resolve() for f in load(path)["rule_files"]}
        assert loaded <= {p.resolve() for p in RULE_FILES}, f"{path.name} loads a file that is not a rule file"
    every = set().union(*({(p.parent / f).resolve() for f in load(p)["rule_files"]} for p in TEST_FILES))
    assert every == {p.resolve() for p in RULE_FILES}, "some rule file has no unit test file"


@pytest.mark.unit
def test_every_alert_has_a_firing_and_a_quiet_test_case() -> None:
    """promtool only runs the cases it is given: an alert with no firing case could never fire and pass, one with
    no quiet case could fire on anything and pass."""
    defined = alerts()
    firing: set[str] = set()
    quiet: set[str] = set()
    unknown: set[str] = set()
    for path in TEST_FILES:
        for group in load(path)["tests"]:
            for case in group.get("alert_rule_test", []):
                name = case["alertname"]
                (firing if case.get("exp_alerts") else quiet).add(name)
                if name not in defined:
                    unknown.add(name)
    assert not unknown, f"tests name alerts that no rule file defines: {sorted(unknown)}"
    assert not set(defined) - firing, f"alerts without a firing test case: {sorted(set(defined) - firing)}"
    assert not set(defined) - quiet, f"alerts without a non-firing test case: {sorted(set(defined) - quiet)}"


@pytest.mark.unit
def test_some_recording_rules_have_tests() -> None:
    tested = {case["expr"] for path in TEST_FILES for group in load(path)["tests"]
              for case in group.get("promql_expr_test", [])}
    assert {"route_encoding:gateway_compression_ratio:rate5m", "route_outcome:gateway_commands:rate5m",
            "route_protocol:gateway_delivery_seconds:p99_5m", "instance:process_resident_memory_bytes:sum"} <= tested
    assert tested <= recorded(), f"expression tests of names no rule records: {sorted(tested - recorded())}"


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(alerts()))
def test_alert_tells_the_operator_what_to_do(name: str) -> None:
    rule = alerts()[name]
    assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{name}: severity one of {sorted(SEVERITIES)}"
    missing = ANNOTATIONS - {k for k, v in rule.get("annotations", {}).items() if str(v).strip()}
    assert not missing, f"{name} lacks the annotations {sorted(missing)}"
    runbook = rule["annotations"]["runbook"]
    assert "Check:" in runbook, f"{name}: the runbook says what to check (Check: ...)"
    assert "Do:" in runbook, f"{name}: the runbook says what to do (Do: ...)"
    assert seconds(rule.get("for", "0s")) >= MIN_FOR_SECONDS, f"{name} would fire on a single scrape blip"


@pytest.mark.unit
def test_rules_read_only_metrics_the_gateway_exposes() -> None:
    """Every name a rule reads is registered by gateway.metrics.Metrics (with the type its suffix implies and
    every label a matcher names: process_* also ``pid``, its label per worker), recorded by another rule, or made
    by Prometheus itself (``up``)."""
    names = exposed()
    known = {**SYNTHETIC, **names}
    own = recorded()
    problems = []
    for rule in rules():
        label = rule.get("alert") or rule["record"]
        for name, used in selectors(rule["expr"]):
            if name in own:
                continue
            if name not in known:
                problems.append(f"{label}: {name} is not a metric of gateway/metrics.py")
                continue
            extra = used - known[name][1] - TARGET_LABELS - ({WORKER_LABEL} if name.startswith("process_") else set())
            if extra:
                problems.append(f"{label}: {name} has no label {sorted(extra)} (it has {sorted(known[name][1])})")
            if (name in SYNTHETIC or name.startswith("process_")) and "job" not in used:
                problems.append(f"{label}: {name} exists for every job: select job={SCRAPE_JOB!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.unit
def test_the_metrics_the_rules_were_written_for_are_registered() -> None:
    """The latency histograms, readiness and the process collector the alerts and recording rules read are in the
    registry (with the labels the rules group by, which the check above cannot see in ``by`` lists)."""
    names = exposed()
    expected = {
        "gateway_ready": ("gauge", frozenset()),
        "gateway_delivery_seconds_bucket": ("histogram", frozenset({"route", "protocol", "le"})),
        "gateway_view_render_seconds_bucket": ("histogram", frozenset({"route", "le"})),
        "gateway_bus_lag_seconds_bucket": ("histogram", frozenset({"kind", "le"})),
        "gateway_slow_consumers_cut_total": ("counter", frozenset({"kind", "policy"})),
        "process_resident_memory_bytes": ("gauge", frozenset()),
    }
    assert {name: names.get(name) for name in expected} == expected


@pytest.mark.unit
def test_rules_reading_process_series_aggregate_the_workers_away() -> None:
    """Under --workers a process_* series is one worker's (label ``pid``): a rule that compared it as it is would
    see one worker at a time and change its labels with the worker count. Each must aggregate, keeping no pid."""
    problems = []
    for rule in rules():
        expr = rule["expr"]
        if not any(name.startswith("process_") for name, _ in selectors(expr)):
            continue
        label = rule.get("alert") or rule["record"]
        if not WORKERS_AGGREGATED.search(expr):
            problems.append(f"{label}: aggregate process_* with `without (pid)` or a `by` without pid")
    assert not problems, "\n".join(problems)


@pytest.mark.unit
def test_selector_reader_finds_names_and_labels() -> None:
    """The reader the check above relies on: functions, keywords, durations, strings and label lists are not
    names; a matcher's labels are attributed to its metric."""
    got = selectors('sum by (job, kind) (rate(a_total{reason=~"x|y", kind="view"}[5m])) / on () group_left ()'
                    ' scalar(b:c) > bool 1e9 and histogram_quantile(0.99, rate(d_bucket[5m] offset 5m)) or up')
    assert sorted((n, sorted(ls)) for n, ls in got) == [
        ("a_total", ["kind", "reason"]), ("b:c", []), ("d_bucket", []), ("up", [])]
