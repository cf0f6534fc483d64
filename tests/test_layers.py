"""The core is sans-IO: nothing under gateway/core imports an event loop, a web framework, a server or a broker."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.server import ROOT

pytestmark = pytest.mark.unit

FORBIDDEN = {"asyncio", "quart", "hypercorn", "aioquic", "h2", "h11", "redis", "anyio", "trio", "socket",
             "werkzeug", "httpx", "selectors"}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_core_modules_import_no_io() -> None:
    files = sorted((ROOT / "gateway" / "core").glob("*.py"))
    assert len(files) >= 6
    offenders = {f.name: sorted(_imports(f) & FORBIDDEN) for f in files if _imports(f) & FORBIDDEN}
    assert not offenders, offenders


def test_importing_the_core_loads_no_io_module() -> None:
    """Also transitively: import every core module in a fresh interpreter and inspect sys.modules."""
    code = (
        "import sys, pkgutil, importlib, gateway.core as c\n"
        "for m in pkgutil.iter_modules(c.__path__): importlib.import_module('gateway.core.' + m.name)\n"
        f"bad = sorted({sorted(FORBIDDEN)!r} and {{n.split('.')[0] for n in sys.modules}} & {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"core pulled in {result.stdout.strip()}"
