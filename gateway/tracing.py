"""Traces: one command's way through the gateway as one OpenTelemetry trace (``tracing.enabled``, the ``otel`` extra).

    POST <route>          SERVER span, continuing the request's W3C ``traceparent`` (or a new root)
      command <route>     the handler run, in whichever process the bus hands it to (CONSUMER)
        publish <topic>   ``gw.publish`` (PRODUCER): its ``traceparent`` rides in the view change's stamp
          render <view>   fan-out renders the version it announced, in every process that serves the view
            deliver <view>  the first delivery of that version in that process: from the render's end to the first
                            bytes handed to a socket (one span per version and process, whatever the subscribers)

The trace crosses the bus as text: the command context's ``"traceparent"`` key (``gateway.web.posts``) and the
stamp's optional fourth field (``gateway.core.stamps``). ``POST /hub/publish`` gets its SERVER span too.

Cost: with tracing off, or the extra absent, ``NO_TRACING`` stands in and every hook is behind one attribute check
(``tracing.on``); nothing of OpenTelemetry is imported. A change published outside a sampled trace stamps nothing
more, and fan-out makes no span for it.

Spans go to the ``TracerProvider`` given to ``Gateway(tracer_provider=...)``; else, with ``tracing.otlp_endpoint``,
to one the gateway builds (sampling ``tracing.sample_ratio`` of new traces, following an incoming sampled flag,
exporting over OTLP/HTTP: the ``otlp`` extra); else to OpenTelemetry's global provider (the app's own set-up).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

log = logging.getLogger("gateway.tracing")

__all__ = ["NO_TRACING", "TraceHandle", "Tracing", "configure"]


class TraceHandle:
    """A traced view version in this process: the context its delivery hangs from, and whether it was delivered
    (``Frame.trace``: the same handle rides in every subscriber's copy of the frame)."""

    __slots__ = ("context", "delivered", "ready", "view")

    def __init__(self, context: Any, view: str, ready: int) -> None:
        self.context = context
        self.view = view
        self.ready = ready  # time.time_ns() when the frame was ready (the render's end)
        self.delivered = False


class Tracing:
    """The hooks. ``on`` False: a stand-in whose hooks are never called (callers check ``on`` first)."""

    on = False

    def server_span(self, name: str, headers: Mapping[str, str]) -> AbstractContextManager[Any]:
        return nullcontext()

    def current_traceparent(self, sampled_only: bool = False) -> str | None:
        return None

    def child_span(self, name: str, traceparent: str | None, kind: str = "internal",
                   attributes: Mapping[str, Any] | None = None) -> AbstractContextManager[Any]:
        return nullcontext()

    def render_span(self, view: str, version: str, traceparent: str) -> AbstractContextManager[Any]:
        return nullcontext()

    def handle(self, view: str) -> TraceHandle | None:
        return None

    def delivered(self, handle: TraceHandle, kind: str) -> None:
        return None

    def set_status_code(self, span: Any, status: int) -> None:
        return None


NO_TRACING = Tracing()


class _OtelTracing(Tracing):
    on = True

    def __init__(self, tracer: Any) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._tracer = tracer
        self._trace = trace
        self._context = context
        self._propagator = TraceContextTextMapPropagator()
        self._kinds = {"internal": trace.SpanKind.INTERNAL, "server": trace.SpanKind.SERVER,
                       "consumer": trace.SpanKind.CONSUMER, "producer": trace.SpanKind.PRODUCER}

    def _extract(self, traceparent: str | None) -> Any:
        return self._propagator.extract({"traceparent": traceparent} if traceparent else {})

    def server_span(self, name: str, headers: Mapping[str, str]) -> AbstractContextManager[Any]:
        carrier = {k: v for k in ("traceparent", "tracestate") if (v := headers.get(k)) is not None}
        span: AbstractContextManager[Any] = self._tracer.start_as_current_span(
            name, context=self._propagator.extract(carrier), kind=self._trace.SpanKind.SERVER,
            attributes={"http.request.method": "POST"})
        return span

    def current_traceparent(self, sampled_only: bool = False) -> str | None:
        span_context = self._trace.get_current_span().get_span_context()
        if not span_context.is_valid or (sampled_only and not span_context.trace_flags.sampled):
            return None
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier)
        return carrier.get("traceparent")

    def child_span(self, name: str, traceparent: str | None, kind: str = "internal",
                   attributes: Mapping[str, Any] | None = None) -> AbstractContextManager[Any]:
        parent = self._extract(traceparent) if traceparent is not None else None
        span: AbstractContextManager[Any] = self._tracer.start_as_current_span(
            name, context=parent, kind=self._kinds[kind], attributes=dict(attributes or {}))
        return span

    def render_span(self, view: str, version: str, traceparent: str) -> AbstractContextManager[Any]:
        span: AbstractContextManager[Any] = self._tracer.start_as_current_span(
            f"render {view}", context=self._extract(traceparent), kind=self._trace.SpanKind.CONSUMER,
            attributes={"gateway.view": view, "gateway.version": version})
        return span

    def handle(self, view: str) -> TraceHandle | None:
        """The handle of a frame made inside the current (render) span, or None outside a sampled one."""
        span = self._trace.get_current_span()
        span_context = span.get_span_context()
        if not span_context.is_valid or not span_context.trace_flags.sampled:
            return None
        return TraceHandle(self._trace.set_span_in_context(span), view, time.time_ns())

    def delivered(self, handle: TraceHandle, kind: str) -> None:
        """The first delivery of a traced version in this process: a span from the frame's readiness to now."""
        if handle.delivered:
            return
        handle.delivered = True
        span = self._tracer.start_span(f"deliver {handle.view}", context=handle.context,
                                       kind=self._trace.SpanKind.INTERNAL, start_time=handle.ready,
                                       attributes={"gateway.view": handle.view, "gateway.stream.kind": kind})
        span.end()

    def set_status_code(self, span: Any, status: int) -> None:
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(self._trace.StatusCode.ERROR)


def configure(enabled: bool, sample_ratio: float = 1.0, otlp_endpoint: str = "",
              provider: Any = None) -> Tracing:
    """The gateway's tracing: ``NO_TRACING`` when disabled or when OpenTelemetry is not installed (logged)."""
    if not enabled:
        return NO_TRACING
    try:
        from opentelemetry import trace
    except ImportError:
        log.warning("tracing.enabled is set but OpenTelemetry is not installed (pip install 'gateway[otel]'): "
                    "no traces")
        return NO_TRACING
    if provider is None and otlp_endpoint:
        provider = _otlp_provider(sample_ratio, otlp_endpoint)
    tracer = (provider or trace.get_tracer_provider()).get_tracer("gateway")
    return _OtelTracing(tracer)


def _otlp_provider(sample_ratio: float, endpoint: str) -> Any:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
            OTLPSpanExporter,
        )
    except ImportError as exc:
        raise RuntimeError("tracing.otlp_endpoint needs the OTLP exporter: pip install 'gateway[otlp]'") from exc
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
                              resource=Resource.create({"service.name": "gateway"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider
