"""`soma up` with the gateway in front: large histories travel, a request too large for the bus is
a 413 naming the limit, Ctrl-C lets the turns in flight finish before anything else stops, and a
new `soma up` starts at once on the same ports.

One system runs for the module; its last tests stop it and start it again.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.body_limit import ENVELOPE_HEADROOM
from soma.embedded import MAX_PAYLOAD
from tests.cli.conftest import Running, clean_env, start_soma
from tests.servers import free_port

PROCESSES = "identity,slm,sagas,gateway"
SLOW_MODEL = "slow-upstream"
SLOW_SECONDS = 8.0
BODY_LIMIT = MAX_PAYLOAD - ENVELOPE_HEADROOM


@dataclass
class Upstream:
    """An OpenAI-compatible model server that takes ``SLOW_SECONDS`` to answer."""

    url: str
    asked: threading.Event = field(default_factory=threading.Event)


def _upstream_app(upstream: Upstream) -> Starlette:
    async def completions(request: Request) -> JSONResponse:
        import asyncio

        body = await request.json()
        upstream.asked.set()
        await asyncio.sleep(SLOW_SECONDS)
        return JSONResponse(
            {
                "id": "chatcmpl-upstream",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "slow and sure"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
            }
        )

    return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    port = free_port()
    found = Upstream(f"http://127.0.0.1:{port}/v1")
    server = uvicorn.Server(
        uvicorn.Config(_upstream_app(found), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the upstream model server did not start"
    yield found
    server.should_exit = True
    thread.join(10)


@dataclass
class System:
    env: dict[str, str]
    http_port: int
    nats_port: int
    runs: list[Running] = field(default_factory=list)
    key: str = ""

    @property
    def running(self) -> Running:
        return self.runs[-1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}

    def start(self) -> Running:
        running = start_soma("up", env=self.env)
        self.runs.append(running)
        running.out.wait_for(r"gateway ready", timeout=120)
        return running

    def interrupt(self) -> int:
        self.running.proc.send_signal(signal.SIGINT)
        return self.running.finish(120)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[System]:
    work = tmp_path_factory.mktemp("up-gateway")
    models = work / "models.yaml"
    models.write_text(
        "models:\n"
        "  - name: soma-local-dev\n"
        "    deployments:\n"
        "      - {provider: local, model: soma-local-dev}\n"
        f"  - name: {SLOW_MODEL}\n"
        "    deployments:\n"
        f"      - {{provider: openai, model: {SLOW_MODEL}, api_key_env: UPSTREAM_TEST_KEY,\n"
        f"         base_url: '{upstream.url}'}}\n"
    )
    found = System(
        clean_env(
            SOMA_DATA_DIR=str(work / "data"),
            SOMA_HTTP_PORT=str(free_port()),
            SOMA_NATS_PORT=str(free_port()),
            SOMA_PROCESSES=PROCESSES,
            SOMA_MODELS_FILE=str(models),
            UPSTREAM_TEST_KEY="sk-upstream",
            SOMA_CHAT_PIPELINE="passthrough",
            SOMA_CHAT_TIMEOUT="120",
            SOMA_RATE_RPM="0",
            SOMA_RATE_TENANT_RPM="0",
            SOMA_RATE_TPM="0",
            SOMA_RATE_TENANT_TPM="0",
        ),
        http_port=0,
        nats_port=0,
    )
    found.http_port = int(found.env["SOMA_HTTP_PORT"])
    found.nats_port = int(found.env["SOMA_NATS_PORT"])
    running = found.start()
    try:
        found.key = running.out.wait_for(r"first admin API key \(shown once, keep it\): (\S+)")[1]
        yield found
    finally:
        for run in found.runs:
            if run.proc.poll() is None:
                run.proc.send_signal(signal.SIGINT)
                try:
                    run.finish(60)
                except Exception:
                    run.proc.kill()


def _history(count: int, content: str) -> list[dict[str, str]]:
    roles = ("user", "assistant")
    return [{"role": roles[i % 2], "content": f"{i:05d} {content}"} for i in range(count - 1)] + [
        {"role": "user", "content": "what was said first?"}
    ]


def _body(messages: list[dict[str, str]], model: str = "soma-local-dev") -> bytes:
    return json.dumps({"model": model, "messages": messages}).encode()


def _post(system: System, body: bytes, timeout: float = 120) -> httpx.Response:
    return httpx.post(
        f"{system.url}/v1/chat/completions",
        headers=system.headers(),
        content=body,
        timeout=timeout,
    )


def test_a_history_of_10000_messages_in_736_kb_is_answered(system: System) -> None:
    body = _body(_history(10_000, "a line of the chat, said before"))
    assert 700_000 < len(body) < 770_000
    response = _post(system, body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]


def test_a_body_over_the_limit_is_413_naming_the_limit(system: System) -> None:
    body = _body([{"role": "user", "content": "x" * BODY_LIMIT}])
    response = _post(system, body)
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "request_too_large"
    assert error["type"] == "invalid_request_error"
    assert f"limit of {BODY_LIMIT} bytes" in error["message"]


def test_a_body_within_the_limit_too_large_for_the_bus_is_413_not_503(system: System) -> None:
    # Each short message grows on the bus (its null fields are spelled out), so a body well
    # under the HTTP limit can make a command over the server's max_payload.
    body = _body(_history(150_000, ""))
    assert len(body) < BODY_LIMIT
    response = _post(system, body)
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "request_too_large"
    assert f"limit of {MAX_PAYLOAD} bytes" in error["message"]


def test_the_gateway_answers_again_after_a_request_too_large_for_the_bus(
    system: System,
) -> None:
    body = _body([{"role": "user", "content": "still there?"}])
    assert _post(system, body, timeout=30).status_code == 200


def _refused(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=2)
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
        return True  # not listening, or closing the connection it had just accepted
    return False


def test_sigint_lets_a_turn_in_flight_finish_then_stops_sagas_handlers_and_nats(
    system: System, upstream: Upstream
) -> None:
    upstream.asked.clear()
    idle = httpx.Client(base_url=system.url, headers=system.headers(), timeout=30)
    assert idle.get("/v1/models").status_code == 200  # a keep-alive connection, left open
    slow = _body([{"role": "user", "content": "take your time"}], model=SLOW_MODEL)
    with ThreadPoolExecutor(1) as pool:
        turn: Future[httpx.Response] = pool.submit(_post, system, slow)
        assert upstream.asked.wait(60), "the slow turn never reached the model"
        mark = len(system.running.out.lines)
        system.running.proc.send_signal(signal.SIGINT)
        system.running.out.wait_for(r"stopping gateway \(refusing new requests", 10, mark)
        deadline = time.monotonic() + SLOW_SECONDS / 2
        while not _refused(system.url) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _refused(system.url), "the gateway still took connections while draining"
        assert not turn.done()
        response = turn.result(120)
    idle.close()
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "slow and sure"
    assert system.running.finish(120) == 0
    out = system.running.out.text
    assert "Traceback" not in out
    assert "killed" not in out
    order = [
        out.index("stopped gateway"),
        out.index("stopped sagas"),
        out.index("stopped slm"),
        out.index("stopped nats-server"),
    ]
    assert order == sorted(order)


def _port_in_use_without_reuse(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def test_soma_up_starts_again_at_once_on_the_same_ports(system: System) -> None:
    assert system.running.proc.poll() is not None, "the previous test stops the system"
    # The stopped run's connections linger in TIME_WAIT on the gateway's port: the case a
    # probe that binds without SO_REUSEADDR took for a port in use.
    lingering = _port_in_use_without_reuse(system.http_port)
    running = system.start()
    out = running.out.text
    assert "already in use" not in out
    assert "is taken" not in out
    assert f"on nats://127.0.0.1:{system.nats_port}," in out
    response = _post(system, _body([{"role": "user", "content": "back again"}]), timeout=30)
    assert response.status_code == 200, response.text
    assert lingering, "no connection lingered, so this run did not test the probe"
    assert system.interrupt() == 0
    assert "Traceback" not in running.out.text
