"""Every asyncio ``StreamWriter`` holds a completed future that nothing reads, ~140 bytes (CPython 3.11 ``asyncio``,
under Hypercorn).

Defect: ``asyncio.StreamWriter.__init__`` makes ``self._complete_fut``, a future it completes at once, and no code of
Python 3.11's asyncio reads it again (it is left from an older ``drain``). Hypercorn serves TCP with
``asyncio.start_server``, so every connection has a writer, and every open SSE stream keeps that future for its whole
life. Measured with ``benchmarks.idle_breakdown`` (10,000 idle HTTP/1.1 SSE streams): 144 bytes and 1 block per
stream.

Correction: after asyncio's own ``__init__``, the writer lets the future go (the attribute is set to None). Only Python
3.11 is corrected (the asyncio this was read on: ``_complete_fut`` is written in ``StreamWriter.__init__`` and read
nowhere).

Upstream: no CPython issue reports it (``Lib/asyncio/streams.py``). The upstream fix: delete the two lines.

Test that fails without it: ``tests/test_idle_memory.py::test_a_stream_writer_holds_no_completed_future``.

Remove it when the supported Python's ``StreamWriter`` makes no such future: delete this module, and the test above
must still pass.
"""

from __future__ import annotations

from typing import Any

from gateway.web.hypercorn.python_version import verified

VERIFIED_PYTHON = (3, 11)  # asyncio's private StreamWriter attribute this drops


def install() -> None:
    from asyncio.streams import StreamWriter

    if not verified(VERIFIED_PYTHON, "dropping the stream writer's unread future"):
        return
    original = StreamWriter.__init__

    def __init__(self: Any, transport: Any, protocol: Any, reader: Any, loop: Any) -> None:
        original(self, transport, protocol, reader, loop)
        self._complete_fut = None  # deleting the attribute instead would cost the instance its shared-key dict

    StreamWriter.__init__ = __init__  # type: ignore[method-assign]
