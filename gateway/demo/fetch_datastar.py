"""Fetch Datastar's browser client for the Datastar demo, from a package registry, pinned by hash.

The client is never committed: it is third-party code with its own release cycle, and a copy in the tree would
drift from any release anyone can check. It is fetched at install time (``make install``, ``make test``, ``make
run`` run this file) into ``gateway/demo/datastar_static/datastar.js``, which git ignores, and the demo refuses to
start without it (``gateway.demo.datastar``).

Where it comes from. Only PyPI, npm and Debian are reachable from this project's machines, and none of them ships
Datastar's own 1.x build under Datastar's name: npm's ``@starfederation/datastar`` stops at 1.0.0-beta.11 (the
pre-1.0 wire format, ``datastar-merge-fragments``) and ``@starfederation/datastar-sdk`` is the server SDK only.
The StarHTML framework's wheel on PyPI vendors the released Datastar v1.0.1 as one self-contained ES module
(``starhtml/static/js/datastar-core.js``, speaking ``datastar-patch-elements`` / ``datastar-patch-signals``), with
two small patches of StarHTML's named in its first line (a ``datastar:scan`` listener for shadow roots, and a fix
to the ``__outside`` modifier) that the demo uses neither of. The wheel is downloaded with pip, the registry's own
client, without its dependencies (it is never installed: it needs Python 3.12, this project supports 3.11), and
checked twice: pip checks the wheel's sha256 (``--require-hashes``), this file checks the extracted client's.

Run it as a script with any Python that has pip (the Makefile uses the tools venv, which always has one); it
imports nothing but the standard library, so it works before the project is installed. Idempotent: a client
already in place with the pinned hash costs one sha256 of 35 KB. A mismatch anywhere exits non-zero, naming
both hashes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["CLIENT", "TARGET", "ClientSource", "HashMismatch", "client_is_current", "fetch", "sha256_of"]


@dataclass(frozen=True, slots=True)
class ClientSource:
    """One pinned build of the client: the registry package holding it and the hashes of both files."""

    package: str
    version: str
    wheel_sha256: str
    """Of the wheel file as the registry serves it; pip refuses any other (``--require-hashes``)."""
    member: str
    """The client's path inside the wheel."""
    sha256: str
    """Of the client file itself: what the demo serves, whichever wheel it came out of."""
    datastar_version: str
    python_version: str
    """A Python the wheel accepts (``--python-version``): pip only downloads it, so it need not be ours."""

    def requirement(self) -> str:
        """The line of a hash-checking requirements file that names exactly this wheel."""
        return f"{self.package}=={self.version} --hash=sha256:{self.wheel_sha256}\n"


CLIENT: Final = ClientSource(
    package="starhtml",
    version="0.7.0",
    wheel_sha256="3515ac3a21f1be7ce3e724b45440ed2be20d3afcdb60f92f6ebbfaec883d3ea2",
    member="starhtml/static/js/datastar-core.js",
    sha256="31c8c9efb895beadeba5f73407c3ca60201dee321c5dea56c182817b475bde9f",
    datastar_version="1.0.1",
    python_version="3.12",
)

TARGET: Final = Path(__file__).resolve().parent / "datastar_static" / "datastar.js"

PIP_TIMEOUT: Final = 300.0
"""Seconds for the whole download: pip's own per-request timeout does not bound a stalled transfer overall."""


class HashMismatch(RuntimeError):
    """The bytes are not the pinned ones: a changed upload, a corrupted download or a tampered file."""


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's contents."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def client_is_current(path: Path = TARGET, source: ClientSource = CLIENT) -> bool:
    """True when ``path`` holds exactly the pinned client, so that nothing needs fetching."""
    return path.is_file() and sha256_of(path) == source.sha256


def fetch(target: Path = TARGET, source: ClientSource = CLIENT) -> bool:
    """Put the pinned client at ``target``; True when it had to be fetched, False when it was already there.

    Raises ``HashMismatch`` when the extracted client is not the pinned one, and ``RuntimeError`` when pip fails
    (with pip's own output). The file is written next to ``target`` and renamed, so a run that dies half-way never
    leaves a truncated client for the demo to serve.
    """
    if client_is_current(target, source):
        return False
    with tempfile.TemporaryDirectory(prefix="datastar-fetch-") as tmp:
        wheel = _download(source, Path(tmp))
        data = _extract(wheel, source)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    partial.write_bytes(data)
    os.replace(partial, target)
    return True


def _download(source: ClientSource, directory: Path) -> Path:
    """Download the pinned wheel with pip, which checks its sha256 against the requirement's."""
    requirements = directory / "requirements.txt"
    requirements.write_text(source.requirement())
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--python-version", source.python_version, "--require-hashes", "-r", str(requirements),
        "-d", str(directory), "--quiet", "--disable-pip-version-check", "--no-input",
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(
            f"pip download of {source.package}=={source.version} took over {PIP_TIMEOUT:.0f} s"
        ) from None
    wheels = sorted(directory.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        raise RuntimeError(
            f"pip could not download {source.package}=={source.version} with sha256 {source.wheel_sha256} "
            f"(exit {done.returncode}):\n{done.stdout}{done.stderr}"
        )
    return wheels[0]


def _extract(wheel: Path, source: ClientSource) -> bytes:
    """The client's bytes out of the wheel, refused unless their sha256 is the pinned one."""
    with zipfile.ZipFile(wheel) as archive:
        try:
            data = archive.read(source.member)
        except KeyError:
            raise HashMismatch(f"{wheel.name} holds no {source.member}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != source.sha256:
        raise HashMismatch(
            f"{source.member} in {wheel.name} has sha256 {actual}, pinned {source.sha256}: refusing to use it"
        )
    if b"datastar-patch-elements" not in data:  # the 1.x wire format, which the pinned hash already implies
        raise HashMismatch(f"{source.member} does not speak datastar-patch-elements: not a Datastar 1.x client")
    return data


def main(argv: list[str] | None = None) -> int:
    """Fetch (or with ``--check`` only verify) the client; print one line saying what happened."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--target", type=Path, default=TARGET, help="where the client goes (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="only verify the client in place; exit 1 if it is not")
    args = parser.parse_args(argv)
    label = f"Datastar v{CLIENT.datastar_version} from {CLIENT.package}=={CLIENT.version}"
    if args.check:
        if client_is_current(args.target):
            print(f"{args.target}: {label}, sha256 {CLIENT.sha256}")
            return 0
        print(f"{args.target}: missing or not {label} (sha256 {CLIENT.sha256})", file=sys.stderr)
        return 1
    try:
        fetched = fetch(args.target)
    except (HashMismatch, RuntimeError) as exc:
        print(f"fetching the Datastar client failed: {exc}", file=sys.stderr)
        return 1
    if fetched:
        print(f"fetched {label} into {args.target} (sha256 {CLIENT.sha256})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
