"""W3C trace context across bus hops: extract ``traceparent`` on consume, inject on publish."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from opentelemetry import context, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_propagator = TraceContextTextMapPropagator()
tracer = trace.get_tracer("soma.bus")


def current_traceparent() -> str | None:
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


def consuming(traceparent: str | None, name: str) -> AbstractContextManager[None]:
    """A consumer span whose parent is the producer's span, so traces cross the bus.

    With no tracer configured and no trace to continue there is nothing to record, and the
    hot path skips the span entirely.
    """
    if traceparent is None and isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return nullcontext()
    return _span(traceparent, name)


@contextmanager
def _span(traceparent: str | None, name: str) -> Iterator[None]:
    ctx = _propagator.extract({"traceparent": traceparent} if traceparent else {})
    token = context.attach(ctx)
    try:
        with tracer.start_as_current_span(name, kind=trace.SpanKind.CONSUMER):
            yield
    finally:
        context.detach(token)
