"""HTTP/3 answers every Initial without a Retry and with no connection cap (Hypercorn 0.18.0, aioquic 1.7.2).

Defect: ``QuicProtocol.handle`` creates a ``QuicConnection`` for every Initial datagram of 1,200 bytes or more
whose destination connection id it does not know, with no address validation and no limit. UDP source addresses
are free to forge, so one host can:

- reflect: each forged Initial makes the server sign a handshake and send its flight (certificate included), and
  resend it on loss timers, to the forged address, up to the 3x anti-amplification limit RFC 9000 §8 allows before
  validation: up to 3,600 bytes at a victim of the attacker's choosing per 1,200 sent (measured with the
  gateway's EC development certificate: a first flight of 1,200 bytes; a longer RSA chain fills the 3x);
- build state: each Initial, even one whose payload is random bytes, becomes a ``QuicConnection`` kept until
  aioquic's 60 s idle timeout (measured in-process: 84 KiB each, so 10,000 such datagrams, 12 MB of traffic, hold
  ~820 MiB for a minute).

Correction: ``QuicProtocol.handle`` decides about an Initial that would open a connection with
``gateway.core.quic_admission`` before any state exists:

- past ``limits.max_quic_connections`` open connections it is refused with an Initial CONNECTION_CLOSE
  ``CONNECTION_REFUSED`` (one small packet, no state);
- with ``limits.quic_retry = "always"`` an Initial without a token gets a Retry packet whose token (aioquic's
  ``QuicRetryTokenHandler``, AES-GCM under a per-process key) binds the client's address and port, the original
  destination connection id and the Retry's source connection id, for 30 s. An Initial with a valid token opens
  the connection with ``original_destination_connection_id`` (from the token) and ``retry_source_connection_id``
  set, as aioquic's own ``QuicServer`` does; one with an invalid token gets an Initial CONNECTION_CLOSE
  ``INVALID_TOKEN`` (RFC 9000 §8.1.2) and opens nothing.

Every other datagram goes to Hypercorn's own ``handle`` unchanged. A connection is counted from its creation to
its ``ConnectionTerminated`` (seen in ``_handle_events``, which this module wraps; ``h3_backpressure`` wraps it
too, independently). Counted in ``gateway_quic_retries_total`` and ``gateway_quic_refused_total{reason}``.

Upstream: Hypercorn has no issue for QUIC address validation or a QUIC connection cap; pgjones/hypercorn#201 (an
open draft rewriting H3) names Retry as still to do. aioquic's ``QuicServer(retry=True)`` is the model. The
upstream fix: a ``quic_retry`` and a ``max_quic_connections`` config, checked where ``QuicProtocol.handle``
creates connections.

Tests that fail without it: ``tests/test_quic_retry.py`` (no Retry is sent, a replayed token opens a connection,
the third connection is not refused).

Remove it when a Hypercorn release validates addresses with Retry and caps QUIC connections: pin it, delete this
module, and the tests above must still pass.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from gateway.core.quic_admission import QuicAdmission, QuicRefusal, RetryMode, Verdict

COUNTED = "gateway_counted"  # set on a Hypercorn ``_Connection`` counted in ``admission`` until it ends
RETRY_CID_LENGTH = 8  # bytes; Hypercorn parses headers with host_cid_length=8
MIN_INITIAL = 1200  # bytes: RFC 9000 §14.1, the smallest datagram carrying a client Initial

admission = QuicAdmission(RetryMode.ALWAYS, 10_000)
_on_refused: list[Callable[[QuicRefusal], None]] = []  # the last configured gateway's
_on_retry: list[Callable[[], None]] = []


def configure(retry: RetryMode, max_connections: int, on_refused: Callable[[QuicRefusal], None] | None = None,
              on_retry: Callable[[], None] | None = None) -> None:
    """Set the policy (process-wide: the UDP listener is); the callbacks are told of every refusal and Retry."""
    admission.retry, admission.max_connections = retry, max_connections
    _on_refused[:] = [on_refused] if on_refused is not None else []
    _on_retry[:] = [on_retry] if on_retry is not None else []


def _refused(reason: QuicRefusal) -> None:
    for observer in _on_refused:
        observer(reason)


def _retried() -> None:
    for observer in _on_retry:
        observer()


def initial_close(version: int, error_code: int, reason: bytes, client_dcid: bytes, client_scid: bytes) -> bytes:
    """A server Initial packet carrying only CONNECTION_CLOSE: an answer that keeps no state (RFC 9000 §10.2.3).

    Its keys come from the destination connection id the client chose, as every server Initial's do.
    """
    from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE
    from aioquic.quic.connection import TRANSPORT_CLOSE_FRAME_CAPACITY
    from aioquic.quic.crypto import CryptoPair
    from aioquic.quic.packet import QuicFrameType, QuicPacketType
    from aioquic.quic.packet_builder import QuicPacketBuilder

    crypto = CryptoPair()
    crypto.setup_initial(cid=client_dcid, is_client=False, version=version)
    builder = QuicPacketBuilder(host_cid=client_dcid, peer_cid=client_scid, version=version, is_client=False,
                                max_datagram_size=SMALLEST_MAX_DATAGRAM_SIZE)
    builder.start_packet(QuicPacketType.INITIAL, crypto)
    frame = builder.start_frame(QuicFrameType.TRANSPORT_CLOSE, capacity=TRANSPORT_CLOSE_FRAME_CAPACITY + len(reason))
    frame.push_uint_var(error_code)
    frame.push_uint_var(QuicFrameType.PADDING)  # no frame type to blame
    frame.push_uint_var(len(reason))
    frame.push_bytes(reason)
    datagrams, _ = builder.flush()
    return datagrams[0]


def install() -> None:
    from aioquic._buffer import Buffer
    from aioquic.quic.connection import QuicConnection
    from aioquic.quic.packet import QuicErrorCode, QuicPacketType, encode_quic_retry, pull_quic_header
    from aioquic.quic.retry import QuicRetryTokenHandler
    from hypercorn.events import RawData
    from hypercorn.protocol.quic import QuicProtocol, _Connection

    original_handle = QuicProtocol.handle
    original_handle_events = QuicProtocol._handle_events
    tokens = QuicRetryTokenHandler()  # a fresh key per process: tokens live 30 s, one process's listener

    def opening_initial(self: Any, event: Any) -> Any:
        """The header of a datagram that would make Hypercorn create a connection, else None."""
        try:
            header = pull_quic_header(Buffer(data=event.data), host_cid_length=RETRY_CID_LENGTH)
        except ValueError:
            return None
        if (header.packet_type != QuicPacketType.INITIAL or len(event.data) < MIN_INITIAL
                or header.version not in self.quic_config.supported_versions
                or header.destination_cid in self.connections or self.context.terminated.is_set()):
            return None
        return header

    async def reply(self: Any, data: bytes, address: Any) -> None:
        await self.send(RawData(data=data, address=address))

    async def retry(self: Any, header: Any, address: Any) -> None:
        source_cid = os.urandom(RETRY_CID_LENGTH)
        token = tokens.create_token(address=address, original_destination_connection_id=header.destination_cid,
                                    retry_source_connection_id=source_cid, now=self.context.time())
        await reply(self, encode_quic_retry(version=header.version, source_cid=source_cid,
                                            destination_cid=header.source_cid,
                                            original_destination_cid=header.destination_cid, retry_token=token),
                    address)
        _retried()

    async def refuse(self: Any, header: Any, address: Any, reason: QuicRefusal) -> None:
        code, phrase = ((QuicErrorCode.CONNECTION_REFUSED, b"too many connections") if reason is QuicRefusal.CAP
                        else (QuicErrorCode.INVALID_TOKEN, b"invalid token"))
        await reply(self, initial_close(header.version, code, phrase, header.destination_cid, header.source_cid),
                    address)
        _refused(reason)

    async def open_connection(self: Any, event: Any, header: Any) -> None:
        verdict = admission.verdict(bool(header.token))
        if verdict is Verdict.REFUSE:
            await refuse(self, header, event.address, QuicRefusal.CAP)
            return
        if verdict is Verdict.RETRY:
            await retry(self, header, event.address)
            return
        original_cid, retry_cid = header.destination_cid, None
        if verdict is Verdict.VALIDATE:
            try:
                original_cid = tokens.validate_token(address=event.address, destination_cid=header.destination_cid,
                                                     token=header.token, now=self.context.time())
            except ValueError:
                await refuse(self, header, event.address, QuicRefusal.BAD_TOKEN)
                return
            retry_cid = header.destination_cid  # the client sends to the Retry's source connection id
        quic = QuicConnection(configuration=self.quic_config, original_destination_connection_id=original_cid,
                              retry_source_connection_id=retry_cid)
        connection = _Connection(cids={header.destination_cid, quic.host_cid}, quic=quic,
                                 task=self.context.single_task_class())
        setattr(connection, COUNTED, True)
        admission.opened()
        self.connections[header.destination_cid] = connection
        self.connections[quic.host_cid] = connection
        quic.receive_datagram(event.data, event.address, now=self.context.time())
        await self._handle_events(connection, event.address)

    async def handle(self: Any, event: Any) -> None:
        if isinstance(event, RawData) and (header := opening_initial(self, event)) is not None:
            await open_connection(self, event, header)
            return
        await original_handle(self, event)

    async def _handle_events(self: Any, connection: Any, client: Any = None) -> None:
        try:
            await original_handle_events(self, connection, client)
        finally:
            # Hypercorn empties ``cids`` exactly when the connection terminated.
            if not connection.cids and getattr(connection, COUNTED, False):
                setattr(connection, COUNTED, False)
                admission.closed()

    QuicProtocol.handle = handle  # type: ignore[method-assign]
    QuicProtocol._handle_events = _handle_events  # type: ignore[method-assign]
