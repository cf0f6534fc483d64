"""Every HTTP/1.1 connection holds an empty set of protocol-switch proposals, 216 bytes (h11 0.16.0).

Defect: h11's ``ConnectionState`` keeps the client's proposals to switch protocols (``Upgrade:``, ``CONNECT``) in a
``set``, made empty when the connection starts and again for every response. Almost no request proposes a switch,
and an empty set is still a 216-byte object, held by every open SSE stream's connection for its whole life.
Measured with ``benchmarks.idle_breakdown`` (10,000 idle HTTP/1.1 SSE streams): 216 bytes and 1 block per stream.

Correction: the proposals are a ``frozenset``, and an empty one is the one shared empty frozenset: a connection
starts with it and gets it back after every event that leaves no proposal pending (the response's reset among them);
a proposal makes a new frozenset with it. h11 only adds to the set (here: a new one), tests membership and
emptiness, and replaces it, so the states it reaches are the same.

Upstream: no h11 issue reports it (``h11/_state.py``). The upstream fix: a frozenset, or ``None`` for no proposals.

Test that fails without it: ``tests/test_idle_memory.py::test_an_http1_connection_shares_its_empty_switch_proposals``.

Remove it when h11 keeps nothing per connection for proposals that were never made: pin it, delete this module, and
the test above must still pass (without its check of the shared object).
"""

from __future__ import annotations

from typing import Any

NONE: frozenset[Any] = frozenset()  # the proposals of every connection with none pending


def install() -> None:
    from h11._state import ConnectionState

    original_init = ConnectionState.__init__
    original_process_event = ConnectionState.process_event

    def __init__(self: Any) -> None:
        original_init(self)
        self.pending_switch_proposals = NONE

    def process_client_switch_proposal(self: Any, switch_event: Any) -> None:
        self.pending_switch_proposals = self.pending_switch_proposals | {switch_event}
        self._fire_state_triggered_transitions()

    def process_event(self: Any, role: Any, event_type: Any, server_switch_event: Any = None) -> None:
        original_process_event(self, role, event_type, server_switch_event)
        if not self.pending_switch_proposals:
            self.pending_switch_proposals = NONE

    ConnectionState.__init__ = __init__  # type: ignore[method-assign]
    ConnectionState.process_client_switch_proposal = process_client_switch_proposal  # type: ignore[method-assign]
    ConnectionState.process_event = process_event  # type: ignore[method-assign]
