"""Layers: the core is sans-IO (no event loop, web framework, server or broker), and every import points down
(core < bus < config < web < api < cli)."""

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
    """Also transitively: import every core module in a fresh interpreter and inspect sys.modules.

    PyJWT's package import loads its JWKS HTTP client (urllib, hence socket and selectors), which the core never
    calls: what ``import jwt`` alone loads is the baseline, anything more is the core's doing."""
    code = (
        "import sys, pkgutil, importlib\n"
        "import jwt\n"
        "baseline = {n.split('.')[0] for n in sys.modules}\n"
        "import gateway.core as c\n"
        "for m in pkgutil.iter_modules(c.__path__): importlib.import_module('gateway.core.' + m.name)\n"
        f"bad = sorted(({{n.split('.')[0] for n in sys.modules}} - (baseline - {{'asyncio'}})) & {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"core pulled in {result.stdout.strip()}"


# Every module's layer; a module may import only from its own layer or those below. Rank 1 holds what the web
# layer is built on besides the core (the bus, command signatures, metrics); settings sit above the bus because
# they validate bus URLs.
LAYERS: list[tuple[str, ...]] = [
    ("gateway.core",),
    ("gateway.bus", "gateway.commands", "gateway.metrics", "gateway.logs", "gateway.supervisor", "gateway.devcert",
     "gateway.tracing"),
    ("gateway.config",),
    ("gateway.web",),
    ("gateway.api", "gateway.datastar"),
    ("gateway.cli", "gateway.demo", "gateway.__main__"),
]


def _rank(module: str) -> int | None:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def _gateway_imports(path: Path) -> set[str]:
    """Absolute ``gateway...`` imports of a file, TYPE_CHECKING ones included: a type is a dependency too."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("gateway"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith(
                "gateway"):
            found.update(f"{node.module}.{a.name}" if _rank(f"{node.module}.{a.name}") is not None else node.module
                         for a in node.names)
    return found


def test_every_import_points_down_the_layers() -> None:
    """core < bus < config < web < api < cli: no import circle, no import pointing up."""
    package = ROOT / "gateway"
    offenders: list[str] = []
    for path in sorted(package.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        if module == "gateway":
            continue  # the package's lazy attribute access, nothing at import time
        own = _rank(module)
        assert own is not None, f"{module} is in no layer: add it to LAYERS"
        for imported in _gateway_imports(path):
            rank = _rank(imported)
            if imported != "gateway" and rank is not None and rank > own:
                offenders.append(f"{module} (layer {own}) imports {imported} (layer {rank})")
    assert not offenders, "\n".join(offenders)


def test_the_layer_test_catches_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from gateway.api import Gateway\nif True:\n    import gateway.web.streams\n")
    assert _gateway_imports(bad) == {"gateway.api.Gateway", "gateway.web.streams"}
    assert _rank("gateway.api") > _rank("gateway.web.streams") > _rank("gateway.core.stream")  # type: ignore[operator]
