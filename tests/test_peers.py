"""The benchmark's peers: each starts, delivers exactly what is published to every subscriber, and stops cleanly.

A comparison is only worth something if every server under test is doing the same job: these tests start each peer
exactly as the benchmark does (pinned to a CPU, with its open-files limit), hold three SSE subscribers open, publish
three single-line JSON events with the peer's own ``PublishRequest`` and check that every subscriber got exactly
those data strings, in order, each decodable on arrival. Then they check that stopping leaves no process behind.
"""

from __future__ import annotations

import json
import os
import re
import resource
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest

from benchmarks.peers import PEERS, GatewayPeer, NchanPeer, Peer, Target
from benchmarks.peers import nchan as nchan_module
from benchmarks.peers import process as process_module
from benchmarks.peers.nchan import render_config
from gateway.core.sse import ParsedEvent
from tests.support.server import STRICT, require_binary
from tests.support.sse_client import SSEReader

SUBSCRIBERS = 3
TIMEOUT = 10.0

# (peer, Accept-Encoding the subscribers send, Content-Encoding the peer must answer with)
CASES = [
    pytest.param("gateway", "identity", None, id="gateway"),
    pytest.param("nchan", "br, gzip", None, id="nchan"),  # nginx must not compress, whatever the client offers
    pytest.param("sse-starlette", "br, gzip", None, id="sse-starlette"),
    pytest.param("naive-quart", "br", None, id="naive-quart"),
    pytest.param("naive-quart-br", "br", "br", id="naive-quart-br"),
]
SSE_IDS = {
    "gateway": re.compile(r"\d+"),  # the bus version
    "nchan": re.compile(r"\d+:\d+"),  # publication time (s) : sequence within that second
}


def require_peer(name: str) -> Peer:
    """The peer, or a skip saying what is missing (a failure with GATEWAY_TEST_STRICT=1, as in CI)."""
    peer = PEERS[name]
    if isinstance(peer, NchanPeer):
        require_binary("nginx")
    reason = peer.missing()
    if reason is not None:
        message = f"peer {name!r} cannot run here: {reason}"
        if STRICT:
            pytest.fail(message + "; GATEWAY_TEST_STRICT=1 makes this a failure")
        pytest.skip(message)
    return peer


def payloads(count: int) -> list[str]:
    """Single-line JSON of about 180 bytes, as the harness publishes (with a non-ASCII character and spaces)."""
    return [
        json.dumps(
            {"seq": seq, "symbol": "ABCD", "venue": "XNAS", "price": 123.45 + seq, "bid": 123.4, "ask": 123.5,
             "size": 1200, "note": "café au lait, 2 sugars", "ts": 1_717_200_000_000 + seq, "pad": "x" * 40},
            ensure_ascii=False,
        )
        for seq in range(count)
    ]


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone: it holds no port, CPU or memory)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def soft_nofile(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text(encoding="ascii").splitlines():
        if line.startswith("Max open files"):
            value = line.split()[3]
            return resource.RLIM_INFINITY if value == "unlimited" else int(value)
    raise AssertionError(f"no open-files limit for {pid}")


def logs(workdir: Path, name: str) -> list[Path]:
    return list(workdir.glob(f"{name}-*.log"))


async def publish(client: httpx.AsyncClient, target: Target, topic: str, data: str) -> None:
    request = target.publish(topic, data)
    response = await client.request(request.method, request.path, headers=list(request.headers), content=request.body)
    assert response.status_code in request.ok_status, (response.status_code, response.text)


@pytest.mark.unit
def test_registry_names_every_peer_once() -> None:
    assert list(PEERS) == ["gateway", "nchan", "sse-starlette", "naive-quart", "naive-quart-br"]
    for name, peer in PEERS.items():
        assert isinstance(peer, Peer)
        assert peer.name == name
        assert peer.description
        assert "\n" not in peer.description


@pytest.mark.live
@pytest.mark.asyncio
@pytest.mark.parametrize(("name", "accept_encoding", "content_encoding"), CASES)
async def test_peer_delivers_every_event_to_every_subscriber(
    tmp_path: Path, name: str, accept_encoding: str, content_encoding: str | None
) -> None:
    peer = require_peer(name)
    cpu = max(os.sched_getaffinity(0))
    topic = f"peer-test-{uuid.uuid4().hex[:10]}"
    sent = payloads(3)
    received: list[list[ParsedEvent]] = []
    with peer.start(tmp_path, cpu=cpu) as target:
        pids = target.pids
        assert target.host == "127.0.0.1"
        assert len(pids) == (2 if name == "nchan" else 1)  # one process, or nginx's master + its one worker
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        for pid in pids:
            assert os.sched_getaffinity(pid) == {cpu}, f"process {pid} of {name} is not pinned to CPU {cpu}"
            assert soft_nofile(pid) >= min(hard, 65536), f"process {pid} of {name} kept a low open-files limit"
        headers = {"Accept": "text/event-stream", "Accept-Encoding": accept_encoding}
        async with httpx.AsyncClient(base_url=target.base_url, timeout=TIMEOUT) as client, AsyncExitStack() as stack:
            readers = []
            for _ in range(SUBSCRIBERS):
                # Entering the stream returns once the response head is in: the peers subscribe before sending it.
                response = await stack.enter_async_context(client.stream("GET", target.subscribe_path(topic),
                                                                         headers=headers))
                assert response.status_code == 200, await response.aread()
                assert response.headers["content-type"].startswith("text/event-stream")
                assert response.headers.get("content-encoding") == content_encoding
                readers.append(SSEReader(response.aiter_raw(), content_encoding))
            for data in sent:
                await publish(client, target, topic, data)
            for reader in readers:
                received.append([await reader.next_event(TIMEOUT) for _ in sent])
    for events in received:
        assert [event.data for event in events] == sent
        assert {event.event for event in events} == {"message"}
        pattern = SSE_IDS.get(name)
        for event in events:
            assert (event.id is None) if pattern is None else (event.id is not None and pattern.fullmatch(event.id))
    assert not [pid for pid in pids if alive(pid)], f"{name} left processes behind after stopping"
    assert logs(tmp_path, name), "every peer logs to a file in the work directory"


@pytest.mark.live
def test_a_server_that_cannot_start_fails_with_its_log(tmp_path: Path) -> None:
    peer = GatewayPeer(args=("--no-such-option",))
    with pytest.raises(RuntimeError, match="no-such-option"), peer.start(tmp_path):
        pytest.fail("started with a bad option")


@pytest.mark.unit
def test_nchan_config_keeps_everything_in_its_prefix(tmp_path: Path) -> None:
    """The generated nginx.conf: one worker, no compression, no access log, nothing written outside the prefix."""
    conf = render_config(tmp_path, 8080)
    assert "worker_processes 1;" in conf
    assert "master_process on;" in conf
    assert "gzip off;" in conf
    assert "access_log off;" in conf
    assert "listen 127.0.0.1:8080" in conf
    paths = re.findall(r"^\s*(?:pid|lock_file|error_log|\w+_temp_path) (\S+?)[ ;]", conf, flags=re.MULTILINE)
    assert len(paths) == 8
    assert all(path.startswith(str(tmp_path)) for path in paths), paths
    assert int(re.search(r"worker_connections (\d+);", conf).group(1)) >= 10_000  # type: ignore[union-attr]


@pytest.mark.unit
def test_nchan_is_missing_without_its_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nchan_module, "MODULE", tmp_path / "ngx_nchan_module.so")
    reason = NchanPeer().missing()
    assert reason is not None
    assert "nginx" in reason  # names what to install: nginx itself or libnginx-mod-nchan


@pytest.mark.live
def test_pinning_without_taskset_reaches_nginx_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback pins the master and, once forked, its worker: the CPU comparison needs every process pinned."""
    peer = require_peer("nchan")
    monkeypatch.setattr(process_module, "_taskset", lambda: None)
    cpu = min(os.sched_getaffinity(0))
    with peer.start(tmp_path, cpu=cpu) as target:
        assert len(target.pids) == 2
        for pid in target.pids:
            assert os.sched_getaffinity(pid) == {cpu}
