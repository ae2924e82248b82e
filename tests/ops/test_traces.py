"""One chat turn is one trace: every process on its path exports its spans over OTLP/HTTP to a
receiver the test runs, and the spans form one tree whose root is the gateway's HTTP span."""

from __future__ import annotations

import gzip
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.ops.system import Running, running
from tests.servers import free_port, nats_server


@dataclass(frozen=True)
class Span:
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    attributes: dict[str, Any]


class Receiver:
    """An OTLP/HTTP trace endpoint: decodes each ExportTraceServiceRequest into ``Span``s."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.add(request)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            service = next(
                a.value.string_value
                for a in resource_spans.resource.attributes
                if a.key == "service.name"
            )
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    attributes = {a.key: _value(a.value) for a in s.attributes}
                    span = Span(
                        service,
                        s.trace_id.hex(),
                        s.span_id.hex(),
                        s.parent_span_id.hex(),
                        s.name,
                        attributes,
                    )
                    with self.lock:
                        self.spans.append(span)

    def trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def find(self, name: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.name == name]


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


@pytest.fixture(scope="module", params=["direct", "full"])
def pipeline(request: pytest.FixtureRequest) -> str:
    """How the gateway runs the turn (``SOMA_CHAT_PIPELINE``): its commands sent by the gateway
    itself, or by the saga runner's steps."""
    return str(request.param)


@pytest.fixture(scope="module")
def receiver(pipeline: str) -> Iterator[Receiver]:
    found = Receiver()
    found.thread.start()
    try:
        yield found
    finally:
        found.server.shutdown()


@pytest.fixture(scope="module")
def system(
    receiver: Receiver, pipeline: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    logs = tmp_path_factory.mktemp("trace-logs")
    with nats_server() as server:
        env = {
            **os.environ,
            "NATS_URL": server.url,
            "SOMA_DATA_DIR": str(tmp_path_factory.mktemp("trace-data")),
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "SOMA_CHAT_PIPELINE": pipeline,
        }
        for name in (
            "DATABASE_URL",
            "OTEL_SERVICE_NAME",
            "OTEL_TRACES_SAMPLER",
            "OTEL_SDK_DISABLED",
        ):
            env.pop(name, None)
        with running(env, logs) as system:
            yield system


# Every hop of a chat turn, by the process that records it.
HANDLED = {
    ("soma-gateway", "POST /v1/chat/completions"),
    ("soma-policy", "policy policy.evaluate"),
    ("soma-memory", "memory memory.recall"),
    ("soma-slm", "slm slm.complete"),
    ("soma-slm", "chat soma-local-dev"),
    ("soma-memory", "memory memory.store"),
}
EXPECTED = {
    "direct": HANDLED
    | {
        ("soma-gateway", "publish policy.evaluate"),
        ("soma-gateway", "publish slm.complete"),
        ("soma-gateway", "publish gateway.turn_finished"),
    },
    "full": HANDLED
    | {("soma-gateway", "publish sagas.start"), ("soma-sagas", "sagas sagas.start")},
}


def _turn_trace(receiver: Receiver, pipeline: str, seconds: float = 60) -> list[Span]:
    """The trace of the one chat completion request, once every expected hop is in it."""
    expected = EXPECTED[pipeline]
    deadline = time.monotonic() + seconds
    spans: list[Span] = []
    while time.monotonic() < deadline:
        roots = receiver.find("POST /v1/chat/completions")
        if roots:
            spans = receiver.trace(roots[0].trace_id)
            if expected <= {(s.service, s.name) for s in spans}:
                return spans
        time.sleep(0.3)
    seen = sorted({(s.service, s.name) for s in spans})
    raise AssertionError(f"missing {sorted(expected - set(seen))}; the trace has {seen}")


def test_a_streamed_chat_turn_is_one_trace_across_every_process(
    system: Running, receiver: Receiver, pipeline: str
) -> None:
    with httpx.stream(
        "POST",
        f"{system.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {system.api_key}"},
        json={
            "model": "soma-local-dev",
            "messages": [{"role": "user", "content": "Trace this turn"}],
            "stream": True,
        },
        timeout=60,
    ) as answer:
        assert answer.status_code == 200
        text = "".join(answer.iter_text())
    assert "[DONE]" in text

    spans = _turn_trace(receiver, pipeline)

    # FastAPI records a span of its own under ours, by the same name: one request, one trace.
    assert len({s.trace_id for s in receiver.find("POST /v1/chat/completions")}) == 1
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if not s.parent_id]
    assert [(r.service, r.name) for r in roots] == [("soma-gateway", "POST /v1/chat/completions")]
    orphans = [(s.service, s.name) for s in spans if s.parent_id and s.parent_id not in ids]
    assert orphans == []


def test_the_model_call_span_carries_the_genai_attributes(
    system: Running, receiver: Receiver, pipeline: str
) -> None:
    spans = _turn_trace(receiver, pipeline)
    (call,) = [s for s in spans if s.name == "chat soma-local-dev"]
    assert call.attributes["gen_ai.request.model"] == "soma-local-dev"
    assert call.attributes["gen_ai.system"] == "local"
    assert call.attributes["gen_ai.usage.input_tokens"] > 0
    assert call.attributes["gen_ai.usage.output_tokens"] > 0


def test_each_command_is_handled_under_the_span_that_sent_it(
    system: Running, receiver: Receiver, pipeline: str
) -> None:
    """A saga's commands under the runner's step that sent them; a direct turn's under the
    gateway's publish of each."""
    spans = _turn_trace(receiver, pipeline)
    by_id = {s.span_id: s for s in spans}
    handled = [s for s in spans if s.service in ("soma-policy", "soma-memory", "soma-slm")]
    handled = [s for s in handled if s.attributes.get("messaging.operation.type") == "process"]
    assert handled
    parents = {(by_id[s.parent_id].service, by_id[s.parent_id].name) for s in handled}
    sender, prefix = (
        ("soma-sagas", "step chat_turn.")
        if pipeline == "full"
        else (
            "soma-gateway",
            "publish ",
        )
    )
    assert all(service == sender and name.startswith(prefix) for service, name in parents), parents
