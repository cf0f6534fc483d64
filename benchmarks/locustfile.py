"""Locust load test of the gateway: long-lived SSE streams, demo commands and hub publishes, in one process.

Run it from the repository root (docs/load-testing.md has the full guide)::

    .venv/bin/locust -f benchmarks/locustfile.py --headless -u 200 -r 50 -t 60s --host http://127.0.0.1:8000

Three user classes, selectable by name on the command line (``locust -f benchmarks/locustfile.py StreamUser
CommandUser``); with no names, all three run with the weights below:

- ``StreamUser`` holds one SSE stream (the hub topic, or the demo's view) and reports every event it receives as a
  locust request whose response time is the publish-to-receipt latency;
- ``CommandUser`` posts the todo demo's commands and fails anything that is not ``204``;
- ``HubPublisherUser`` publishes timestamped events on the hub topic that the stream users listen to.

Why streams do not use locust's ``HttpUser``: its session reports one request per response, when the headers
arrive, where a stream needs one per event, each timed when its bytes arrive. So a stream user drives a plain
``requests`` session itself (gevent makes its blocking reads cooperative), reads the raw body chunk by chunk
without letting ``requests`` decode it (the sizes reported are then the bytes on the wire), decodes it with the
load generator's own incremental decoders and SSE parser (``benchmarks/loadgen``, shared by every benchmark, and
independent of the gateway's code), and fires the request events by hand.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import random
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import gevent  # type: ignore[import-untyped]
import requests
from locust import FastHttpUser, User, between, constant, events, task
from locust.env import Environment
from locust.exception import StopUser

# Locust imports this file by path; the repository root makes ``benchmarks.loadgen`` importable from any cwd.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.loadgen.decoders import make_decoder  # noqa: E402
from benchmarks.loadgen.sse import SSEEvent, SSEParser  # noqa: E402

log = logging.getLogger("locustfile")

HUB = "hub"
VIEW = "view"
READ_SIZE = 64 * 1024


def _env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


@dataclass(frozen=True)
class Config:
    """Everything tunable, read once from the environment (locust's own flags cannot carry custom options to
    every worker process without a plugin, while the environment reaches them all)."""

    hub_token: str
    topic: str
    view: str
    streams: tuple[str, ...]
    accept_encoding: str
    read_timeout: float
    cafile: str | None
    todo_window: int

    @classmethod
    def from_env(cls) -> Config:
        streams = tuple(s.strip() for s in _env("GATEWAY_LOAD_STREAMS", f"{HUB},{VIEW}").split(",") if s.strip())
        unknown = [s for s in streams if s not in (HUB, VIEW)]
        if unknown or not streams:
            raise ValueError(f"GATEWAY_LOAD_STREAMS: use 'hub', 'view' or 'hub,view', not {streams!r}")
        return cls(
            hub_token=os.environ.get("GATEWAY_HUB_PUBLISH_TOKEN", ""),
            topic=_env("GATEWAY_LOAD_TOPIC", "locust"),
            view=_env("GATEWAY_LOAD_VIEW", "/todos/updates"),
            streams=streams,
            accept_encoding=_env("GATEWAY_LOAD_ACCEPT_ENCODING", "br, zstd, gzip"),
            read_timeout=float(_env("GATEWAY_LOAD_READ_TIMEOUT", "60")),
            cafile=os.environ.get("GATEWAY_LOAD_CAFILE") or None,
            todo_window=max(1, int(_env("GATEWAY_LOAD_TODO_WINDOW", "50"))),
        )


CONFIG = Config.from_env()


class _Shared:
    """State shared by the users of this locust process (each worker process has its own).

    ``last_command`` is what a view event's latency is measured from: a render carries no timestamp, so the best
    a client can say is "this much time after the latest command anyone here sent" (an approximation, see the doc).
    ``adds`` approximates the highest todo id, so toggles and deletes aim at todos that probably exist.
    """

    last_command: float = 0.0  # time.monotonic()
    adds: int = 0


SHARED = _Shared()
_SEQ = itertools.count(1)


def _ssl_context_factory(**_: Any) -> Any:
    """Verify TLS like the stream users do (against GATEWAY_LOAD_CAFILE when set): FastHttpUser's default is to
    verify nothing, which would let the commands and the streams disagree about which server they talk to."""
    import gevent.ssl  # type: ignore[import-untyped]

    return gevent.ssl.create_default_context(cafile=CONFIG.cafile)


class StreamError(Exception):
    """A stream that failed: refused, cut off mid-body, or undecodable."""


class GapError(Exception):
    """The gateway said events were lost (an SSE ``gap`` event): the stream did not keep up, or its
    Last-Event-ID was gone from the history."""


def _publish_latency(data: str, received: float) -> float | None:
    """Milliseconds from the publisher's ``t`` (seconds, milliseconds or nanoseconds since the epoch) to
    ``received``; None when the event carries no timestamp (published by someone else)."""
    try:
        body = json.loads(data)
        t = float(body["t"])
    except (ValueError, TypeError, KeyError):
        return None
    if t > 1e17:
        t /= 1e9
    elif t > 1e11:
        t /= 1e3
    # Publisher and subscriber read the same clock (one machine): a negative value can only be rounding.
    return max(0.0, (received - t) * 1000.0)


_LIVE_STREAMS: weakref.WeakSet[StreamUser] = weakref.WeakSet()


def _end_streams(environment: Environment, **_: Any) -> None:
    """Wake every stream that is blocked reading, so users stop at once even with ``--stop-timeout``.

    Shutting the socket down (not closing it) makes the blocked read see an end of stream in its own greenlet;
    closing the response from here would pull the file object from under the reader.
    """
    for user in list(_LIVE_STREAMS):
        user.abort()


events.test_stopping.add_listener(_end_streams)  # type: ignore[no-untyped-call]


class StreamUser(User):
    """Holds one long-lived SSE stream and reports each event it receives as a request of type ``SSE``.

    The stream is the hub topic (``/hub/subscribe?topic=$GATEWAY_LOAD_TOPIC``) or the demo's view
    (``$GATEWAY_LOAD_VIEW``); with ``GATEWAY_LOAD_STREAMS=hub,view`` (the default) users alternate between the two.
    Opening the stream is reported as a ``GET`` (time to the response headers, a failure when refused), its end as
    a ``STREAM`` (its lifetime). A clean end (the gateway draining or ending it on purpose) is followed by a
    reconnect with ``Last-Event-ID``; an error or an end in the middle of the body is a ``STREAM`` failure, followed
    by a reconnect after a short pause. Streams still open when the test stops report no end.
    """

    weight = 8
    wait_time = constant(0)  # the task returns only when the stream ends, and paces its own reconnect
    _assign = itertools.count()

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        kind = CONFIG.streams[next(StreamUser._assign) % len(CONFIG.streams)]
        self.kind = kind
        self.path = f"/hub/subscribe?{urlencode({'topic': CONFIG.topic})}" if kind == HUB else CONFIG.view
        self.session = requests.Session()
        self.last_event_id: str | None = None
        self.retry_ms: int | None = None
        self.stopping = False
        self.response: requests.Response | None = None
        self.pause = 0.0

    def on_start(self) -> None:
        _LIVE_STREAMS.add(self)

    def on_stop(self) -> None:
        self.stopping = True
        _LIVE_STREAMS.discard(self)
        self.session.close()

    def abort(self) -> None:
        """Called from another greenlet when the test stops: make the blocked read return."""
        self.stopping = True
        response = self.response
        if response is None:
            return
        # urllib3's shutdown() exists for exactly this: unblock a read from another thread (here, greenlet).
        # It refuses (ValueError/RuntimeError) when the connection is already gone, i.e. nothing is blocked.
        with contextlib.suppress(OSError, ValueError, RuntimeError, AttributeError):
            response.raw.shutdown()

    @task
    def hold_stream(self) -> None:
        if self.stopping:
            raise StopUser
        if self.pause:
            gevent.sleep(self.pause)
        clean = self._stream_once()
        if self.stopping:
            raise StopUser
        # Like EventSource: wait the stream's ``retry:`` hint before reconnecting (the gateway jitters it when it
        # drains); after a failure wait at least a second, jittered, so a refusing gateway is not hammered by
        # every user in step.
        retry = (self.retry_ms or 0) / 1000.0
        self.pause = retry if clean else max(retry, 1.0) * random.uniform(1.0, 1.5)

    def _report(self, request_type: str, name: str, millis: float, length: int, exc: Exception | None) -> None:
        self.environment.events.request.fire(
            request_type=request_type, name=name, response_time=millis, response_length=length,
            exception=exc, context={},
        )

    def _stream_once(self) -> bool:
        """Open the stream and read it until it ends; True for a clean end, False after a failure."""
        url = f"{(self.host or '').rstrip('/')}{self.path}"
        headers = {"Accept": "text/event-stream", "Accept-Encoding": CONFIG.accept_encoding,
                   "Cache-Control": "no-store"}
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        opened = time.monotonic()
        try:
            response = self.session.get(url, headers=headers, stream=True, verify=CONFIG.cafile or True,
                                        timeout=(10.0, CONFIG.read_timeout))
        except requests.RequestException as exc:
            if not self.stopping:
                self._report("GET", self.path, (time.monotonic() - opened) * 1000.0, 0, exc)
            return False
        self.response = response
        try:
            if response.status_code != 200:
                body = response.text[:200]
                error = StreamError(f"HTTP {response.status_code}: {body}")
                self._report("GET", self.path, (time.monotonic() - opened) * 1000.0, len(body), error)
                return False
            self._report("GET", self.path, (time.monotonic() - opened) * 1000.0, 0, None)
            return self._read(response, opened)
        finally:
            self.response = None
            response.close()

    def _read(self, response: requests.Response, opened: float) -> bool:
        encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
        parser = SSEParser()
        # The last event id and the reconnection time survive reconnects, as in EventSource.
        parser.last_event_id, parser.retry = self.last_event_id, self.retry_ms
        wire = 0  # bytes received since the last event completed: they are charged to the next events
        total = 0
        # Without Last-Event-ID, the first event is the state at connect time, not a change (with it, the gateway
        # sends the state only if it changed since that id).
        first = "Last-Event-ID" not in response.request.headers
        try:
            decoder = make_decoder(encoding)
            # decode_content=False: the raw bytes as sent, decoded here by an incremental decoder.
            for chunk in response.raw.stream(READ_SIZE, decode_content=False):
                received_wall, received = time.time(), time.monotonic()
                wire += len(chunk)
                total += len(chunk)
                parsed = parser.feed(decoder.decode(chunk))
                self.last_event_id, self.retry_ms = parser.last_event_id, parser.retry
                if not parsed:
                    continue  # a heartbeat, or part of an event
                share, rest = divmod(wire, len(parsed))
                wire = 0
                for i, event in enumerate(parsed):
                    self._on_event(event, share + (rest if i == 0 else 0), received_wall, received, opened, first)
                    first = False
        except Exception as exc:
            if self.stopping:
                return True
            # Cut off mid-body (the connection closed before the final chunk), a read timeout, a bad encoding...
            self._report("STREAM", self.path, (time.monotonic() - opened) * 1000.0, total, StreamError(repr(exc)))
            return False
        if not self.stopping:
            # Ended on purpose by the gateway (draining, lifetime, slow consumer): one STREAM entry, timed with the
            # stream's lifetime, so that a run shows how often streams were ended and reopened.
            self._report("STREAM", self.path, (time.monotonic() - opened) * 1000.0, total, None)
            log.info("%s ended by the gateway after %.1f s; reconnecting with Last-Event-ID %s",
                     self.path, time.monotonic() - opened, self.last_event_id)
        return True

    def _on_event(self, event: SSEEvent, length: int, received_wall: float, received: float, opened: float,
                  first: bool) -> None:
        if event.event == "gap":
            self._report("SSE", f"{self.path} (gap)", 0.0, length, GapError(event.data))
            return
        latency: float | None = None
        if self.kind == HUB:
            latency = _publish_latency(event.data, received_wall)  # None: not from a HubPublisherUser
        elif first:
            # Its latency is the connect's, kept apart so that the main entry measures changes only.
            self._report("SSE", f"{self.path} (first render)", (received - opened) * 1000.0, length, None)
            return
        elif SHARED.last_command:
            # A render says nothing about when its change was made: measure from the latest command sent by this
            # process, or from the connect when none was sent since (an approximation, see docs/load-testing.md).
            latency = (received - max(SHARED.last_command, opened)) * 1000.0
        if latency is None:
            # Nothing to measure from (no timestamp; no command ever sent by this process): time since the stream
            # opened, under its own name, so that the main entry holds latencies only.
            self._report("SSE", f"{self.path} (untimed)", (received - opened) * 1000.0, length, None)
            return
        self._report("SSE", self.path, latency, length, None)


def _check_204(response: Any) -> None:
    """Commands and publishes succeed with 204 and nothing else (a 200 would mean the route changed)."""
    if response.status_code == 204:
        response.success()
    else:
        response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")


class CommandUser(FastHttpUser):
    """Posts the todo demo's commands with realistic weights; every one must be answered 204.

    Toggles and deletes aim at the ids of the latest ``GATEWAY_LOAD_TODO_WINDOW`` adds of this process: ids only
    grow, and a command on an id that is gone is a valid no-op (still 204) in a multiplayer list.
    """

    weight = 1
    wait_time = between(0.5, 2.0)
    insecure = False
    ssl_context_factory: Callable[..., Any] | None = staticmethod(_ssl_context_factory)

    def _command(self, path: str, body: dict[str, Any]) -> bool:
        SHARED.last_command = time.monotonic()
        with self.client.post(path, json=body, catch_response=True) as response:
            _check_204(response)
            return bool(response.status_code == 204)

    def on_start(self) -> None:
        self.add()  # something to toggle and delete from the start, as a user arriving at an empty list would

    def _some_id(self) -> int:
        newest = max(1, SHARED.adds)
        return random.randint(max(1, newest - CONFIG.todo_window + 1), newest)

    @task(3)
    def add(self) -> None:
        if self._command("/todos/add", {"text": f"load test {random.randint(1, 1_000_000)}"}):
            SHARED.adds += 1

    @task(4)
    def toggle(self) -> None:
        self._command("/todos/toggle", {"id": self._some_id()})

    @task(2)
    def delete(self) -> None:
        self._command("/todos/delete", {"id": self._some_id()})

    @task(1)
    def clear_completed(self) -> None:
        self._command("/todos/clear-completed", {})


class HubPublisherUser(FastHttpUser):
    """Publishes ``{"seq": n, "t": <time.time()>}`` on the hub topic with ``GATEWAY_HUB_PUBLISH_TOKEN``; 204 or failure.

    The timestamp is what the hub stream users measure their latency from, so publisher and streams must share a
    clock: run them on one machine (or on machines whose clocks are known to agree).
    """

    weight = 1
    wait_time = between(0.5, 1.5)
    insecure = False
    ssl_context_factory: Callable[..., Any] | None = staticmethod(_ssl_context_factory)

    def on_start(self) -> None:
        if not CONFIG.hub_token:
            log.warning("GATEWAY_HUB_PUBLISH_TOKEN is not set: every publish will be refused (401/403)")

    @task
    def publish(self) -> None:
        body = {"topic": CONFIG.topic, "data": {"seq": next(_SEQ), "t": time.time()}}
        headers = {"Authorization": f"Bearer {CONFIG.hub_token}"}
        with self.client.post("/hub/publish", json=body, headers=headers, catch_response=True) as response:
            _check_204(response)
