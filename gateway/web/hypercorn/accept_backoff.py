"""Out of descriptors, asyncio's accept loop spins and logs without bound (CPython 3.11 ``asyncio``, under Hypercorn).

Defect: Hypercorn serves TCP with ``asyncio.start_server``, whose listener calls
``BaseSelectorEventLoop._accept_connection`` up to ``backlog`` times per readiness. When ``accept()`` fails with
EMFILE, ENFILE, ENOBUFS or ENOMEM, asyncio logs "socket.accept() out of system resource" with a traceback and
schedules a retry, but does not leave the loop: with the gateway's backlog of 4,096 it logs 4,096 tracebacks and
schedules 4,096 retries per readiness. Measured on the gateway from loopback: at ~270 connect/close pairs per second
(with ``tcp_eof_close`` off, so every closed connection kept its descriptor) 407 MB of log in 75 s, and plain and TLS
``/healthz`` timed out.

Correction: on those errors, stop accepting on that listener, log at most one line per second with the count of
failures since the last line, and accept again after a back-off that doubles from ``FIRST_PAUSE`` to ``LAST_PAUSE``
while accepts keep failing (reset by the first accept that succeeds). Only the selector event loop is corrected;
uvloop has its own accept loop.

Upstream: python/cpython#151615 ("_accept_connection keeps looping after a resource error, causing duplicate
_start_serving reschedules"), fixed in CPython after 3.11 by returning from the loop; the log line per failure and
the fixed 1 s retry stay. The upstream fix is a ``return`` after scheduling the retry.

Test that fails without it: ``tests/test_connection_churn.py::test_descriptor_exhaustion_is_logged_at_a_bounded_rate``.

The same loop screens each accepted socket against the penalty box of ``connection_limits`` first: an address
boxed for abuse is closed right after ``accept()``, before asyncio builds a transport, a protocol and a task for it
(an h2 attacker replaying its requests reconnected ~5,300 times a second on loopback; each refusal then costs a
system call instead of a connection's set-up), and hands its listener to ``syn_filter``, which has the kernel drop
boxed addresses' attempts before they reach this loop at all.

Each readiness still accepts up to the backlog. Capping it at 64 accepts (so that a penalty-boxed flood cannot hold
the loop for the milliseconds 4,096 accept-and-close pairs take) was tried and reverted: a burst of 5,000
connect/close pairs then overflowed the backlog, its clients waited for SYN retransmits, and the descriptors were
not all released within 2 s (``tests/test_connection_churn.py``); with the whole backlog per readiness they are
released within 0.5 s.

Remove it when the supported Python returns from the accept loop on a resource error and the log it leaves is
bounded (or the gateway rate-limits asyncio's own line): delete this module, and the test above must still pass.
"""

from __future__ import annotations

import errno
import logging
import time
from typing import Any

from gateway.core.resets import Throttle
from gateway.web.hypercorn import connection_limits, syn_filter
from gateway.web.hypercorn.python_version import verified

FIRST_PAUSE = 0.05  # seconds without accepting after the first failure
LAST_PAUSE = 1.0  # seconds, the longest pause while accepts keep failing
VERIFIED_PYTHON = (3, 11)  # asyncio's private accept loop this replaces
EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

log = logging.getLogger("gateway.hypercorn")
_lines = Throttle(1.0)


def _pause(loop: Any, sock: Any, exc: OSError, restart: Any) -> None:
    """Stop accepting on ``sock``, say so at a bounded rate, and accept again after a back-off."""
    count = _lines.hit(time.monotonic())
    if count:
        log.error("cannot accept connections: %s (%d failed accept%s since the last such line); pausing the "
                  "listener", exc.strerror or exc, count, "" if count == 1 else "s")
    pauses = getattr(loop, "_gateway_accept_pauses", {})
    loop._gateway_accept_pauses = pauses
    delay = pauses.get(sock.fileno(), FIRST_PAUSE / 2) * 2
    pauses[sock.fileno()] = min(delay, LAST_PAUSE)
    loop._remove_reader(sock.fileno())
    loop.call_later(pauses[sock.fileno()], restart)


def install() -> None:
    from asyncio import selector_events

    if not verified(VERIFIED_PYTHON, "the accept back-off"):
        return

    loop_class: Any = selector_events.BaseSelectorEventLoop

    def _accept_connection(self: Any, protocol_factory: Any, sock: Any, sslcontext: Any = None, server: Any = None,
                           backlog: int = 100, *timeouts: Any) -> None:
        syn_filter.listening(sock)
        for _ in range(backlog):
            try:
                conn, addr = sock.accept()
                conn.setblocking(False)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in EXHAUSTED:
                    raise  # the event loop logs it
                _pause(self, sock, exc, lambda: self._start_serving(protocol_factory, sock, sslcontext, server,
                                                                    backlog, *timeouts))
                return
            getattr(self, "_gateway_accept_pauses", {}).pop(sock.fileno(), None)
            if isinstance(addr, tuple) and addr and connection_limits.refuse_at_accept(str(addr[0])):
                conn.close()  # in the penalty box: no transport, no task, no byte read
                continue
            self.create_task(self._accept_connection2(protocol_factory, conn, {"peername": addr}, sslcontext,
                                                      server, *timeouts))

    loop_class._accept_connection = _accept_connection
