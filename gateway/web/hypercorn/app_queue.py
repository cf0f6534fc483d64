"""Every request holds an ``asyncio.Queue`` for its ASGI ``receive``, ~3.3 KB that an SSE stream keeps for its
whole life (Hypercorn 0.18.0).

Defect: ``TaskGroup.spawn_app`` gives each request an ``asyncio.Queue(config.max_app_queue_size)``: three deques
(items, getters, putters) and an ``asyncio.Event`` with a fourth, each deque a 64-slot block whether or not it ever
holds anything. A GET carries one ``http.request`` and, at the end, one ``http.disconnect``, so for a long-lived
response nearly all of it is idle. Measured with ``benchmarks.idle_breakdown`` (10,000 idle HTTP/1.1 SSE streams):
3,273 bytes and 12 blocks per stream, the largest single item of the ~27 KB a stream cost. Its ``get`` also
leaves one way to learn of the disconnect: a task waiting on ``receive()`` for the whole life of the response
(the gateway's watcher: a Task, its coroutine and a future, ~1.2 KB more per stream).

Correction: ``spawn_app`` hands the app the ``get`` of an ``AppQueue``: the same bounded first-in-first-out queue
(``put`` waits while ``max_app_queue_size`` messages wait; ``get`` waits for one; a cancelled waiter passes its
wake-up on, as ``asyncio.Queue`` does), whose waiter lists exist only while someone waits. And an app that has no
more use for ``receive`` but must hear the disconnect can ``listen`` instead (``listen(receive, callback)``): from
then on each message is handed to the callback as Hypercorn puts it, and no task waits. The loop's two helpers that
``spawn_app`` passes to every request (``sync_spawn``, ``call_soon``) are made once per loop, not per request.

Upstream: no Hypercorn issue reports the per-request cost (``hypercorn/asyncio/task_group.py``, unchanged since
the ASGI queue was introduced). The upstream fix: a lighter queue in ``spawn_app`` (the trio worker's memory
channel is already lighter), and the helpers made once per task group.

Test that fails without it: ``tests/test_app_queue.py::test_an_idle_stream_listens_without_a_task``.

Remove it when a Hypercorn release gives a request a queue that costs nothing while idle: pin it, delete this
module, and let ``gateway.web.streams`` watch ``receive()`` with its task (its fallback when ``listen`` returns
False); the test above then asserts the task instead.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, MutableMapping
from functools import partial
from typing import Any

log = logging.getLogger("gateway.hypercorn")

Message = MutableMapping[str, Any]
Listener = Callable[[Message], None]


class AppQueue:
    """A request's ASGI messages, from Hypercorn (``put``) to the app (``get``), or to a listener."""

    __slots__ = ("_getters", "_items", "_listener", "_maxsize", "_putters")

    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize  # 0 or less: unbounded, as asyncio.Queue
        self._items: list[Message] = []
        self._getters: list[asyncio.Future[None]] | None = None
        self._putters: list[asyncio.Future[None]] | None = None
        self._listener: Listener | None = None

    def _full(self) -> bool:
        return 0 < self._maxsize <= len(self._items)

    async def put(self, message: Message) -> None:
        while self._full():
            await self._wait(putter=True)
        listener = self._listener
        if listener is None:
            self._items.append(message)
            _wake_one(self._getters)
            return
        try:
            listener(message)
        except Exception:  # Hypercorn's protocol handling must not fail for the app's listener
            log.exception("an ASGI message listener failed")

    async def get(self) -> Message:
        while not self._items:
            await self._wait(putter=False)
        message = self._items.pop(0)
        _wake_one(self._putters)
        return message

    def listen(self, listener: Listener) -> list[Message]:
        """Hand every message put from now on to ``listener`` (which must not block) instead of queueing it;
        returns the messages that were waiting, taken out of the queue."""
        waiting, self._items = self._items, []
        self._listener = listener
        _wake_one(self._putters)
        return waiting

    async def _wait(self, *, putter: bool) -> None:
        """Wait for a wake-up among the putters or the getters (the list made now, dropped once empty). A waiter
        cancelled after its wake-up passes it on while the queue still has room / a message for the next one."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._putters if putter else self._getters
        if waiters is None:
            waiters = []
            if putter:
                self._putters = waiters
            else:
                self._getters = waiters
        waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if not waiter.cancelled() and (not self._full() if putter else bool(self._items)):
                waiters.remove(waiter)
                _wake_one(waiters)
            raise
        finally:
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                if putter and self._putters is waiters:
                    self._putters = None
                elif not putter and self._getters is waiters:
                    self._getters = None


def _wake_one(waiters: list[asyncio.Future[None]] | None) -> None:
    for waiter in waiters or ():
        if not waiter.done():
            waiter.set_result(None)
            return


def listen(receive: Callable[[], Awaitable[Message]], listener: Listener) -> bool:
    """Have ``listener`` told of every message the request's ``receive`` would return from now on (the waiting
    ones at once) instead of a task waiting on it; False when ``receive`` is not an ``AppQueue``'s (the correction
    is not installed, or another server runs the app): the caller watches ``receive`` itself then."""
    queue = getattr(receive, "__self__", None)
    if not isinstance(queue, AppQueue):
        return False
    for message in queue.listen(listener):
        listener(message)
    return True


_helpers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Callable[..., Any], Callable[..., Any]]] = (
    weakref.WeakKeyDictionary())


def _loop_helpers(loop: asyncio.AbstractEventLoop) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``sync_spawn`` and ``call_soon`` of ``loop``, the same for every request."""
    found = _helpers.get(loop)
    if found is None:
        def call_soon(func: Callable[..., Any], *args: Any) -> Any:
            return asyncio.run_coroutine_threadsafe(func(*args), loop).result()

        found = _helpers[loop] = (partial(loop.run_in_executor, None), call_soon)
    return found


def install() -> None:
    from hypercorn.asyncio import task_group

    async def spawn_app(self: Any, app: Any, config: Any, scope: Any, send: Any) -> Callable[..., Any]:
        queue = AppQueue(config.max_app_queue_size)
        sync_spawn, call_soon = _loop_helpers(self._loop)
        # The module's ``_handle`` when called, as Hypercorn's own spawn_app: ``send_after_disconnect`` replaces it.
        self.spawn(task_group._handle, app, config, scope, queue.get, send, sync_spawn, call_soon)
        return queue.put

    task_group.TaskGroup.spawn_app = spawn_app  # type: ignore[method-assign]
