"""The contract between a peer (a server the benchmark compares against) and the scenario runner.

The runner never knows how a peer is launched or what its URLs look like: it asks the peer for a started
``Target`` and then only uses what the target says (where to subscribe, how to publish, which processes to
measure). Keeping this surface small is what lets one scenario drive nginx, our gateway and a naive app alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = ["Peer", "PublishRequest", "Target"]


@dataclass(frozen=True)
class PublishRequest:
    """One HTTP request that publishes one event.

    ``headers`` are only the peer's own (authorisation, content type): the client adds ``Host``,
    ``Content-Length`` and its connection handling. Any status in ``ok_status`` means the event was accepted.
    """

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    ok_status: tuple[int, ...]


@dataclass(frozen=True)
class Target:
    """A started server under test."""

    name: str
    host: str
    port: int
    pids: tuple[int, ...]  # every process whose CPU and RSS count for this server (nginx: master + worker)
    subscribe_path: Callable[[str], str]  # topic -> path for GET (SSE)
    publish: Callable[[str, str], PublishRequest]  # (topic, data) -> the request publishing `data` as one event's data
    sse_id: str  # how the peer fills SSE ids, for the docs ("bus version", "nchan time:tag", "none")
    tls_port: int | None = None  # HTTP/3 over UDP (and h2 over TCP) on this port, when the peer serves it
    certfile: str | None = None  # the certificate to trust there (self-signed)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


@runtime_checkable
class Peer(Protocol):
    """A server the benchmark can start: ``missing()`` says whether it can run here, ``start()`` runs it."""

    # Read-only here, so that frozen dataclasses and plain class attributes both satisfy the protocol.
    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str:
        """One line for the docs table."""
        ...

    def missing(self) -> str | None:
        """Why this peer cannot run on this machine (binary, module or package absent), else None."""
        ...

    def start(
        self, workdir: Path, *, cpu: int | None = None, env: Mapping[str, str] | None = None
    ) -> AbstractContextManager[Target]:
        """Start the server, yield it once it answers, stop it and release everything on exit."""
        ...
