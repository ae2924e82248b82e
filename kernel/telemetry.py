"""Trace export, configured from the standard ``OTEL_*`` variables when a process starts.

With no ``OTEL_EXPORTER_OTLP_ENDPOINT`` (nor ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) nothing is
set up at all: no tracer provider, so ``bus.tracing`` builds no span on the hot path. With one,
spans go in batches over OTLP/HTTP; the exporter reads its endpoint, headers, timeout and
compression from the environment, the provider its sampler (``OTEL_TRACES_SAMPLER``, by default
``parentbased_always_on``, so a turn the gateway sampled is traced in every process) and its
resource (``OTEL_RESOURCE_ATTRIBUTES``). ``OTEL_SERVICE_NAME`` defaults to ``soma-<process>``.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bus import tracing

_provider: TracerProvider | None = None


def wanted() -> bool:
    """Whether the environment asks for traces to be exported."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    )


def configure(process: str) -> TracerProvider | None:
    """Export this process's spans when the environment asks for it; the provider, or None."""
    global _provider
    if _provider is not None or not wanted():
        return _provider
    # Imported here: a process that exports nothing does not load the exporter at all.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME", "").strip() or f"soma-{process}"
    resource = Resource.create(
        {SERVICE_NAME: name, SERVICE_INSTANCE_ID: f"{os.uname().nodename}:{os.getpid()}"}
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    tracing.install(provider)
    _provider = provider
    return provider


def shutdown() -> None:
    """Send the spans still queued; a process calls this as it stops."""
    if _provider is not None:
        _provider.shutdown()


class HttpSpans:
    """ASGI middleware: each HTTP request is a server span, the root of its turn's trace (or the
    child of the caller's ``traceparent`` header). Added only when traces are exported."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        traceparent = headers.get(b"traceparent")
        method, path = scope.get("method", "GET"), scope.get("path", "")
        attributes = {"http.request.method": method, "url.path": path, "url.scheme": "http"}
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        with tracing.server_span(
            f"{method} {path}", traceparent.decode("latin-1") if traceparent else None, attributes
        ) as span:
            try:
                await self.app(scope, receive, sending)
            finally:
                if span is not None:
                    route = scope.get("route")
                    template = getattr(route, "path", None)
                    if template:
                        span.update_name(f"{method} {template}")
                        span.set_attribute("http.route", template)
                    if status:
                        span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(trace.StatusCode.ERROR)
