"""The installed environment is the one ``uv.lock`` describes, and the verified server stack is pinned exactly.

``make run``/``make test`` install with ``uv sync --locked``; this checks the result from the inside: every
package installed in the running interpreter's environment that the lock names has the locked version. A
resolver that ignored the lock (or a hand-installed upgrade) shows up here by name.
"""

from __future__ import annotations

import tomllib
from importlib.metadata import distributions

import pytest

from tests.support.server import ROOT

pytestmark = pytest.mark.unit

# The libraries the Hypercorn corrections reach into (gateway/web/hypercorn/): pinned in pyproject.toml itself,
# so no resolver, lock or not, can hand a user a version the corrections were not verified on.
SERVER_STACK = ("hypercorn", "h11", "h2", "aioquic")


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _locked() -> dict[str, set[str]]:
    """Every locked version of every package (a universal lock may hold two, for different Pythons)."""
    found: dict[str, set[str]] = {}
    for package in tomllib.loads((ROOT / "uv.lock").read_text())["package"]:
        if "version" in package:
            found.setdefault(_norm(package["name"]), set()).add(package["version"])
    return found


def test_every_installed_package_has_its_locked_version() -> None:
    locked = _locked()
    installed = {_norm(d.metadata["Name"]): d.version for d in distributions()}
    wrong = {name: (version, locked[name]) for name, version in installed.items()
             if name in locked and name != "gateway" and version not in locked[name]}
    assert not wrong, f"installed (version, locked version) differ: {wrong}"
    assert set(SERVER_STACK) <= installed.keys()


def test_the_server_stack_is_pinned_exactly_in_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {_norm(spec.split("==")[0]): spec.split("==")[1] for spec in project["dependencies"] if "==" in spec}
    locked = _locked()
    for name in SERVER_STACK:
        assert name in pins, f"{name} must be pinned with == in pyproject.toml"
        assert {pins[name]} == locked[name], f"{name}: pyproject pins {pins[name]}, the lock has {locked[name]}"
