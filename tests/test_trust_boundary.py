"""Read deadlines, connection caps and Host checking against a live gateway over loopback sockets.

Every attack here is bounded in count and time and stops by itself; a slow sender's pause between bytes is the
behaviour under test, not synchronisation.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from pathlib import Path

import httpx
import orjson
import pytest

from tests.support.metrics import metric
from tests.support.raw_stream import RawStream
from tests.support.server import HUB_TOKEN, free_port, start_server

pytestmark = [pytest.mark.live, pytest.mark.asyncio]

SLOW = 500  # slow header senders, and as many slow body senders
DRIP = 0.5  # seconds between two bytes of a slow sender


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, need)), hard))


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of the next response (status 0 when the connection closed without one)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return 0, {}, b""
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status.split()[1]), headers, body


async def _read_answer(reader: asyncio.StreamReader, timeout: float) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of the one response on a connection, then its end (0 when closed silently)."""
    async with asyncio.timeout(timeout):
        status, headers, body = await _read_response(reader)
        if status:
            assert await reader.read() == b""  # and the server closed it
        return status, headers, body


async def _drip(port: int, prefix: bytes, drip: bytes, timeout: float) -> tuple[int, bytes, float]:
    """Send ``prefix``, then ``drip`` one byte every DRIP seconds until the server answers; (status, body, s)."""
    started = time.monotonic()
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    writer.write(prefix)

    async def dribble() -> None:
        for byte in drip:
            await asyncio.sleep(DRIP)  # the slow sender's pause IS the behaviour under test
            writer.write(bytes([byte]))
            await writer.drain()

    dripper = asyncio.create_task(dribble())
    try:
        status, _, body = await _read_answer(reader, timeout)
        return status, body, time.monotonic() - started
    finally:
        dripper.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await dripper
        writer.close()


async def test_slow_headers_and_bodies_are_cut_by_deadlines(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    """500 header dribblers get 408 at limits.header_timeout, 500 body dribblers 408 at limits.body_timeout; a
    silent connection is closed; /healthz and a hub stream keep working all along."""
    _raise_fd_limit(4 * SLOW + 512)
    header_timeout, body_timeout = 1.5, 2.0
    srv = start_server(tmp_path, certs, env={
        "GATEWAY_LIMITS_HEADER_TIMEOUT": str(header_timeout), "GATEWAY_LIMITS_BODY_TIMEOUT": str(body_timeout),
        "GATEWAY_LIMITS_MAX_CONNECTIONS_PER_ADDRESS": "0"})  # every attacker is 127.0.0.1
    try:
        hub = await RawStream.open(srv.http_port, "/hub/subscribe?topic=alive")
        assert hub.status == 200
        head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        body_head = (b"POST /todos/add HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 60000\r\n\r\n{\"text\": \"")
        attack = [_drip(srv.http_port, head, b"X-Slow: " + b"a" * 100, 15) for _ in range(SLOW)]
        attack += [_drip(srv.http_port, body_head, b"b" * 100, 15) for _ in range(SLOW)]
        attack += [_drip(srv.http_port, b"", b"", 15) for _ in range(10)]  # connect, then say nothing

        healthy: list[float] = []

        async def healthy_client() -> None:
            async with httpx.AsyncClient(timeout=5) as client:
                for n in range(8):
                    started = time.monotonic()
                    assert (await client.get(srv.http + "/healthz")).status_code == 200
                    healthy.append(time.monotonic() - started)
                    published = await client.post(srv.http + "/hub/publish", json={"topic": "alive", "data": str(n)},
                                                  headers={"Authorization": f"Bearer {HUB_TOKEN}"})
                    assert published.status_code == 204
                    data, _ = await hub.next_event(timeout=5)
                    assert data == str(n)
                    await asyncio.sleep(0.3)  # paces the healthy client across the attack, not a synchronisation

        started = time.monotonic()
        results, _ = await asyncio.gather(asyncio.gather(*attack), healthy_client())
        took = time.monotonic() - started
        headers, bodies, silent = results[:SLOW], results[SLOW:2 * SLOW], results[2 * SLOW:]
        print(f"\n{SLOW} header + {SLOW} body dribblers: all answered within {took:.1f} s; header 408 after "
              f"{min(t for *_, t in headers):.2f}-{max(t for *_, t in headers):.2f} s, body 408 after "
              f"{min(t for *_, t in bodies):.2f}-{max(t for *_, t in bodies):.2f} s; /healthz during it: "
              f"max {max(healthy) * 1000:.0f} ms")
        assert {status for status, *_ in headers} == {408}
        assert {status for status, *_ in bodies} == {408}
        assert {status for status, *_ in silent} == {0}  # closed without a word
        assert orjson.loads(headers[0][1])["error"] == "request_timeout"
        assert orjson.loads(bodies[0][1])["error"] == "request_timeout"
        assert all(header_timeout - 0.1 <= t < header_timeout + 5 for *_, t in headers)
        assert all(body_timeout - 0.1 <= t < body_timeout + 5 for *_, t in bodies)
        assert await metric(srv.http, "gateway_request_deadlines_total", stage="header") == SLOW
        assert await metric(srv.http, "gateway_request_deadlines_total", stage="body") == SLOW
        assert await metric(srv.http, "gateway_request_deadlines_total", stage="connect") >= 10
        # An SSE stream is never touched by either deadline: the hub stream opened first still delivers.
        async with httpx.AsyncClient(timeout=5) as client:
            await client.post(srv.http + "/hub/publish", json={"topic": "alive", "data": "after"},
                              headers={"Authorization": f"Bearer {HUB_TOKEN}"})
        assert (await hub.next_event(timeout=5))[0] == "after"
        hub.close()
    finally:
        assert srv.stop() == 0


async def test_a_pipelined_head_is_cut_by_the_deadline(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    """One complete request and, in the same write, the start of a second whose rest is dribbled slower than the
    deadline: the second head gets 408 within limits.header_timeout of the first response. Its first bytes were
    read before that response was out, so no later read armed the deadline: without the correction the first
    dribbled byte armed it (here 4 s later), and a client that said nothing more was held until the keep-alive
    timeout (75 s)."""
    header_timeout, drip = 1.5, 4.0
    srv = start_server(tmp_path, certs, env={"GATEWAY_LIMITS_HEADER_TIMEOUT": str(header_timeout)})
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", srv.http_port), 5)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        async with asyncio.timeout(5):
            status, _, _ = await _read_response(reader)
        answered = time.monotonic()
        assert status == 200

        async def dribble() -> None:
            for byte in b"X-Slow: aaaa":
                await asyncio.sleep(drip)  # the slow sender's pause IS the behaviour under test
                writer.write(bytes([byte]))
                await writer.drain()

        dripper = asyncio.create_task(dribble())
        try:
            status, _, body = await _read_answer(reader, header_timeout + 2.0)
        finally:
            dripper.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await dripper
            writer.close()
        took = time.monotonic() - answered
        print(f"\npipelined head cut {took:.2f} s after the first response")
        assert status == 408
        assert orjson.loads(body)["error"] == "request_timeout"
        assert header_timeout - 0.1 <= took < drip
        assert await metric(srv.http, "gateway_request_deadlines_total", stage="header") == 1
    finally:
        assert srv.stop() == 0


async def _open_idle(port: int, count: int) -> list[asyncio.StreamWriter]:
    writers = []
    for _ in range(count):
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        writers.append(writer)
    return writers


async def _healthz_on_new_connection(port: int) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        return await _read_answer(reader, 5)
    finally:
        writer.close()


async def test_per_address_connection_cap(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    """Past limits.max_connections_per_address an address is refused with 503 at once; a trusted proxy is exempt
    from it but not from limits.max_connections."""
    cap = 20
    # Held connections say nothing: the header deadline must not free their slots while the test counts them,
    # however slowly a loaded machine opens them (it did at 3 s), so it is far longer than the test.
    plain = start_server(tmp_path, certs, env={"GATEWAY_LIMITS_MAX_CONNECTIONS_PER_ADDRESS": str(cap),
                                               "GATEWAY_LIMITS_HEADER_TIMEOUT": "120"})
    proxied = start_server(tmp_path, certs, env={"GATEWAY_LIMITS_MAX_CONNECTIONS_PER_ADDRESS": str(cap),
                                                 "GATEWAY_LIMITS_HEADER_TIMEOUT": "120",
                                                 "GATEWAY_LIMITS_MAX_CONNECTIONS": str(cap + 15),
                                                 "GATEWAY_LIMITS_TRUSTED_PROXIES": "127.0.0.1"})
    held: list[asyncio.StreamWriter] = []
    try:
        held += await _open_idle(plain.http_port, cap)
        started = time.monotonic()
        status, headers, body = await _healthz_on_new_connection(plain.http_port)
        refused_in = time.monotonic() - started
        assert status == 503, (status, body)
        assert headers["retry-after"] == "1"
        assert orjson.loads(body)["error"] == "unavailable"
        assert await _tls_refused(plain.tls_port)
        # The TLS listener counts too, and the metrics requests need connections of their own: free some.
        for _ in range(3):
            held.pop().close()
        await asyncio.sleep(0)
        refused = await _refused(plain.http, "address")
        assert refused >= 2
        # Behind a trusted proxy, one address carries many clients: only the process cap applies.
        held += await _open_idle(proxied.http_port, cap + 10)
        assert (await _healthz_on_new_connection(proxied.http_port))[0] == 200
        # The /healthz connection above was closed by the client and its slot released at once: 35 of 35 now.
        held += await _open_idle(proxied.http_port, 5)
        assert (await _healthz_on_new_connection(proxied.http_port))[0] == 503
        for _ in range(5):
            held.pop().close()
        assert await _refused(proxied.http, "global") >= 1
        assert await _refused(proxied.http, "address") == 0
        print(f"\nconnection {cap + 1} from one address refused with 503 in {refused_in * 1000:.1f} ms")
    finally:
        for writer in held:
            writer.close()
        assert plain.stop() == 0
        assert proxied.stop() == 0


async def _tls_refused(port: int) -> bool:
    """A TLS connection past the cap is answered 503 (ALPN http/1.1) after the handshake, then closed."""
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=context), 5)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, _, _ = await _read_answer(reader, 5)
        return status == 503
    except (ConnectionError, ssl.SSLError):
        return True
    finally:
        writer.close()


async def _refused(base: str, reason: str) -> float:
    """The refusal count, read once a slot is free again (a closed or timed-out connection releases it): while
    the cap is still reached, the metrics request is itself refused. Bounded."""
    async with asyncio.timeout(10):
        while True:
            with contextlib.suppress(httpx.TransportError, ValueError):
                return await metric(base, "gateway_connections_refused_total", reason=reason)
            await asyncio.sleep(0.05)


async def test_server_names_refuse_other_hosts(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    """server.server_names: a named Host is served over HTTP/1.1 and h2 (its :authority), any other gets 404."""
    port = free_port()
    srv = start_server(tmp_path, certs, http_port=port,
                       env={"GATEWAY_SERVER_SERVER_NAMES": f"good.example, 127.0.0.1:{port}"})
    try:
        async with httpx.AsyncClient(timeout=5) as h1:
            assert (await h1.get(srv.http + "/healthz", headers={"Host": "good.example"})).status_code == 200
            assert (await h1.get(srv.http + "/healthz", headers={"Host": "evil.example"})).status_code == 404
            assert (await h1.post(srv.http + "/todos/add", json={"text": "x"},
                                  headers={"Host": "evil.example"})).status_code == 404
        async with httpx.AsyncClient(timeout=5, http1=False, http2=True, verify=False) as h2:
            good = await h2.get(srv.https + "/healthz", headers={"Host": "good.example"})
            assert (good.http_version, good.status_code) == ("HTTP/2", 200)
            evil = await h2.get(srv.https + "/healthz", headers={"Host": "evil.example"})
            assert (evil.http_version, evil.status_code) == ("HTTP/2", 404)
    finally:
        assert srv.stop() == 0
