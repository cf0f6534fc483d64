"""Who may open a QUIC connection: address validation (Retry) and a cap on open connections, with no sockets.

The rules, asked for every Initial packet that would open a connection:

1. past ``max_connections`` open connections (0: no cap), refuse (``QuicRefusal.CAP``), before any Retry: a
   connection refused anyway is not worth a round trip;
2. with ``RetryMode.ALWAYS``, an Initial without a token gets a Retry (no state kept), and one with a token is
   admitted only once the token proves the address (the caller checks it: ``Verdict.VALIDATE``);
3. otherwise admit.

The UDP listener (``gateway.web.hypercorn.quic_retry``) asks ``verdict``, calls ``opened`` when it creates a
connection and ``closed`` when that connection ends.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class RetryMode(enum.Enum):
    """``limits.quic_retry``: when an address must prove it owns itself before the server keeps any state."""

    ALWAYS = "always"
    NEVER = "never"


class QuicRefusal(enum.Enum):
    """Why an Initial was refused: the ``reason`` label of ``gateway_quic_refused_total``."""

    CAP = "cap"  # limits.max_quic_connections
    BAD_TOKEN = "bad_token"  # a token not minted for this address and connection id, or expired


class Verdict(enum.Enum):
    """What to do with an Initial that would open a connection."""

    ADMIT = "admit"
    RETRY = "retry"  # answer with a Retry packet carrying a token
    VALIDATE = "validate"  # admit only if its token is valid
    REFUSE = "refuse"  # the cap is reached


@dataclass(eq=False)
class QuicAdmission:
    """Open QUIC connections counted against ``max_connections`` (0 disables it), and the Retry policy."""

    retry: RetryMode = RetryMode.ALWAYS
    max_connections: int = 0
    open: int = 0

    def __post_init__(self) -> None:
        if self.max_connections < 0:
            raise ValueError(f"max_connections must be 0 (no cap) or more, not {self.max_connections}")

    def verdict(self, has_token: bool) -> Verdict:
        if self.max_connections and self.open >= self.max_connections:
            return Verdict.REFUSE
        if self.retry is RetryMode.ALWAYS:
            return Verdict.VALIDATE if has_token else Verdict.RETRY
        return Verdict.ADMIT

    def opened(self) -> None:
        self.open += 1

    def closed(self) -> None:
        if self.open <= 0:
            raise RuntimeError("a QUIC connection closed that was never counted as opened")
        self.open -= 1
