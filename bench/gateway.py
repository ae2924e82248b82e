"""The gateway in front of a model, against LiteLLM's proxy in front of the same model.

    .venv/bin/python bench/gateway.py                     # both, default sizes
    .venv/bin/python bench/gateway.py --only soma --requests 100 --concurrency 16

Upstream: a minimal OpenAI-compatible server (this file, ``--upstream PORT``) that answers at
once, in its own process, so every figure is the cost of the layers in front of it.

Soma: the whole system as ``soma run`` processes on a nats-server from the wheel (identity,
policy, memory, slm, tools, analytics, the saga runner and the gateway), the model routed by
the slm service to the upstream through its OpenAI provider. A completion is a ``chat_turn``
saga: policy check, memory recall, model call, memory store — every step a committed
transaction and a bus round trip. The database is ``DATABASE_URL`` or a SQLite file.

LiteLLM: ``litellm --config`` with the same model on the same upstream, master-key auth, no
database (its lightest set-up).

Figures for each: latency of sequential non-streamed completions (p50/p95/p99), time to the
first streamed content chunk (p50), completions per second with ``--concurrency`` callers, and
``GET /v1/models`` per second with as many callers (the front door alone: authentication, rate
limits, a cached list; no model call).
Clients are raw httpx, the same for both. The last line printed is the JSON summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
MODEL = "bench-model"
UPSTREAM_KEY = "sk-bench-upstream"
LITELLM_KEY = "sk-bench-litellm"
SOMA_PROCESSES = ["identity", "policy", "memory", "slm", "tools", "analytics", "sagas", "gateway"]
PROMPT = [{"role": "user", "content": "Say something short."}]


# ── the upstream ────────────────────────────────────────────────────────────────────────


def upstream_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    words = ["A", " short", " answer", " from", " the", " upstream."]

    async def completions(request: Request) -> Response:
        body = await request.json()
        created = int(time.time())
        if body.get("stream"):

            async def chunks() -> Any:
                for i, word in enumerate(words):
                    delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
                    chunk = {
                        "id": "up",
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": MODEL,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                    }
                    yield f"data: {json.dumps(chunk)}\n\n"
                last = {
                    "id": "up",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": MODEL,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11},
                }
                yield f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n"

            return StreamingResponse(chunks(), media_type="text/event-stream")
        return JSONResponse(
            {
                "id": "up",
                "object": "chat.completion",
                "created": created,
                "model": MODEL,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "".join(words)},
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11},
            }
        )

    async def models(_: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "bench"}],
            }
        )

    return Starlette(
        routes=[
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/v1/models", models),
        ]
    )


def serve_upstream(port: int) -> None:
    import uvicorn

    uvicorn.run(upstream_app(), host="127.0.0.1", port=port, log_level="warning")


# ── processes ───────────────────────────────────────────────────────────────────────────


def free_port() -> int:
    from soma import embedded

    return embedded.free_port()


def wait_http(url: str, seconds: float = 90, ok: tuple[int, ...] = (200,)) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code in ok:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {seconds:.0f}s")


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()


@contextlib.contextmanager
def upstream() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--upstream", str(port)], cwd=ROOT)
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop([proc])


@contextlib.contextmanager
def soma_system(upstream_url: str, work: Path) -> Iterator[tuple[str, str]]:
    """The whole system; yields the gateway's URL and an API key."""
    from soma import embedded

    nats_port = free_port()
    nats = subprocess.Popen(
        [
            embedded.binary(),
            "-a",
            "127.0.0.1",
            "-p",
            str(nats_port),
            "-js",
            "-sd",
            str(work / "nats"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    models = work / "models.yaml"
    models.write_text(
        "models:\n"
        f"  - name: {MODEL}\n"
        "    deployments:\n"
        f"      - {{provider: openai, model: {MODEL}, api_key_env: BENCH_UPSTREAM_KEY,\n"
        f"         base_url: '{upstream_url}'}}\n"
    )
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NATS_URL": f"nats://127.0.0.1:{nats_port}",
        "SOMA_DATA_DIR": str(work / "data"),
        "SOMA_HTTP_PORT": str(port),
        "SOMA_MODELS_FILE": str(models),
        "BENCH_UPSTREAM_KEY": UPSTREAM_KEY,
        "SOMA_RATE_RPM": "0",
        "SOMA_RATE_TENANT_RPM": "0",
        "SOMA_RATE_TPM": "0",
        "SOMA_RATE_TENANT_TPM": "0",
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(200):
            if embedded.accepts(nats_port):
                break
            time.sleep(0.05)
        soma = [sys.executable, "-m", "soma.cli"]
        subprocess.run([*soma, "migrate"], env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        key = subprocess.run(
            [
                sys.executable,
                "-c",
                "from soma.cli_keys import app; app()",
                "create",
                "--tenant",
                "bench",
                "--user",
                "bench",
                "--role",
                "member",
            ],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        log = (work / "soma.log").open("wb")
        procs = [
            subprocess.Popen(
                [*soma, "run", name], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )
            for name in SOMA_PROCESSES
        ]
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/readyz")
        headers = {"Authorization": f"Bearer {key}"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the handlers' consumers may still be binding
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.post(
                    f"{url}/v1/chat/completions",
                    headers=headers,
                    timeout=30,
                    json={"model": MODEL, "messages": PROMPT},
                )
                if r.status_code == 200:
                    break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"no completion from the Soma gateway; see {work / 'soma.log'}")
        yield url, key
    finally:
        stop(procs)
        stop([nats])  # type: ignore[list-item]


@contextlib.contextmanager
def litellm_proxy(upstream_url: str, work: Path) -> Iterator[tuple[str, str]]:
    binary = shutil.which("litellm") or str(Path(sys.executable).with_name("litellm"))
    if not Path(binary).exists():
        raise RuntimeError("litellm is not installed (pip install 'litellm[proxy]')")
    config = work / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {upstream_url}\n"
        f"      api_key: {UPSTREAM_KEY}\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_KEY}\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )
    port = free_port()
    env = {**os.environ, "LITELLM_LOG": "ERROR", "DISABLE_SCHEMA_UPDATE": "true"}
    env.pop("DATABASE_URL", None)
    log = (work / "litellm.log").open("wb")
    proc = subprocess.Popen(
        [binary, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health/liveliness", seconds=180)
        yield url, LITELLM_KEY
    finally:
        stop([proc])


# ── figures ─────────────────────────────────────────────────────────────────────────────


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(
    url: str, key: str, requests: int, streams: int, concurrency: int, seconds: float
) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": MODEL, "messages": PROMPT}
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=60, limits=limits
    ) as client:
        for _ in range(5):
            (await client.post("/v1/chat/completions", json=body)).raise_for_status()

        latencies = []
        for _ in range(requests):
            started = time.perf_counter()
            (await client.post("/v1/chat/completions", json=body)).raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)

        first_tokens = []
        for _ in range(streams):
            started = time.perf_counter()
            first = None
            async with client.stream(
                "POST", "/v1/chat/completions", json={**body, "stream": True}
            ) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if first is None and '"content":"' in line and '"content":""' not in line:
                        first = (time.perf_counter() - started) * 1000
            if first is not None:
                first_tokens.append(first)

        # The gateway alone: authentication, rate limits and the cached model list, no handler.
        served = 0
        listing_deadline = time.perf_counter() + min(seconds, 3.0)

        async def lister() -> None:
            nonlocal served
            while time.perf_counter() < listing_deadline:
                (await client.get("/v1/models")).raise_for_status()
                served += 1

        started = time.perf_counter()
        await asyncio.gather(*(lister() for _ in range(concurrency)))
        models_per_s = served / (time.perf_counter() - started)

        done = 0
        failed = 0
        deadline = time.perf_counter() + seconds

        async def caller() -> None:
            nonlocal done, failed
            while time.perf_counter() < deadline:
                response = await client.post("/v1/chat/completions", json=body)
                if response.status_code == 200:
                    done += 1
                else:
                    failed += 1

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "latency_ms_p50": round(statistics.median(latencies), 2),
        "latency_ms_p95": round(percentile(latencies, 0.95), 2),
        "latency_ms_p99": round(percentile(latencies, 0.99), 2),
        "first_token_ms_p50": round(statistics.median(first_tokens), 2) if first_tokens else -1,
        "completions_per_s": round(done / elapsed, 1),
        "models_list_per_s": round(models_per_s, 1),
        "failed": failed,
    }


def main(args: argparse.Namespace) -> None:
    summary: dict[str, Any] = {
        "requests": args.requests,
        "streams": args.streams,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "database": "postgresql" if os.environ.get("DATABASE_URL") else "sqlite",
    }
    systems = {"soma": soma_system, "litellm": litellm_proxy}
    chosen = [args.only] if args.only else list(systems)
    with tempfile.TemporaryDirectory(prefix="soma-bench-gw-") as tmp, upstream() as up:
        for name in chosen:
            work = Path(tmp) / name
            work.mkdir()
            print(f"{name}: starting", flush=True)
            try:
                with systems[name](up, work) as (url, key):
                    figures = asyncio.run(
                        measure(
                            url, key, args.requests, args.streams, args.concurrency, args.seconds
                        )
                    )
            except RuntimeError as exc:
                print(f"{name}: skipped: {exc}", flush=True)
                summary[name] = {"skipped": str(exc)}
                continue
            summary[name] = figures
            print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()), flush=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=["soma", "litellm"])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parsed = parser.parse_args()
    if parsed.upstream:
        serve_upstream(parsed.upstream)
    else:
        main(parsed)
