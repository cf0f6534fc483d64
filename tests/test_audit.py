"""``make audit``'s verdict on pip-audit's outcomes: a finding fails, an unreachable database skips, clean passes."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest

from tests.support.audit import decide

pytestmark = pytest.mark.unit


def _report(*dependencies: Mapping[str, object]) -> str:
    return json.dumps({"dependencies": list(dependencies), "fixes": []})


CLEAN = {"name": "orjson", "version": "3.11.0", "vulns": []}
VULNERABLE = {"name": "h11", "version": "0.14.0", "vulns": [{"id": "GHSA-vqfr-h8mv-ghfj", "fix_versions": ["0.16.0"]}]}
UNAUDITED = {"name": "brotli", "version": "1.2.1",
             "skip_reason": "Dependency not found on PyPI and could not be audited"}


def test_a_clean_lock_passes() -> None:
    code, line = decide(0, _report(CLEAN, CLEAN), "")
    assert code == 0
    assert line.startswith("audit passed")


def test_a_finding_fails_even_when_other_lookups_failed() -> None:
    code, line = decide(1, _report(CLEAN, VULNERABLE, UNAUDITED), "")
    assert code == 1
    assert "h11 0.14.0: GHSA-vqfr-h8mv-ghfj" in line


@pytest.mark.parametrize("stderr", [
    "requests.exceptions.ConnectionError: HTTPSConnectionPool(host='api.osv.dev'): Max retries exceeded",
    "urllib3.exceptions.NameResolutionError: Failed to resolve 'pypi.org'",
    "requests.exceptions.ReadTimeout: HTTPSConnectionPool(host='pypi.org', port=443): Read timed out.",
])
def test_an_unreachable_database_skips(stderr: str) -> None:
    code, line = decide(1, "", "Traceback (most recent call last):\n" + stderr)
    assert code == 0
    assert line.startswith("audit skipped:")


def test_nothing_looked_up_is_a_skip_not_a_pass() -> None:
    """A proxy answering 404 for everything: pip-audit exits 0, yet nothing was checked."""
    code, line = decide(0, _report(UNAUDITED, UNAUDITED), "")
    assert code == 0
    assert line.startswith("audit skipped:")


def test_some_packages_unaudited_fails() -> None:
    code, line = decide(0, _report(CLEAN, UNAUDITED), "")
    assert code == 1
    assert "brotli" in line


def test_another_crash_fails() -> None:
    code, line = decide(2, "", "usage: pip-audit: error: unrecognized arguments: --bogus")
    assert code == 2
    assert line.startswith("audit failed")
