"""Prove the test clients in ``tests/support`` against a real Hypercorn, before the gateway relies on them.

A helper that silently buffers a stream or falls back from h3 to h2 would make every gateway test that uses
it pass for the wrong reason. So these tests serve a tiny raw ASGI app (no gateway import: it must work
while the gateway is still being written) with Hypercorn in-process over TLS and QUIC on one port number,
and check each helper against it over real loopback sockets.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import parse_qs

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypercorn.asyncio import serve
from hypercorn.config import Config
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, HTTPScope, Scope

from tests.support.chromium import NetworkLog, chromium_or_skip, launch, launch_args, spki_hash
from tests.support.h3client import H3Client, H3ConnectionClosed, H3Error
from tests.support.server import free_port
from tests.support.wait import wait_until

SECONDS: Final = 1.0
STEP: Final = 0.05 * SECONDS
"""Pause between the chunks of a timed stream: long enough to be seen, short enough to keep tests fast."""
GRACEFUL: Final = 0.5 * SECONDS
"""Hypercorn's graceful_timeout here. Over HTTP/3 Hypercorn never tells a handler that its client left, so a
handler still waiting (an SSE stream) is only cancelled when this runs out at shutdown."""
BOUND: Final = 10 * SECONDS
"""Upper bound for any single wait in these tests."""

PAGE: Final = b"""<!doctype html>
<title>support probe</title>
<ul id="events"></ul>
<script>
  const source = new EventSource("/events");
  source.onmessage = (event) => {
    const item = document.createElement("li");
    item.textContent = event.data;
    document.getElementById("events").append(item);
  };
</script>
"""


@dataclass(frozen=True)
class CertFiles:
    """A self-signed certificate for localhost and 127.0.0.1, with its key, as PEM files."""

    cert: Path
    key: Path


@pytest.fixture(scope="session")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    """Make the certificate once per session: EC P-256 keeps it fast, and QUIC stacks all accept it."""
    directory = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    files = CertFiles(cert=directory / "cert.pem", key=directory / "key.pem")
    files.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


class ProbeApp:
    """A raw ASGI app with just enough endpoints to exercise the clients.

    - ``GET /``: an HTML page that opens an EventSource on ``/events``;
    - ``GET /events``: SSE, three events ``STEP`` apart, then held open until the client goes away;
    - ``GET /stream?n=N``: N chunks ``STEP`` apart; with ``&gated=1`` each chunk after the first waits for a
      permit in ``permits``, so a test proves a chunk arrived before the next one was even sent;
    - ``POST /echo``: the request body back, with the protocol version and Host it arrived with.
    """

    def __init__(self) -> None:
        self.permits: asyncio.Queue[None] = asyncio.Queue()
        self.open_event_streams = 0

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        """Dispatch: lifespan is acknowledged, HTTP requests are routed by path."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif scope["type"] == "http":
            await self._route(scope, receive, send)

    async def _route(self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        query = {key: values[-1] for key, values in parse_qs(scope["query_string"].decode()).items()}
        route = (scope["method"], scope["path"])
        if route == ("GET", "/"):
            await self._start(send, 200, "text/html; charset=utf-8")
            await send({"type": "http.response.body", "body": PAGE, "more_body": False})
        elif route == ("GET", "/events"):
            await self._events(receive, send)
        elif route == ("GET", "/stream"):
            await self._stream(send, count=int(query.get("n", "3")), gated=query.get("gated") == "1")
        elif route == ("POST", "/echo"):
            await self._echo(scope, receive, send)
        else:
            await self._start(send, 404, "text/plain")
            await send({"type": "http.response.body", "body": b"not found", "more_body": False})

    async def _events(self, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        await self._start(send, 200, "text/event-stream", [(b"cache-control", b"no-store")])
        self.open_event_streams += 1
        try:
            for number in range(3):
                body = f"data: event-{number}\n\n".encode()
                await send({"type": "http.response.body", "body": body, "more_body": True})
                await asyncio.sleep(STEP)
            while (await receive())["type"] != "http.disconnect":
                pass
        finally:
            self.open_event_streams -= 1

    async def _stream(self, send: ASGISendCallable, *, count: int, gated: bool) -> None:
        await self._start(send, 200, "text/plain")
        for number in range(count):
            if number and gated:
                await self.permits.get()
            elif number:
                await asyncio.sleep(STEP)
            body = f"chunk-{number}\n".encode()
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _echo(self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message["body"]
            if not message["more_body"]:
                break
        host = dict(scope["headers"]).get(b"host", b"")
        extra = [(b"x-http-version", scope["http_version"].encode()), (b"x-host", host)]
        await self._start(send, 200, "application/octet-stream", extra)
        await send({"type": "http.response.body", "body": body, "more_body": False})

    @staticmethod
    async def _start(
        send: ASGISendCallable, status: int, content_type: str, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        headers = [(b"content-type", content_type.encode()), *(extra or [])]
        await send({"type": "http.response.start", "status": status, "headers": headers})


@dataclass
class Server:
    """A running Hypercorn: ``port`` is the same number on TCP (h2, HTTP/1.1) and UDP (HTTP/3)."""

    port: int
    app: ProbeApp
    cert: CertFiles

    @property
    def origin(self) -> str:
        """``host:port`` as browsers and ``:authority`` spell it."""
        return f"127.0.0.1:{self.port}"


async def wait_until_listening(port: int, task: asyncio.Task[None]) -> None:
    """Wait for the TCP listener; the QUIC socket is bound before it, so HTTP/3 is reachable too.

    Hypercorn binds every socket (UDP included) in ``create_sockets`` before it starts listening on TCP, and
    datagrams that arrive before its QUIC endpoint runs wait in the kernel buffer.
    """

    async def accepting() -> bool:
        if task.done():
            task.result()
            raise RuntimeError("Hypercorn stopped before it listened")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        await writer.wait_closed()
        return True

    await wait_until(accepting, BOUND, what=f"Hypercorn accepting on port {port}")


def wake_quic_server(port: int) -> None:
    """Send a junk datagram so Hypercorn's QUIC loop notices the shutdown now.

    ``UDPServer.run`` checks "terminated and no QUIC connections left" only after each datagram it receives;
    without one it sits in ``queue.get()`` until ``graceful_timeout`` cancels it, so every stop would cost
    the full graceful timeout. The datagram is too short to be a QUIC packet and is dropped; the caller
    repeats it until Hypercorn has stopped, as the first may arrive before Hypercorn marked itself terminated.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(b"\0", ("127.0.0.1", port))


@pytest_asyncio.fixture
async def probe_server(cert_files: CertFiles) -> AsyncIterator[Server]:
    """Serve ``ProbeApp`` with Hypercorn on 127.0.0.1: TLS (h2, HTTP/1.1) and QUIC (h3) on one port number."""
    port = free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.quic_bind = [f"127.0.0.1:{port}"]
    config.certfile = str(cert_files.cert)
    config.keyfile = str(cert_files.key)
    config.graceful_timeout = GRACEFUL
    config.errorlog = None
    app = ProbeApp()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))
    await wait_until_listening(port, task)
    try:
        yield Server(port=port, app=app, cert=cert_files)
    finally:
        stop.set()
        async with asyncio.timeout(GRACEFUL + BOUND):
            while not task.done():
                wake_quic_server(port)
                await asyncio.wait({task}, timeout=0.02)
            await task


# HTTP/3 client


@pytest.mark.unit
@pytest.mark.asyncio
async def test_h3_post_echoes_body_and_authority(probe_server: Server) -> None:
    async with H3Client("127.0.0.1", probe_server.port, verify=False) as client:
        response = await client.request("POST", "/echo", headers={"Content-Type": "text/plain"}, body=b"hello")
    assert response.status == 200
    assert response.body == b"hello"
    assert response.header("x-http-version") == "3"
    assert response.header("X-Host") == probe_server.origin
    assert all(name == name.lower() for name, _ in response.headers)


@pytest.mark.unit
@pytest.mark.asyncio
async def test_h3_stream_delivers_each_chunk_before_the_next_is_sent(probe_server: Server) -> None:
    """The gated endpoint sends chunk n+1 only after the test has received chunk n: no buffering anywhere."""
    async with (
        H3Client("127.0.0.1", probe_server.port, verify=False) as client,
        client.stream("GET", "/stream?n=4&gated=1") as stream,
    ):
        assert stream.status == 200
        assert stream.header("content-type") == "text/plain"
        received = []
        async for chunk in stream.aiter_raw(idle_timeout=2 * SECONDS):
            received.append(chunk)
            probe_server.app.permits.put_nowait(None)
        assert stream.ended
    assert received == [f"chunk-{n}\n".encode() for n in range(4)]


@pytest.mark.unit
@pytest.mark.asyncio
async def test_h3_timed_stream_arrives_spread_out(probe_server: Server) -> None:
    loop = asyncio.get_running_loop()
    async with (
        H3Client("127.0.0.1", probe_server.port, verify=False) as client,
        client.stream("GET", "/stream?n=4") as stream,
    ):
        arrivals = [(loop.time(), chunk) async for chunk in stream.aiter_raw()]
    assert b"".join(chunk for _, chunk in arrivals) == b"chunk-0\nchunk-1\nchunk-2\nchunk-3\n"
    assert arrivals[-1][0] - arrivals[0][0] >= 2 * STEP


@pytest.mark.unit
@pytest.mark.asyncio
async def test_h3_posts_run_while_a_stream_is_open_on_the_same_connection(probe_server: Server) -> None:
    async with (
        H3Client("127.0.0.1", probe_server.port, verify=False) as client,
        client.stream("GET", "/stream?n=2&gated=1") as stream,
    ):
        chunks = stream.aiter_raw()
        assert await anext(chunks) == b"chunk-0\n"
        # The stream's handler is now parked on a permit; the POSTs share its QUIC connection.
        responses = await asyncio.gather(
            *(client.request("POST", "/echo", body=f"command-{n}".encode()) for n in range(5))
        )
        assert [r.body for r in responses] == [f"command-{n}".encode() for n in range(5)]
        assert not stream.ended
        probe_server.app.permits.put_nowait(None)
        assert [chunk async for chunk in chunks] == [b"chunk-1\n"]


@pytest.mark.unit
@pytest.mark.asyncio
async def test_h3_leaving_a_stream_early_cancels_only_that_stream(probe_server: Server) -> None:
    """An endless SSE stream is abandoned by leaving its block; the connection must stay usable after."""
    async with H3Client("127.0.0.1", probe_server.port, verify=False) as client:
        async with client.stream("GET", "/events") as stream:
            assert stream.header("content-type") == "text/event-stream"
            first = await anext(stream.aiter_raw())
            assert first == b"data: event-0\n\n"
        assert stream.ended
        response = await client.request("POST", "/echo", body=b"still alive")
        assert response.body == b"still alive"


@pytest.mark.unit
@pytest.mark.asyncio
async def test_h3_abrupt_close_fails_open_streams_and_later_requests(probe_server: Server) -> None:
    """Disconnect tests rely on close() failing loudly on the client side and leaving the server usable."""
    async with H3Client("127.0.0.1", probe_server.port, verify=False) as client:
        async with client.stream("GET", "/events") as stream:
            await client.close()
            with pytest.raises(H3ConnectionClosed):  # after any chunk that had arrived before the close
                async for _ in stream.aiter_raw(idle_timeout=5):
                    pass
        with pytest.raises(H3ConnectionClosed):
            await client.request("GET", "/")
    # The server is unharmed: a new connection works.
    async with H3Client("127.0.0.1", probe_server.port, verify=False) as client:
        assert (await client.request("GET", "/")).status == 200


@pytest.mark.unit
@pytest.mark.asyncio
async def test_h3_verification_rejects_unknown_certificate_and_accepts_its_ca(probe_server: Server) -> None:
    with pytest.raises(H3Error):
        async with H3Client("127.0.0.1", probe_server.port, timeout=5 * SECONDS):
            pass
    async with H3Client("localhost", probe_server.port, verify=str(probe_server.cert.cert)) as client:
        assert (await client.request("GET", "/")).status == 200


# Chromium


@pytest.mark.unit
def test_launch_args_refuse_quic_without_spki() -> None:
    with pytest.raises(ValueError, match="spki"):
        launch_args(quic_origin="127.0.0.1:8443")
    assert "--disable-quic" in launch_args()
    assert "--host-resolver-rules=MAP localhost 127.0.0.1" in launch_args(quic_origin="localhost:1", spki="x")


@pytest.mark.live
@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["h2", "h3"])
async def test_chromium_negotiates_and_sees_a_live_sse_stream(probe_server: Server, protocol: str) -> None:
    """Chromium loads the page, its EventSource stays open, and NetworkLog reports the protocol meanwhile."""
    chromium_or_skip()
    quic = {"quic_origin": probe_server.origin, "spki": spki_hash(probe_server.cert.cert)} if protocol == "h3" else {}
    url = f"https://{probe_server.origin}/"
    async with asyncio.timeout(4 * BOUND), launch(**quic) as browser:
        context = await browser.new_context(ignore_https_errors=True)
        page = await context.new_page()
        log = await NetworkLog.attach(page)
        await page.goto(url, timeout=BOUND * 1000)
        document = await log.wait_for_response(url, timeout=BOUND)
        events = await log.wait_for_response("/events", timeout=BOUND)
        await page.wait_for_function("document.querySelectorAll('#events li').length === 3", timeout=BOUND * 1000)
        assert probe_server.app.open_event_streams == 1, "the SSE stream should still be open"
        echoed = await page.evaluate("fetch('/echo', {method: 'POST', body: 'from page'}).then(r => r.text())")
        command = await log.wait_for_response("/echo", timeout=BOUND)
        await context.close()
    assert (document.protocol, events.protocol, command.protocol) == (protocol, protocol, protocol)
    assert document.status == events.status == command.status == 200
    assert events.headers["content-type"] == "text/event-stream"
    assert echoed == "from page"
    assert document.remote_address is not None
    assert document.remote_address.startswith("127.0.0.1:")
