"""The life of one SSE stream as a transition table.

Rules:
- a stream is OPEN from the request until its response headers are sent (``start``);
- STREAMING until the gateway drains (``drain``: shutdown, or the connection is cut off) or it closes;
- DRAINING streams send their last frames (a ``retry:`` hint) and then close;
- CLOSED is final; ``close`` is allowed from every live state and is idempotent on CLOSED, because a client
  disconnect and a server-side close can race and both paths must be able to say "closed" safely.
Any other transition is a bug and raises ``IllegalTransition`` naming the state and the event.
"""

from __future__ import annotations

from enum import Enum


class State(Enum):
    OPEN = "open"
    STREAMING = "streaming"
    DRAINING = "draining"
    CLOSED = "closed"


class Transition(Enum):
    START = "start"
    DRAIN = "drain"
    CLOSE = "close"


class IllegalTransition(RuntimeError):
    def __init__(self, state: State, event: Transition) -> None:
        super().__init__(f"stream in state {state.value!r} cannot take {event.value!r}")
        self.state = state
        self.event = event


TRANSITIONS: dict[tuple[State, Transition], State] = {
    (State.OPEN, Transition.START): State.STREAMING,
    (State.OPEN, Transition.DRAIN): State.CLOSED,  # nothing was sent yet: a drain refuses it outright
    (State.OPEN, Transition.CLOSE): State.CLOSED,
    (State.STREAMING, Transition.DRAIN): State.DRAINING,
    (State.STREAMING, Transition.CLOSE): State.CLOSED,
    (State.DRAINING, Transition.DRAIN): State.DRAINING,
    (State.DRAINING, Transition.CLOSE): State.CLOSED,
    (State.CLOSED, Transition.CLOSE): State.CLOSED,
    (State.CLOSED, Transition.DRAIN): State.CLOSED,
}


class StreamStateMachine:
    """Tracks one stream's state; ``handle`` returns the new state or raises."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = State.OPEN

    def handle(self, event: Transition) -> State:
        try:
            self.state = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise IllegalTransition(self.state, event) from None
        return self.state

    @property
    def live(self) -> bool:
        return self.state in (State.OPEN, State.STREAMING)
