"""The HTTP/1.1 POST lane (``gateway.web.hypercorn.h11_post_lane``): plain command and publish POSTs answered from
the connection's read loop exactly as Hypercorn's path answers them, everything else left to h11, and the
connection's timers (head deadline, keep-alive) kept right for the requests the lane served."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import h11
import orjson
import pytest

from gateway.web.hypercorn.h11_post_lane import MAX_BODY, MAX_HEAD, parse, response_bytes
from tests.support.metrics import metric
from tests.support.raw_stream import RawStream
from tests.support.server import HUB_TOKEN, Server, start_server

LANE = "gateway_post_lane_requests_total"
HEADER_TIMEOUT = 1.0
KEEP_ALIVE = 2.0
# Both gateways run with short timers, so that the lane's handling of them can be watched within seconds.
TIMERS = {"GATEWAY_LIMITS_HEADER_TIMEOUT": str(HEADER_TIMEOUT), "GATEWAY_SERVER_KEEP_ALIVE_TIMEOUT": str(KEEP_ALIVE),
          "GATEWAY_SECURITY_CORS_ORIGINS": "https://app.example"}  # (and a page origin whose answers carry CORS)
FROM_APP = "Origin: https://app.example\r\nSec-Fetch-Site: cross-site\r\n"


def post(path: str, body: bytes, *, token: str | None = HUB_TOKEN, extra: str = "",
         content_type: str = "application/json") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n{auth}{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def publish(topic: str, data: object, *, token: str | None = HUB_TOKEN, extra: str = "") -> bytes:
    return post("/hub/publish", orjson.dumps({"topic": topic, "data": data}), token=token, extra=extra)


# -- the parser and the framing, in-process ------------------------------------------------------------------------


@pytest.mark.unit
def test_the_lane_parses_a_plain_post_as_hypercorn_scopes_it() -> None:
    raw = (b"POST /hub/publish?x=1 HTTP/1.1\r\nHost: a\r\nX-Thing:  spaced value \t\r\nCONTENT-LENGTH: 2\r\n"
           b"Connection: Keep-Alive\r\n\r\n{}")
    request = parse(raw)
    assert request is not None
    assert (request.path, request.query, request.body) == (b"/hub/publish", b"x=1", b"{}")
    assert request.headers == [(b"host", b"a"), (b"x-thing", b"spaced value"), (b"content-length", b"2"),
                               (b"connection", b"Keep-Alive")]
    # what h11 makes of the same bytes: the same (lowercased names, stripped values)
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(raw)
    event = connection.next_event()
    assert isinstance(event, h11.Request)
    assert list(event.headers) == request.headers


BODY = b'{"topic":"t","data":1}'
OTHER_SHAPES = {
    "GET": b"GET /hub/publish HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    "HTTP/1.0": b"POST /hub/publish HTTP/1.0\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}",
    "absolute form": b"POST http://a/hub/publish HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}",
    "percent-encoded path": b"POST /hub/%70ublish HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}",
    "no Host": b"POST /hub/publish HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
    "two Hosts": b"POST /hub/publish HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 2\r\n\r\n{}",
    "no length": b"POST /hub/publish HTTP/1.1\r\nHost: a\r\n\r\n",
    "two lengths": b"POST /hub/publish HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
    "signed length": b"POST /hub/publish HTTP/1.1\r\nHost: a\r\nContent-Length: +2\r\n\r\n{}",
    "chunked": b"POST /hub/publish HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "expect": b"POST /hub/publish HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}",
    "upgrade": b"POST /hub/publish HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nContent-Length: 2\r\n\r\n{}",
    "connection close": b"POST /hub/publish HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
    "folded header": b"POST /hub/publish HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\nContent-Length: 2\r\n\r\n{}",
    "folded header that looks like one": (b"POST /hub/publish HTTP/1.1\r\nHost: a\r\n X-Y: 1\r\n"
                                          b"Content-Length: 2\r\n\r\n{}"),
    "line without a colon": b"POST /hub/publish HTTP/1.1\r\nHost: a\r\nNoColon\r\nContent-Length: 2\r\n\r\n{}",
    "connection keep-alive and close": (b"POST /hub/publish HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n"
                                        b"Content-Length: 2\r\n\r\n{}"),
    "space before colon": b"POST /hub/publish HTTP/1.1\r\nHost : a\r\nContent-Length: 2\r\n\r\n{}",
    "control character": b"POST /hub/publish HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\nContent-Length: 2\r\n\r\n{}",
    "bare CR": b"POST /hub/publish HTTP/1.1\r\nHost: a\r\nX: a\rb\r\nContent-Length: 2\r\n\r\n{}",
    "bare LF": b"POST /hub/publish HTTP/1.1\nHost: a\nContent-Length: 2\n\n{}",
    "part of the body": b"POST /hub/publish HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n{}",
    "part of the head": b"POST /hub/publish HTTP/1.1\r\nHost: a\r\nContent-Len",
    "pipelined": (b"POST /hub/publish HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}"
                  b"POST /hub/publish HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}"),
    "large head": (b"POST /hub/publish HTTP/1.1\r\nHost: a\r\nX: " + b"a" * MAX_HEAD
                   + b"\r\nContent-Length: 2\r\n\r\n{}"),
    "large body": (b"POST /hub/publish HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1)
                   + b"x" * (MAX_BODY + 1)),
    "many headers": (b"POST /hub/publish HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 100
                     + b"Content-Length: 2\r\n\r\n{}"),
}


@pytest.mark.unit
@pytest.mark.parametrize("raw", OTHER_SHAPES.values(), ids=OTHER_SHAPES.keys())
def test_every_other_shape_of_request_is_left_to_h11(raw: bytes) -> None:
    assert parse(raw) is None


@pytest.mark.unit
@pytest.mark.parametrize(("status", "headers", "body"), [
    (204, [(b"event-id", b"7"), (b"event-version", b"7")], b""),
    (422, [(b"content-type", b"application/json"), (b"content-length", b"2"), (b"cache-control", b"no-store")], b"{}"),
    (400, [(b"content-type", b"application/json")], b"{}"),  # no length: the lane gives one, h11 would chunk
])
def test_a_response_is_framed_as_h11_frames_it(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    server_headers = [(b"date", b"Mon, 07 Dec 2026 12:00:00 GMT"), (b"alt-svc", b'h3=":8443"; ma=3600')]
    framed = response_bytes(status, headers, body, b"".join(b"%s: %s\r\n" % h for h in server_headers))
    assert framed is not None
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    connection.next_event()
    connection.next_event()
    sent_headers = headers + server_headers
    if body and not any(name == b"content-length" for name, _ in headers):
        sent_headers = [*headers, (b"content-length", b"%d" % len(body)), *server_headers]
    expected = connection.send(h11.Response(status_code=status, headers=sent_headers))
    expected += connection.send(h11.Data(data=body)) if body else b""
    expected += connection.send(h11.EndOfMessage())
    assert framed == expected


@pytest.mark.unit
@pytest.mark.parametrize("header", [(b"x", b"a\r\nset-cookie: b"), (b"x", b"a\x00"), (b"bad name", b"a"),
                                    (b"x", b" leading"), (b"a: b", b"c"), (b"x", b"a\n")])
def test_a_response_header_h11_would_refuse_is_refused(header: tuple[bytes, bytes]) -> None:
    assert response_bytes(204, [(b"event-id", b"1"), header], b"", b"") is None


@pytest.mark.unit
def test_a_response_that_is_not_http_is_refused() -> None:
    assert response_bytes("204", [], b"", b"") is None  # type: ignore[arg-type]
    assert response_bytes(204, [("x", "y")], b"", b"") is None  # type: ignore[list-item]


# -- live: the lane against Hypercorn's path ------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


class Conn:
    """One keep-alive HTTP/1.1 connection over a bare socket: what is written is exactly what is given."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        async with asyncio.timeout(5):
            return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, raw: bytes) -> None:
        self.writer.write(raw)
        async with asyncio.timeout(5):
            await self.writer.drain()

    async def answer(self, timeout: float = 5.0) -> Answer:
        async with asyncio.timeout(timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
            headers = [(k.lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines)]
            length = next((int(v) for k, v in headers if k == "content-length"), 0)
            body = await self.reader.readexactly(length)
        return Answer(int(status_line.split(" ")[1]), headers, body)

    async def exchange(self, raw: bytes) -> Answer:
        await self.send(raw)
        return await self.answer()

    async def closed_by_server(self, timeout: float) -> bool:
        async with asyncio.timeout(timeout):
            return await self.reader.read(1) == b""

    def close(self) -> None:
        self.writer.close()


@contextlib.asynccontextmanager
async def connected(port: int) -> AsyncIterator[Conn]:
    conn = await Conn.open(port)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path]) -> Iterator[tuple[Server, Server]]:
    """The same gateway twice: with the lane (the default), and with every request through Hypercorn."""
    lane = start_server(tmp_path_factory.mktemp("lane"), certs, env=TIMERS)
    try:
        hypercorn = start_server(tmp_path_factory.mktemp("no-lane"), certs,
                                 env={**TIMERS, "GATEWAY_SERVER_POST_LANE": "false"})
    except BaseException:
        lane.stop()
        raise
    yield lane, hypercorn
    for server in (lane, hypercorn):
        assert server.stop() == 0, server.output()


@contextlib.asynccontextmanager
async def lane_served(server: Server, expected: int) -> AsyncIterator[None]:
    """Asserts that exactly ``expected`` requests made inside the block were served by the lane."""
    before = await metric(server.http, LANE)
    yield
    assert await metric(server.http, LANE) - before == expected


def comparable(answer: Answer) -> tuple[int, list[tuple[str, str]], object]:
    """An answer without what differs by nature between two gateways: the date, the event's id and version,
    the command's id."""
    varying = {"date", "event-id", "event-version", "command-id", "alt-svc"}  # (alt-svc: each its own port)
    headers = [(k, "..." if k in varying else v) for k, v in answer.headers]
    return answer.status, headers, orjson.loads(answer.body) if answer.body else None


@pytest.mark.live
@pytest.mark.asyncio
async def test_a_publish_through_the_lane_is_delivered_and_answered_as_hypercorn_answers(
        gateways: tuple[Server, Server]) -> None:
    lane, hypercorn = gateways
    answers = []
    for server, served in ((lane, 1), (hypercorn, 0)):
        stream = await RawStream.open(server.http_port, "/hub/subscribe?topic=lane-delivery")
        async with connected(server.http_port) as conn:
            async with lane_served(server, served):
                answer = await conn.exchange(publish("lane-delivery", {"n": 1}))
            assert answer.status == 204, answer
            event = await stream.next_parsed()
            assert orjson.loads(event.data) == {"n": 1}
            assert event.id == answer.header("event-id")
            answers.append(answer)
            stream.close()
    assert comparable(answers[0]) == comparable(answers[1])
    assert [k for k, _ in answers[0].headers] == ["event-id", "event-version", "vary", "date", "alt-svc"]


REFUSALS = {
    "no token": (publish("t", 1, token=None), 401),
    "wrong token": (publish("t", 1, token="not-the-token"), 401),
    "bad topic": (publish("bad topic\n", 1), 422),
    "malformed JSON": (post("/hub/publish", b'{"topic": "t", '), 400),
    "not an object": (post("/hub/publish", b"[1]"), 400),
    "unknown field": (post("/hub/publish", b'{"topic": "t", "data": 1, "x": 2}'), 422),
    "wrong type": (post("/hub/publish", b'{"topic": "t", "data": 1}', content_type="text/plain"), 415),
    "bad event id": (post("/hub/publish", b'{"topic": "t", "data": 1, "id": "a\\nb"}'), 422),
    "cross-site": (publish("t", 1, extra="Origin: https://evil.example\r\nSec-Fetch-Site: cross-site\r\n"), 403),
    "command shape": (post("/todos/add", b'{"text": 5}', token=None), 422),
    "listed origin, no token": (publish("t", 1, token=None, extra=FROM_APP), 401),
    "listed origin, bad body": (post("/hub/publish", b"[1]", extra=FROM_APP), 400),
    "listed origin, published": (publish("t", 1, extra=FROM_APP), 204),
    "listed origin, command": (post("/todos/add", b'{"text": "from the app"}', token=None, extra=FROM_APP), 204),
}


@pytest.mark.live
@pytest.mark.asyncio
@pytest.mark.parametrize(("raw", "status"), REFUSALS.values(), ids=REFUSALS.keys())
async def test_a_refusal_through_the_lane_is_hypercorns_refusal(gateways: tuple[Server, Server], raw: bytes,
                                                                status: int) -> None:
    lane, hypercorn = gateways
    answers = []
    for server in (lane, hypercorn):
        async with connected(server.http_port) as conn:
            async with lane_served(server, 1 if server is lane else 0):
                answers.append(await conn.exchange(raw))
            assert (await conn.exchange(publish("after-refusal", 1))).status == 204  # the connection lives on
    assert answers[0].status == status, answers[0]
    assert comparable(answers[0]) == comparable(answers[1])
    if FROM_APP.encode() in raw:  # the page may read the answer, refusal or not
        assert answers[0].header("access-control-allow-origin") == "https://app.example", answers[0]


@pytest.mark.live
@pytest.mark.asyncio
async def test_a_command_through_the_lane_is_executed(gateways: tuple[Server, Server]) -> None:
    lane, _ = gateways
    view = await RawStream.open(lane.http_port, "/todos/updates")
    async with connected(lane.http_port) as conn:
        await view.next_parsed()  # the current state, first
        text = f"through the lane {time.monotonic_ns()}"
        async with lane_served(lane, 1):
            answer = await conn.exchange(post("/todos/add", orjson.dumps({"text": text}), token=None))
        assert answer.status == 204, answer
        assert answer.header("command-id")

        async def shown() -> None:
            while text not in (await view.next_parsed()).data:
                pass

        await asyncio.wait_for(shown(), 10)
        view.close()


@pytest.mark.live
@pytest.mark.asyncio
async def test_other_shapes_are_served_by_hypercorn(gateways: tuple[Server, Server]) -> None:
    lane, _ = gateways
    async with connected(lane.http_port) as conn:
        async with lane_served(lane, 0):
            await conn.send(publish("shapes", 1) + publish("shapes", 2))  # pipelined: one read, two requests
            assert [(await conn.answer()).status for _ in range(2)] == [204, 204]
            raw = publish("shapes", 3)
            await conn.send(raw[:20])  # a head in two reads
            await asyncio.sleep(0.05)  # (so that the two parts are two reads; either way h11 serves them)
            assert (await conn.exchange(raw[20:])).status == 204
            chunked = (b"POST /hub/publish HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer " + HUB_TOKEN.encode()
                       + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                       + b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY))
            assert (await conn.exchange(chunked)).status == 204
            assert (await conn.exchange(post("/unknown", b"{}"))).status == 404  # not a route the lane takes
        async with lane_served(lane, 1):  # and the connection is the lane's again when it is plain
            assert (await conn.exchange(publish("shapes", 4))).status == 204
        async with lane_served(lane, 0):
            closing = await conn.exchange(publish("shapes", 5, extra="Connection: close\r\n"))
            assert closing.status == 204
            assert closing.header("connection") == "close"
            assert await conn.closed_by_server(5)


@pytest.mark.live
@pytest.mark.asyncio
async def test_a_request_served_by_the_lane_ends_the_head_deadline(gateways: tuple[Server, Server]) -> None:
    """A connection's first head must arrive within limits.header_timeout of its accept; a head the lane read
    ends that deadline as one h11 read does, so the connection idles under keep_alive_timeout only."""
    lane, _ = gateways
    async with connected(lane.http_port) as conn, lane_served(lane, 2):
        assert (await conn.exchange(publish("deadline", 1))).status == 204
        with pytest.raises(TimeoutError):  # past the head deadline, the connection is still open
            await conn.closed_by_server(HEADER_TIMEOUT + 0.5)
        assert (await conn.exchange(publish("deadline", 2))).status == 204


@pytest.mark.live
@pytest.mark.asyncio
async def test_keep_alive_counts_from_the_last_request_the_lane_served(gateways: tuple[Server, Server]) -> None:
    lane, _ = gateways
    async with connected(lane.http_port) as conn:
        started = last = time.monotonic()
        n = 0
        while time.monotonic() - started < KEEP_ALIVE * 1.5:  # busy for longer than the keep-alive timeout
            n += 1
            assert (await conn.exchange(publish("keep-alive", n))).status == 204, f"request {n} failed"
            last = time.monotonic()
            await asyncio.sleep(KEEP_ALIVE / 5)  # the pace of a publisher, not a synchronisation
        assert await conn.closed_by_server(KEEP_ALIVE + 5)  # then idle: closed
        idle = time.monotonic() - last
        assert KEEP_ALIVE - 0.3 <= idle <= KEEP_ALIVE + 2, idle


@pytest.mark.live
@pytest.mark.asyncio
async def test_a_client_that_does_not_read_its_answers_is_held_back(gateways: tuple[Server, Server]) -> None:
    """Responses pile up only to the transport's high-water mark: past it the lane waits for the client to
    read, the read loop with it, and TCP stops the client (or, once requests pile up unread in h11's buffer, the
    head deadline cuts it); other clients are served meanwhile."""
    lane, _ = gateways
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1400)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(5):
        await loop.sock_connect(sock, ("127.0.0.1", lane.http_port))
    request = publish("unread", "x" * 200)
    sent = 0
    try:
        held = False
        deadline = time.monotonic() + 20
        while not held and time.monotonic() < deadline:
            try:
                async with asyncio.timeout(2):  # a send that waits 2 s: the server has stopped reading
                    await loop.sock_sendall(sock, request)  # and never reads an answer
                sent += 1
            except TimeoutError:
                held = True
            except (ConnectionResetError, BrokenPipeError):
                held = True  # or the server cut it (a pipelined head left waiting past limits.header_timeout)
        assert held, f"the server read {sent} requests whose answers were never read, for 20 s"
        assert sent > 30  # well past what fits in the client's 4 KiB of unread answers
        async with connected(lane.http_port) as conn:
            assert (await conn.exchange(publish("others", 1))).status == 204
    finally:
        sock.close()
