"""What an idle HTTP/1.1 stream no longer holds (``docs/idle-memory.md``): asyncio's deque of drain waiters
(``gateway.web.hypercorn.drain_waiters``), with the drain semantics it must keep, and coroutine frames that only
forward a call (the corrections' wrappers, Hypercorn's ``ASGIWrapper``, ``asyncio.wait_for`` without a timeout,
the gateway's own dispatch), and the parsed request of a hub stream and its headers."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.raw_stream import RawStream
from tests.support.server import ROOT, start_server
from tests.support.wait import wait_until

STEP = 5.0  # seconds any single wait below may take

# The coroutines an idle HTTP/1.1 connection and its hub stream's request hold, outermost first: each is a frame
# (200-400 bytes) kept for the stream's whole life.
CONNECTION = ["worker_serve.<locals>._server_callback", "TCPServer.run", "install.<locals>._read_data",
              "StreamReader.read", "StreamReader._wait_for_data"]
REQUEST = ["_handle", "Dispatcher.__call__", "serve_hub"]


def _run(script: str) -> dict[str, Any]:
    """``script`` in a process of its own (the corrections patch classes for the whole process); its JSON line."""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT,
                            check=False)
    assert result.returncode == 0, result.stderr
    found: dict[str, Any] = json.loads(result.stdout)
    return found


@pytest.mark.live  # in a process of its own: the correction patches asyncio's class for the whole process
def test_a_stream_connection_holds_no_deque_of_drain_waiters() -> None:
    found = _run(DRAIN_WAITERS)
    assert found["before"] == "deque"
    assert found["after"] == "list"
    assert found["bytes"] <= 72  # an empty list, no item block (a deque: 760)
    assert found["paused_drain_waited"] is True  # a drain over the high-water mark waits for the peer to read ...
    assert found["resumed"] is True  # ... and returns once it did
    assert found["lost"] in ("ConnectionResetError", "BrokenPipeError")  # a paused drain hears the connection die
    assert found["left"] == 0  # no waiter left behind


DRAIN_WAITERS = """
import asyncio, json, socket, struct, sys
from asyncio.streams import FlowControlMixin
from gateway.web.hypercorn import drain_waiters

async def main():
    loop = asyncio.get_running_loop()
    out = {"before": type(FlowControlMixin(loop)._drain_waiters).__name__}
    drain_waiters.install()
    out["after"] = type(FlowControlMixin(loop)._drain_waiters).__name__
    accepted = asyncio.Queue()
    server = await asyncio.start_server(lambda r, w: accepted.put_nowait((r, w)), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    for lose in (False, True):
        client_reader, client_writer = await asyncio.open_connection("127.0.0.1", port)
        reader, writer = await asyncio.wait_for(accepted.get(), 5)
        protocol = writer.transport.get_protocol()
        out["bytes"] = sys.getsizeof(protocol._drain_waiters)
        writer.transport.set_write_buffer_limits(high=1)
        writer.write(b"x" * 8_000_000)  # more than the socket buffers hold: the transport pauses
        drain = asyncio.ensure_future(writer.drain())
        await asyncio.sleep(0.05)
        out["paused_drain_waited"] = not drain.done() and len(protocol._drain_waiters) == 1
        if lose:  # the client resets the connection: the server's next write fails
            sock = client_writer.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client_writer.transport.abort()
            try:
                await asyncio.wait_for(drain, 5)
            except Exception as exc:
                out["lost"] = type(exc).__name__
        else:
            await client_reader.readexactly(8_000_000)
            await asyncio.wait_for(drain, 5)
            out["resumed"] = True
        out["left"] = len(protocol._drain_waiters)
        client_writer.close()
    server.close()
    print(json.dumps(out))

asyncio.run(main())
"""


@pytest.mark.live
@pytest.mark.asyncio
async def test_an_idle_stream_holds_only_the_coroutines_it_needs(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    srv = start_server(tmp_path, certs, args=["--app", "tests.support.frames_app:gw"])
    stream: RawStream | None = None
    try:
        stream = await RawStream.open(srv.http_port, "/hub/subscribe?topic=idle")
        async with httpx.AsyncClient(base_url=srv.http, timeout=STEP) as client:

            async def chains() -> list[list[str]]:
                found: list[list[str]] = (await client.get("/frames")).json()["tasks"]
                return found

            await wait_until(lambda: _has_stream(chains()), STEP, what="the stream's task waiting for a write")
            report = (await client.get("/frames")).json()
        tasks = report["tasks"]
        assert report["requests"] == 0  # the stream took what it needs of its parsed request, and let it go
        assert report["hub_headers"] == [0]  # and nobody reads the headers in the scope Hypercorn keeps
        assert CONNECTION in tasks  # no wrapper around run or _read_data, no wait_for around the read
        # No wrapper around Hypercorn's task function, no ASGIWrapper, no Gateway.__call__ (``gateway serve`` serves
        # its dispatcher), no frame for choosing the route, for the hub's loop or for its sleep (serve_hub awaits the
        # stream's future itself), no generator for the CORS context.
        assert REQUEST in tasks
    finally:
        if stream is not None:
            stream.close()
        srv.stop()


@pytest.mark.live
@pytest.mark.asyncio
async def test_a_stream_keeps_its_request_headers_for_hypercorns_access_log(tmp_path: Path,
                                                                           certs: tuple[Path, Path]) -> None:
    """With ``server.access_log`` Hypercorn writes an access line when the response ends, from the headers in the
    scope: those stay, and the line names the client's user agent."""
    srv = start_server(tmp_path, certs, args=["--app", "tests.support.frames_app:gw"],
                       env={"GATEWAY_SERVER_ACCESS_LOG": "true"})
    stream: RawStream | None = None
    try:
        stream = await RawStream.open(srv.http_port, "/hub/subscribe?topic=idle", headers={"user-agent": "idle/1"})
        async with httpx.AsyncClient(base_url=srv.http, timeout=STEP) as client:
            report = (await client.get("/frames")).json()
        (kept,) = report["hub_headers"]
        assert kept > 0
        stream.close()
        stream = None
        await wait_until(lambda: "idle/1" in srv.output(), STEP, what="the stream's access line")
    finally:
        if stream is not None:
            stream.close()
        srv.stop()


async def _has_stream(chains: Awaitable[list[list[str]]]) -> bool:
    return any(chain[-1:] == ["serve_hub"] for chain in await chains)


@pytest.mark.live  # in a process of its own: the correction patches h11's class for the whole process
def test_an_http1_connection_shares_its_empty_switch_proposals() -> None:
    found = _run(SWITCH_PROPOSALS)
    assert found["after"] == found["before"]  # every state h11 reaches, the same (upgrade, CONNECT, declined, plain)
    assert found["before"]["upgrade"][-1] == ["SWITCHED_PROTOCOL", "SWITCHED_PROTOCOL"]
    assert found["before"]["declined"][-1] == ["DONE", "SEND_BODY"]  # declined: the client is done, no switch
    assert found["shared"] is True  # no proposal pending: the one empty frozenset, no set per connection


SWITCH_PROPOSALS = """
import json
import h11
from gateway.web.hypercorn import h11_switch_proposals

def states(conn):
    return [conn.their_state.__name__, conn.our_state.__name__]

def exchange(head, response):
    conn = h11.Connection(h11.SERVER)
    seen = [states(conn)]
    conn.receive_data(head)
    event = conn.next_event()
    seen.append([type(event).__name__, *states(conn)])
    seen.append([type(conn.next_event()).__name__, *states(conn)])
    conn.send(response)
    seen.append(states(conn))
    return conn, seen

UPGRADE = b"GET /ws HTTP/1.1\\r\\nHost: a\\r\\nConnection: upgrade\\r\\nUpgrade: websocket\\r\\n\\r\\n"
CONNECT = b"CONNECT a:443 HTTP/1.1\\r\\nHost: a:443\\r\\n\\r\\n"
PLAIN = b"GET / HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n"
SWITCH = h11.InformationalResponse(status_code=101, headers=[("connection", "upgrade"), ("upgrade", "websocket")])
OK = h11.Response(status_code=200, headers=[("content-length", "0")])

def scenario():
    out = {}
    out["upgrade"] = exchange(UPGRADE, SWITCH)[1]
    out["connect"] = exchange(CONNECT, h11.Response(status_code=200, headers=[]))[1]
    out["declined"] = exchange(UPGRADE, OK)[1]
    conn, out["plain"] = exchange(PLAIN, OK)
    conn.send(h11.EndOfMessage())
    conn.start_next_cycle()
    out["plain"].append(states(conn))
    return out, conn

before, _ = scenario()
h11_switch_proposals.install()
after, conn = scenario()
other = h11.Connection(h11.SERVER)
shared = conn._cstate.pending_switch_proposals is h11_switch_proposals.NONE is other._cstate.pending_switch_proposals
print(json.dumps({"before": before, "after": after, "shared": shared}))
"""


@pytest.mark.live  # in a process of its own: the correction patches asyncio's class for the whole process
def test_a_stream_writer_holds_no_completed_future() -> None:
    found = _run(WRITER_FUTURE)
    assert found["before"] is True
    assert found["after"] is False
    assert found["echoed"] == "hello"  # write, drain, close and wait_closed work as before


WRITER_FUTURE = """
import asyncio, json
from gateway.web.hypercorn import writer_future

async def echo(reader, writer):
    writer.write(await reader.readexactly(5))
    await writer.drain()
    writer.close()
    await writer.wait_closed()

async def main():
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    out = {}
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    out["before"] = writer._complete_fut is not None
    writer.close()
    writer_future.install()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out["after"] = writer._complete_fut is not None
    writer.write(b"hello")
    await writer.drain()
    out["echoed"] = (await asyncio.wait_for(reader.read(), 5)).decode()
    writer.close()
    await writer.wait_closed()
    server.close()
    print(json.dumps(out))

asyncio.run(main())
"""
