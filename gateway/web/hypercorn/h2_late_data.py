"""A DATA frame that arrives after an early response kills the whole h2 connection (Hypercorn 0.18.0, h2 4.4.1).

Defect: when the app answers before reading the whole request body (every 404, 405, 413 or 415), a DATA frame that
arrives afterwards hits a stream Hypercorn has already forgotten; ``KeyError`` escapes ``H2Protocol._handle_events``
and the *whole connection* dies, with every SSE stream the browser multiplexed on it. Hypercorn guards
``StreamEnded`` for exactly this case but not ``DataReceived``.

Correction: acknowledge such data (so the connection's flow-control window is not leaked) and drop it.

Upstream: reported as pgjones/hypercorn#329 (and late in #197); fixed by the open pull requests
pgjones/hypercorn#312, pgjones/hypercorn#334 and pgjones/hypercorn#365, none merged in 0.18.0.

Test that fails without it: ``tests/test_bad_input.py::test_bad_input`` in its h2 cases answered before the body is
read (measured: ``[h2-unknown_path]``, ``[h2-wrong_method_view]``, ``[h2-form_body]``, ``[h2-text_plain]``,
``[h2-no_content_type]``, ``[h2-compressed]``, ``[h2-latin1_charset]`` fail with ``RemoteProtocolError``).

Remove it when a Hypercorn release guards ``DataReceived`` for unknown streams (one of the pull requests above
merged): pin it, delete this module, and the test above must still pass.
"""

from __future__ import annotations

from typing import Any


def install() -> None:
    import h2.events
    from hypercorn.protocol.h2 import H2Protocol

    original = H2Protocol._handle_events

    async def _handle_events(self: Any, events: list[Any]) -> None:
        # Whether a stream is known can only be judged after the events before it in the batch were handled
        # (HEADERS and DATA of one request often arrive together), so the batch is cut at each DATA frame.
        pending: list[Any] = []
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                if pending:
                    await original(self, pending)
                    pending = []
                if event.stream_id not in self.streams:
                    # Response already sent: give the window back and forget the data.
                    self.connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    continue
            pending.append(event)
        await original(self, pending)

    H2Protocol._handle_events = _handle_events  # type: ignore[method-assign]
