"""h2 buffers grow without bound for a client that grants no flow-control window (Hypercorn 0.18.0).

Defect: ``StreamBuffer.pop`` releases a paused producer when the *popped chunk* is short, and with a zero
flow-control window Hypercorn pops zero bytes on every push, so the producer is never paused and the buffer grows by
every event the app sends (measured: +129 MiB for 120 renders of 1 MiB; 8.2 MiB with this correction).

Correction: release the producer only when the *buffer* has drained below the low-water mark, so a stalled h2 client
blocks the app's ``send`` (and the gateway's write deadline then closes the stream).

Upstream: no Hypercorn issue or pull request; the same defect was fixed in the anycorn fork
(davidbrochart/anycorn#61, "Resume a paused HTTP/2 writer on what has drained, not what was taken"). The upstream fix
is that one line in ``hypercorn/protocol/h2.py``: compare ``len(self.buffer)``, not ``len(data)``, with
``BUFFER_LOW_WATER`` in ``StreamBuffer.pop``.

Test that fails without it:
``tests/test_backpressure.py::test_h2_client_granting_no_window_costs_bounded_memory``.

Remove it when a Hypercorn release releases the producer on the buffer's length: pin it, delete this module, and
the test above must still pass.
"""

from __future__ import annotations

from typing import Any


def install() -> None:
    from hypercorn.protocol import h2 as hypercorn_h2

    low_water = hypercorn_h2.BUFFER_LOW_WATER

    async def pop(self: Any, max_length: int) -> bytes:
        length = min(len(self.buffer), max_length)
        data = bytes(self.buffer[:length])
        del self.buffer[:length]
        if len(self.buffer) < low_water:  # the buffer, not the chunk: a zero window pops nothing
            await self._paused.set()
        if len(self.buffer) == 0:
            await self._is_empty.set()
        return data

    hypercorn_h2.StreamBuffer.pop = pop  # type: ignore[method-assign]
