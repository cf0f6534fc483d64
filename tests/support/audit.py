"""``make audit``: pip-audit against uv.lock, failing on a finding and skipping, with one line saying why, where
the vulnerability database cannot be reached.

pip-audit cannot tell "unreachable" from "nothing to report" by its exit code: an osv.dev it cannot reach is a
traceback, and a pypi.org behind a proxy that answers 404 reports every package as "not found on PyPI and could
not be audited" and exits 0, which reads as a pass. ``decide`` looks at what it says instead (its JSON report), so a
skipped audit is never mistaken for a clean one and a real finding always fails.

    python -m tests.support.audit            # what `make audit` runs
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UV = ROOT / ".tools" / "bin" / "uv"
PIP_AUDIT = Path(sys.executable).parent / "pip-audit"
NETWORK_ERRORS = ("ConnectionError", "NameResolutionError", "Max retries exceeded", "Temporary failure in name",
                  "Failed to resolve", "Connection refused", "Network is unreachable", "timed out", "ProxyError",
                  "SSLError", "ConnectTimeout", "ReadTimeout")


def decide(returncode: int, stdout: str, stderr: str) -> tuple[int, str]:
    """``(exit code, one line)`` for pip-audit's outcome: 1 for a finding, 0 for clean or unreachable."""
    try:
        report = json.loads(stdout)
        dependencies = report["dependencies"]
    except (ValueError, KeyError, TypeError):
        error = next((m for m in NETWORK_ERRORS if m in stderr + stdout), None)
        if error is not None:
            return 0, f"audit skipped: the vulnerability database is unreachable ({error})"
        last = (stderr.strip().splitlines() or ["no output"])[-1]
        return returncode or 1, f"audit failed: pip-audit exited {returncode}: {last}"
    found = [f"{d['name']} {d['version']}: {', '.join(v['id'] for v in d['vulns'])}"
             for d in dependencies if d.get("vulns")]
    if found:
        return 1, f"audit failed: {len(found)} vulnerable packages: " + "; ".join(found)
    skipped = [d["name"] for d in dependencies if "skip_reason" in d]
    if dependencies and len(skipped) == len(dependencies):
        return 0, (f"audit skipped: none of the {len(skipped)} locked packages could be looked up "
                   "(no vulnerability database answers)")
    if skipped:
        return 1, f"audit failed: {len(skipped)} packages could not be audited: {', '.join(skipped)}"
    if returncode != 0:
        return returncode, f"audit failed: pip-audit exited {returncode}: {stderr.strip()[-200:]}"
    return 0, f"audit passed: no known vulnerabilities in {len(dependencies)} locked packages"


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        subprocess.run([str(UV), "export", "--frozen", "--all-extras", "--format", "requirements-txt",
                        "--no-emit-project", "--quiet", "-o", str(requirements)], check=True, cwd=ROOT)
        result = subprocess.run([str(PIP_AUDIT), "-r", str(requirements), "--require-hashes", "--disable-pip",
                                 "--progress-spinner", "off", "--timeout", "15", "--format", "json"],
                                capture_output=True, text=True, cwd=ROOT, timeout=600)
    code, line = decide(result.returncode, result.stdout, result.stderr)
    print(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
