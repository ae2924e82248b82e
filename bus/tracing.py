"""W3C trace context across bus hops, and the turn a log line belongs to.

A process that exports traces calls ``install`` once at start; until then every helper here is
a no-op that builds no span, so an untraced system pays nothing on the hot path. A consumer span
is the child of the ``traceparent`` its message carried, and what the handler publishes carries
the consumer's (or a step's) span on, so one chat turn is one trace across every process.

``scope`` holds the correlation id and tenant of the message being handled (or the request the
gateway is serving); the log formatter reads it, so every line says which turn it is about.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar

from opentelemetry import context, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from schemas.envelope import Envelope

_propagator = TraceContextTextMapPropagator()
_tracer: trace.Tracer | None = None

# (correlation id, tenant) of the work in hand, for log lines.
scope: ContextVar[tuple[str, str] | None] = ContextVar("soma_scope", default=None)

Attributes = Mapping[str, AttributeValue]


def install(provider: trace.TracerProvider) -> None:
    """Spans from now on go to ``provider`` (set up by the process from ``OTEL_*``)."""
    global _tracer
    _tracer = provider.get_tracer("soma")


def enabled() -> bool:
    return _tracer is not None


def bind(correlation_id: str, tenant: str) -> None:
    """Log lines of the current task (and the tasks it starts) name this turn and tenant."""
    scope.set((correlation_id, tenant))


def current_traceparent() -> str | None:
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def consuming(env: Envelope, name: str, subject: str) -> AbstractContextManager[None]:
    """A consumer span whose parent is the producer's span, so traces cross the bus.

    A message that carries no trace starts none: background work (polls, timers) would
    otherwise fill the trace store with one-span traces. In a process that exports nothing the
    received context is still passed on, so a traced caller's trace goes on past it.
    """
    if env.traceparent is None:
        return nullcontext()
    if _tracer is None:
        return _continued(env.traceparent)
    attributes = {
        "messaging.system": "nats",
        "messaging.operation.type": "process",
        "messaging.destination.name": subject,
        "messaging.message.id": env.message_id,
        "messaging.message.conversation_id": env.correlation_id,
        "soma.tenant": env.tenant,
    }
    return _consumer(_tracer, env.traceparent, name, attributes)


def span(
    name: str,
    attributes: Attributes | None = None,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
) -> AbstractContextManager[trace.Span | None]:
    """A child of the current span (a step, a model call, a tool run) inside a trace only."""
    if _tracer is None or not trace.get_current_span().get_span_context().is_valid:
        return nullcontext()
    return _tracer.start_as_current_span(name, kind=kind, attributes=attributes)


def saga_step(saga_type: str, step: str, saga_id: str) -> AbstractContextManager[object]:
    """A saga step inside the trace of the message that moved the saga on; a step a durable
    timer woke (a sleep, a retry, a wait that timed out) starts a trace of its own."""
    if _tracer is None:
        return nullcontext()
    attributes = {"soma.saga.type": saga_type, "soma.saga.step": step, "soma.saga.id": saga_id}
    return _tracer.start_as_current_span(f"step {saga_type}.{step}", attributes=attributes)


def server_span(
    name: str, traceparent: str | None, attributes: Attributes | None = None
) -> AbstractContextManager[trace.Span | None]:
    """The root of a request's trace (or the child of the caller's ``traceparent``)."""
    if _tracer is None:
        return nullcontext()
    ctx = _propagator.extract({"traceparent": traceparent}) if traceparent else None
    return _tracer.start_as_current_span(
        name, context=ctx, kind=trace.SpanKind.SERVER, attributes=attributes
    )


@contextmanager
def producing(traceparent: str, schema: str, subject: str) -> Iterator[str]:
    """A producer span under ``traceparent``; yields the traceparent to send in its place."""
    assert _tracer is not None
    ctx = _propagator.extract({"traceparent": traceparent})
    attributes = {
        "messaging.system": "nats",
        "messaging.operation.type": "publish",
        "messaging.destination.name": subject,
    }
    with _tracer.start_as_current_span(
        f"publish {schema}", context=ctx, kind=trace.SpanKind.PRODUCER, attributes=attributes
    ):
        yield current_traceparent() or traceparent


@contextmanager
def _continued(traceparent: str) -> Iterator[None]:
    token = context.attach(_propagator.extract({"traceparent": traceparent}))
    try:
        yield
    finally:
        context.detach(token)


@contextmanager
def _consumer(
    tracer: trace.Tracer, traceparent: str, name: str, attributes: Attributes
) -> Iterator[None]:
    ctx = _propagator.extract({"traceparent": traceparent})
    with tracer.start_as_current_span(
        name, context=ctx, kind=trace.SpanKind.CONSUMER, attributes=attributes
    ):
        yield
