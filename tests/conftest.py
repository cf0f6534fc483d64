"""Shared fixtures (the helpers behind them live in ``tests/support/``) and the rule that every test has a tier.

Tiers: ``unit`` tests run in-process and fast (``make test-fast`` runs only them); ``live`` tests start gateway
processes, nginx, Redis, Chromium, locust or benchmark harnesses. A test without either fails collection, so no
new test escapes the split.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import Server, start_server

TIERS = ("unit", "live")


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects: an untiered test fails every run, ``make test-fast`` too
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse tests that carry no tier marker, or both, naming them and the fix."""
    wrong = [item.nodeid for item in items if sum(item.get_closest_marker(tier) is not None for tier in TIERS) != 1]
    if wrong:
        raise pytest.UsageError(
            "every test needs exactly one tier marker, `unit` or `live` (e.g. `pytestmark = pytest.mark.unit` at"
            " the top of the module; see pyproject.toml); these have none or both:\n  " + "\n  ".join(wrong))


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from gateway import devcert

    return devcert.create(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path]) -> Iterator[Server]:
    """The demo gateway with a hub token, shared by the tests that only add state."""
    srv = start_server(tmp_path_factory.mktemp("server"), certs)
    yield srv
    code = srv.stop()
    assert code == 0, f"gateway exited with {code} on SIGTERM:\n{srv.output()}"
