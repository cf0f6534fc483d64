"""A send after the client is gone succeeds without yielding (Hypercorn 0.18.0; CPython 3.11 asyncio).

Defect: when an HTTP/1.1 client resets the connection, asyncio stores the ``ConnectionResetError`` in the
``StreamReader`` and ``StreamWriter.drain`` re-raises that stored exception *before* its first suspension point.
``TCPServer.protocol_send`` catches it, hands ``Closed`` to the protocol (which closes the ``HTTPStream`` and queues
``http.disconnect``) and returns normally; ``HTTPStream.app_send`` never looks at ``closed``, so every later
``http.response.body`` is framed by h11 and pushed into the dead transport again, raising and swallowing the same
exception each time. The app's ``await send(...)`` returns without ever suspending: a loop whose only await is
``send`` (a Quart streaming response) never lets its disconnect watcher, the signal handlers or any other connection
run again; each re-raise of the one exception object prepends traceback entries whose frames pin the chunk just sent
(measured with a Quart response streaming 16 KiB chunks: +0.9 GB in 2 s, /healthz unanswered, SIGTERM ignored,
asyncio's "socket.send() raised exception." logged for every send). The gateway's own SSE writer is spared (its
``receive()`` watcher and mailbox wait yield), losing one send. h2 (``KeyError`` swallowed in ``stream_send``) and
HTTP/3 (``h3_disconnects``) also return at once on a closed stream.

Correction: the ASGI ``send`` of a closed stream yields once (the queued ``http.disconnect`` reaches the app's
``receive()`` first) and then, for a body with ``more_body`` (the message a streaming loop repeats), raises
``ClientDisconnected``, an ``OSError`` as ASGI 2.4 asks; that covers the send that was in flight when the reset hit,
so the dead transport is never written again. A response's other messages (its start, final body, trailers) are
still dropped silently: they cannot loop. An app that lets ``ClientDisconnected`` escape (Quart re-raises it from
its handler task) is not reported as "Error in ASGI Framework": the client leaving is no server error. That is
decided in the request task's own function (``hypercorn.asyncio.task_group._handle``, replaced by one that lets
``ClientDisconnected`` pass silently and reports the rest as Hypercorn does), not in a wrapper around the app, whose
coroutine frame (~290 bytes) every open stream would keep for its whole life.

Upstream: no Hypercorn issue reports the send that never yields. ASGI 2.4's "send on a closed connection raises an
``OSError``" is not implemented by Hypercorn 0.18.0 (its maintainer says he is implementing it, django/asgiref#578;
pgjones/hypercorn#59 asked for disconnect handling in ``app_send``; the anycorn fork did it in
davidbrochart/anycorn#79). The upstream fix: ``HTTPStream.app_send`` raises an ``OSError`` subclass for a body sent
to a closed stream, and the request task (``_handle``) does not log it.

Test that fails without it:
``tests/test_transport_faults.py::test_http1_reset_under_a_send_only_loop_fails_its_send``.

Remove it when a Hypercorn release makes ``send`` on a closed HTTP stream raise (ASGI 2.4) and swallows that
exception when the app lets it through: pin it, delete this module (keep an ``OSError`` for ``ClientDisconnected``
users if any remain), and the test above must still pass.
"""

from __future__ import annotations

import asyncio
import errno
from typing import Any


class ClientDisconnected(OSError):
    """The ASGI ``send`` of a response whose client is gone (ASGI 2.4: a server-specific ``OSError``)."""

    def __init__(self) -> None:
        super().__init__(errno.ECONNRESET, "the client closed the connection")


def install() -> None:
    from hypercorn.asyncio import task_group
    from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream

    original = HTTPStream.app_send

    async def app_send(self: Any, message: Any) -> None:
        if message is None or self.state is ASGIHTTPState.CLOSED:
            await original(self, message)  # the app is done, or sends after its response ended: Hypercorn's way
            return
        if not self.closed:
            await original(self, message)
            if not self.closed or self.state is ASGIHTTPState.CLOSED:
                return
            # The stream was closed under this very send (the write failed): it did not reach the client either.
        # Let the app's receive() take the queued http.disconnect first, whatever happens next.
        await asyncio.sleep(0)
        if message.get("type") == "http.response.body" and message.get("more_body", False):
            raise ClientDisconnected()

    HTTPStream.app_send = app_send  # type: ignore[method-assign]
    task_group._handle = _handle


async def _handle(app: Any, config: Any, scope: Any, receive: Any, send: Any, sync_spawn: Any,
                  call_soon: Any) -> None:
    """Run the app for one request (``TaskGroup.spawn_app``'s task): its errors are logged as Hypercorn logs them,
    except the ``ClientDisconnected`` an app lets through; the response is ended whatever happens."""
    try:
        try:
            await app(scope, receive, send, sync_spawn, call_soon)
        except* ClientDisconnected:
            pass  # an app that lets it through (Quart does) has nothing to report: the client left
    except asyncio.CancelledError:
        raise
    except Exception:
        await config.log.exception("Error in ASGI Framework")
    finally:
        await send(None)
