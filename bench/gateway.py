"""What the gateway adds to a chat completion, in full and in pass-through, against LiteLLM's proxy.

    .venv/bin/python bench/gateway.py
    .venv/bin/python bench/gateway.py --seconds 4 --clients 1,10 --backends embedded
    .venv/bin/python bench/gateway.py --rounds 3 --systems direct,passthrough,litellm

Upstream: a minimal OpenAI-compatible server (this file, ``--upstream PORT``) that answers at
once, in its own process; asked to stream, it sends OpenAI's SSE chunks, its tokens
``TOKEN_GAP_S`` apart. It is measured alone first, straight from the load generator, and
"added latency" is a layer's p50 (p99) minus the upstream's own p50 (p99), alone with one
client; at 10 and 50 clients the added figure includes the queueing those clients cause. Its
one-client cell is measured again after each system, with nothing else running, and the
figure every added one is taken over pools them all: on a shared machine a slow moment during
one short cell would otherwise move every added figure of the run (it once put the upstream's
p50 at 3.5 ms where it is about 1).

Soma: the whole system as ``soma run`` processes on a nats-server from the wheel (identity,
policy, memory, slm, tools, analytics, the saga runner) and a gateway per pipeline on the same
bus:
- full: ``SOMA_CHAT_PIPELINE=full`` — a completion is a ``chat_turn`` saga: policy check of the
  prompt and memory recall at once, the model call through the slm service, policy check of the
  answer, memory store — each command sent by the saga runner as the last answer comes in;
- direct: ``SOMA_CHAT_PIPELINE=direct``, the default — the same commands to the same processes,
  sent by the gateway itself, no saga between them (``gateway/direct.py``);
- pass-through: ``SOMA_CHAT_PIPELINE=passthrough`` — the turn skips policy and memory: one
  ``slm.complete`` command straight to the slm process, no saga, still metered.
Rate limits are off (``SOMA_RATE_*=0``) so nothing is throttled. ``--backends`` runs the system
once per backend: ``embedded`` (a SQLite file per area, in-process limits) and ``services``
(a throwaway database on the PostgreSQL server of ``DATABASE_URL``, else the local one, and Redis
at ``REDIS_URL``, else the local one, under a unique key prefix); with ``QDRANT_URL`` the memory
collection gets a unique name. Everything is deleted at the end.

The shapes' floors (``--systems`` ``floor``): the same gateway, runner and bus with
``bench/standins.py`` in place of policy, memory and slm, which answer at once without doing
anything (the "model" calls no upstream). A full turn through them costs what the chain itself
costs, every arrow and every runner transition, and nothing of the work; pass-through through
them costs the gateway and one hop. What a design may take off a turn is what lies between a
shape's floor and its measured figure; below the floor, only a different shape goes.

The candidate shapes, measured and not shipped (``--systems fused,nohop``): ``bench/fused.py``
runs a whole turn in one handler process behind a pass-through gateway (one hop before the
answer); ``bench/nohop.py`` runs that same turn in the gateway's own process (none).

LiteLLM: ``litellm --config`` (``litellm[proxy]``, a bench-only extra) with the same model on the
same upstream, master-key auth, no database — its lightest set-up. It runs after Soma is
stopped, so neither competes with the other for the two cores.

``--rounds N`` runs that whole sequence (the upstream, each system, LiteLLM) N times, and each
cell pools its rounds' requests (CPU per request averaged over them, hops pooled). On a shared
machine whose speed drifts over minutes, one pass measures each system in a different stretch
of time, which moves the comparison as much as any design does; N passes measure every system
across the same stretch, and a p99 rests on N times as many requests (at one client an 8-second
cell's p99 is its slowest five or six).

Each cell is 1, 10 or 50 concurrent clients, each a loop of sequential non-streamed
completions for ``--seconds`` after a warm-up at the same load; raw httpx for every system.
Every request names ``max_tokens``, as most clients' do, so a full turn's prompt check charges
the token budget (until this bench sent it, that cost went unmeasured).
Then one client streams for ``--seconds``: the time to first token is from sending the request
to the first chunk with content, and "added" is a layer's p50 minus the upstream's own.
With one client, the CPU time each process spends per request is read from ``/proc`` around
the cell (Linux) and printed by process: where a turn's milliseconds go. The same cell's chat
turns are then read back from the commands and events streams, and each message's stored time
is set against its cause's (its causation id), by JetStream's own clock: the time each hop of
a turn took, process by process, with no observer on the path. A table per backend;
the last line printed is the JSON summary: latencies there are added over the upstream with
one client, requests/s are at 10 clients (``full_rps_50`` and ``direct_rps_50`` at 50),
``direct_*`` are the direct turn's figures, times to first token
(``ttft_*``) are added over the upstream's, ``cpu_ms_per_turn`` holds the CPU table and
``turn_hops_ms`` the hops. The first backend's figures are its top-level keys, each other
backend's a nested object under its name.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
MODEL = "bench-model"
UPSTREAM_KEY = "sk-bench-upstream"
LITELLM_KEY = "sk-bench-litellm"
HANDLERS = ["identity", "policy", "memory", "slm", "tools", "analytics", "sagas"]
# The shapes' floors: bench/standins.py in place of the handlers a full turn waits for.
STANDINS: dict[str, str | None] = {h: f"bench.standins:{h}" for h in ("policy", "memory", "slm")}
# The candidate shape: bench/fused.py, policy, memory and slm in one process, in slm's place.
FUSED: dict[str, str | None] = {"policy": None, "memory": None, "slm": "bench.fused:build"}
# The shape with no hop before the answer: bench/nohop.py, that turn in the gateway's process.
NOHOP: dict[str, str | None] = {
    "policy": None,
    "memory": None,
    "slm": None,
    "gateway": "bench.nohop:serve",
}
# The name each gateway mode's floor is measured under.
FLOORS = {"full": "floor", "direct": "floor_direct", "passthrough": "floor_passthrough"}
PROMPT = [{"role": "user", "content": "Say something short."}]
# Sent with every request, as most clients do: a full turn that names it is charged against
# the tenant's daily token budget on its prompt check, a SQL transaction on the turn's path.
MAX_TOKENS = 64
SYSTEMS = [
    "upstream",
    "full",
    "direct",
    "passthrough",
    "floor",
    "floor_direct",
    "floor_passthrough",
    "fused",
    "nohop",
    "litellm",
]
LABELS = {
    "upstream": "upstream alone",
    "full": "soma full turn",
    "direct": "soma direct turn",
    "passthrough": "soma pass-through",
    "floor": "floor: full turn",
    "floor_direct": "floor: direct",
    "floor_passthrough": "floor: pass-thru",
    "fused": "candidate: fused",
    "nohop": "candidate: no hop",
    "litellm": "litellm proxy",
}
GOAL_FULL_P50_MS = 5.0
GOAL_FULL_P99_MS = 20.0
GOAL_RPS_RATIO = 2.0
GOAL_LATENCY_RATIO = 0.5
GOAL_TTFT_PASSTHROUGH_RATIO = 0.5  # of litellm's added time to first token
GOAL_TTFT_FULL_RATIO = 1.0
# The upstream's streamed answer: tokens this far apart, so a layer that buffers shows it.
TOKENS = ["A", " short", " streamed", " answer", "."]
TOKEN_GAP_S = 0.005
SERVICES = {
    "DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
}
BACKENDS = ["embedded", "services"]


# ── the upstream ────────────────────────────────────────────────────────────────────────


def upstream_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    async def _chunks(body: dict[str, Any]) -> AsyncIterator[bytes]:
        """OpenAI's stream: a role chunk, content chunks ``TOKEN_GAP_S`` apart, the finish,
        usage when asked for, then ``[DONE]``."""

        def chunk(delta: dict[str, Any], finish: str | None = None, **more: Any) -> bytes:
            data = {
                "id": "up",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": MODEL,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **more,
            }
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        yield chunk({"role": "assistant", "content": ""})
        for i, token in enumerate(TOKENS):
            if i:
                await asyncio.sleep(TOKEN_GAP_S)
            yield chunk({"content": token})
        yield chunk({}, "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 5, "completion_tokens": len(TOKENS), "total_tokens": 11}
            yield (
                b"data: "
                + json.dumps(
                    {
                        "id": "up",
                        "object": "chat.completion.chunk",
                        "created": int(time.time()),
                        "model": MODEL,
                        "choices": [],
                        "usage": usage,
                    }
                ).encode()
                + b"\n\n"
            )
        yield b"data: [DONE]\n\n"

    async def completions(request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        if body.get("stream"):
            return StreamingResponse(_chunks(body), media_type="text/event-stream")
        return JSONResponse(
            {
                "id": "up",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": MODEL,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "A short answer."},
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
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

    uvicorn.run(upstream_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ── processes ───────────────────────────────────────────────────────────────────────────


def free_port() -> int:
    from soma import embedded

    return embedded.free_port()


def wait_http(url: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
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
            p.wait()


@contextlib.contextmanager
def upstream() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--upstream", str(port)], cwd=ROOT)
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop([proc])


async def _postgres(server: str, sql: str) -> None:
    import asyncpg

    parts = urlsplit(server)
    conn = await asyncpg.connect(urlunsplit(("postgresql", parts.netloc, "/postgres", "", "")))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def isolated_services(env: dict[str, str]) -> Iterator[None]:
    """Point ``env`` at throwaway places on the shared services it names, removed afterwards.

    PostgreSQL gets a fresh database, Redis a unique key prefix, Qdrant a unique collection;
    without those variables everything lives under the bench's temporary folder.
    """
    tag = f"bench_gw_{uuid.uuid4().hex[:8]}"
    database = env.get("DATABASE_URL", "")
    created = database.split("://", 1)[0].split("+")[0] in ("postgresql", "postgres")
    if created:
        asyncio.run(_postgres(database, f'CREATE DATABASE "{tag}"'))
        parts = urlsplit(database)
        env["DATABASE_URL"] = urlunsplit((parts.scheme, parts.netloc, f"/{tag}", "", ""))
    if env.get("REDIS_URL"):
        env["SOMA_REDIS_PREFIX"] = f"{tag}:"
    if env.get("QDRANT_URL"):
        env["SOMA_MEMORY_COLLECTION"] = tag
    try:
        yield
    finally:
        if created:
            asyncio.run(_postgres(database, f'DROP DATABASE IF EXISTS "{tag}" WITH (FORCE)'))
        if env.get("REDIS_URL"):
            import redis

            client = redis.Redis.from_url(env["REDIS_URL"])
            for key in client.scan_iter(f"{tag}:*"):
                client.delete(key)
            client.close()
        if env.get("QDRANT_URL"):
            qdrant_key = env.get("QDRANT_API_KEY")
            with contextlib.suppress(httpx.HTTPError):
                httpx.delete(
                    f"{env['QDRANT_URL'].rstrip('/')}/collections/{tag}",
                    headers={"api-key": qdrant_key} if qdrant_key else None,
                    timeout=10,
                )


def first_completion(url: str, headers: dict[str, str], log: Path) -> None:
    """Wait for one answered completion: the handlers' consumers may still be binding."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.post(
                f"{url}/v1/chat/completions",
                headers=headers,
                timeout=30,
                json={"model": MODEL, "messages": PROMPT},
            )
            if r.status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"no completion from the Soma gateway at {url}; see {log}")


@contextlib.contextmanager
def soma_system(
    upstream_url: str,
    work: Path,
    modes: tuple[str, ...] = ("full", "passthrough"),
    backend: str = "embedded",
    replaced: dict[str, str | None] | None = None,
) -> Iterator[tuple[dict[str, str], dict[str, str], dict[str, int], str]]:
    """The whole system with a gateway per mode (full, pass-through); yields their URLs, an API
    key for each (each its own user: a turn stores a memory, and a user's recall scans their
    own memories, so no mode is measured recalling from those another mode stored before it),
    each process's pid by name and the bus's URL. ``embedded``: SQLite files and in-process
    limits under the bench's folder; ``services``: PostgreSQL and Redis (``DATABASE_URL``/
    ``REDIS_URL``, else the local ones). ``replaced`` names the processes run in place of
    handlers (``soma run`` targets; None: not run at all): ``STANDINS``, ``FUSED``."""
    from soma import embedded

    models = work / "models.yaml"
    models.write_text(
        "models:\n"
        f"  - name: {MODEL}\n"
        "    deployments:\n"
        f"      - {{provider: openai, model: {MODEL}, api_key_env: BENCH_UPSTREAM_KEY,\n"
        f"         base_url: '{upstream_url}'}}\n"
    )
    nats_port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NATS_URL": f"nats://127.0.0.1:{nats_port}",
        "SOMA_DATA_DIR": str(work / "data"),
        "SOMA_MODELS_FILE": str(models),
        "BENCH_UPSTREAM_KEY": UPSTREAM_KEY,
        "SOMA_RATE_RPM": "0",
        "SOMA_RATE_TENANT_RPM": "0",
        "SOMA_RATE_TPM": "0",
        "SOMA_RATE_TENANT_TPM": "0",
    }
    if backend == "embedded":
        for name in ("DATABASE_URL", "REDIS_URL", "QDRANT_URL"):
            env.pop(name, None)
    else:
        for name, default in SERVICES.items():
            env[name] = os.environ.get(name) or default
    soma = [sys.executable, "-m", "soma.cli"]
    log = work / "soma.log"
    procs: list[subprocess.Popen[bytes]] = []
    pids: dict[str, int] = {"load generator": os.getpid()}
    with contextlib.ExitStack() as stack:
        nats_args = ["-a", "127.0.0.1", "-p", str(nats_port), "-js", "-sd", str(work / "nats")]
        nats = subprocess.Popen(
            [embedded.binary(), *nats_args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        stack.callback(stop, [nats])
        pids["nats-server"] = nats.pid
        stack.enter_context(isolated_services(env))
        stack.callback(stop, procs)  # runs first: nothing uses the bus or the store after
        out = stack.enter_context(log.open("wb"))
        for _ in range(200):
            if embedded.accepts(nats_port):
                break
            time.sleep(0.05)
        subprocess.run([*soma, "migrate"], env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        create_key = [sys.executable, "-c", "from soma.cli_keys import app; app()", "create"]
        keys = {
            mode: subprocess.run(
                [*create_key, "--tenant", "bench", "--user", f"bench-{mode}", "--role", "member"],
                env=env,
                cwd=ROOT,
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            for mode in modes
        }

        def run(name: str, extra: dict[str, str], label: str) -> None:
            proc = subprocess.Popen(
                [*soma, "run", name],
                env={**env, **extra},
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            procs.append(proc)
            pids[label] = proc.pid

        for name in HANDLERS:
            target = (replaced or {}).get(name, name)
            if target is not None:
                run(target, {}, name)
        urls = {}
        for mode in modes:
            port = free_port()
            extra = {"SOMA_HTTP_PORT": str(port), "SOMA_CHAT_PIPELINE": mode}
            run((replaced or {}).get("gateway") or "gateway", extra, f"gateway ({mode})")
            urls[mode] = f"http://127.0.0.1:{port}"
        for mode, url in urls.items():
            wait_http(f"{url}/readyz")
            first_completion(url, {"Authorization": f"Bearer {keys[mode]}"}, log)
        yield urls, keys, pids, env["NATS_URL"]


@contextlib.contextmanager
def litellm_proxy(upstream_url: str, work: Path) -> Iterator[str]:
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
    proc = subprocess.Popen(
        [binary, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=(work / "litellm.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health/liveliness", seconds=180)
        yield url
    finally:
        stop([proc])


# ── figures ─────────────────────────────────────────────────────────────────────────────


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User plus system CPU time of each process so far, from ``/proc`` (Linux); a process
    that is gone, or a system without ``/proc``, is left out."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    spent = {}
    for name, pid in pids.items():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
        spent[name] = (int(fields[11]) + int(fields[12])) / tick
    return spent


@dataclass
class Hop:
    """One kind of message of a chat turn: how long after its cause the server stored it."""

    cause: str
    message: str
    by: str  # the process that published it
    after_cause_ms: list[float] = field(default_factory=list)
    after_start_ms: list[float] = field(default_factory=list)


async def hops(bus: str, since: datetime.datetime) -> list[Hop]:
    """Every message stored in the commands and events streams since ``since``, grouped by chat
    turn (correlation id): for each, the time from its cause's stored time (causation id) to
    its own, by JetStream's own clock, so no observer sits on the path being measured. Plus,
    between turns, from one turn's answer (a saga's ``sagas.replied``, a direct turn's last
    command) to the next one's first message: the gateway's answer out, the client, and its
    next request in."""
    import nats
    from nats.js.api import ConsumerConfig, DeliverPolicy

    Stored = tuple[float, str, bool, dict[str, str]]  # time, kind, an event?, headers
    stored: list[Stored] = []
    nc = await nats.connect(bus)
    try:
        js = nc.jetstream()
        for stream, subjects in (("SOMA_CMD", "soma.cmd.>"), ("SOMA_EVT", "soma.evt.>")):
            last = (await js.stream_info(stream)).state.last_seq
            from_since = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=since
            )
            sub = await js.subscribe(
                subjects, stream=stream, ordered_consumer=True, config=from_since
            )
            while True:
                try:
                    msg = await sub.next_msg(timeout=2)
                except nats.errors.TimeoutError:
                    break
                # soma.<cmd|evt>.<tenant>.<service>.<name>: what it is, without the tenant
                kind = msg.subject.split(".", 3)[-1]
                at = msg.metadata.timestamp.timestamp()
                stored.append((at, kind, stream == "SOMA_EVT", dict(msg.headers or {})))
                if msg.metadata.sequence.stream >= last:
                    break
            await sub.unsubscribe()
    finally:
        await nc.close()
    by_id = {headers.get("Nats-Msg-Id"): (at, kind) for at, kind, _, headers in stored}
    turns: dict[str, list[Stored]] = {}
    for entry in sorted(stored, key=lambda e: e[0]):
        turns.setdefault(entry[3].get("Soma-Correlation-Id", ""), []).append(entry)
    table: dict[tuple[str, str], Hop] = {}
    answered: list[tuple[float, float]] = []  # each turn's start and its answer
    for messages in turns.values():
        # A saga's turn begins with its sagas.start and is answered by its sagas.replied; a
        # direct turn begins with the gateway's first command, and is answered once the
        # gateway has sent its last (its memory write, else the answer's check).
        saga = any(kind == "sagas.start" for _, kind, _, _ in messages)
        commands = [(at, kind) for at, kind, event, _ in messages if not event]
        if not commands or not (saga or commands[0][1] in ("policy.evaluate", "memory.recall")):
            continue
        begun = commands[0][0]
        seen: dict[str, int] = {}
        for at, kind, event, headers in messages:
            seen[kind] = seen.get(kind, 0) + 1
            cause = by_id.get(headers.get("Soma-Causation-Id"))
            if cause is None or kind == "sagas.started":
                continue  # the turn's own start; the runner's acknowledgement of it
            # An event comes from the service that names it; a command from the saga runner,
            # or in a direct turn from the gateway.
            by = kind.partition(".")[0] if event else "sagas" if saga else "gateway"
            # The answer's check is the turn's second policy.evaluate: told apart by its place.
            name = kind if seen[kind] == 1 else f"{kind} #{seen[kind]}"
            hop = table.setdefault((cause[1], name), Hop(cause[1], name, by))
            hop.after_cause_ms.append((at - cause[0]) * 1000)
            hop.after_start_ms.append((at - begun) * 1000)
        if saga:
            replies = [at for at, kind, _, _ in messages if kind == "sagas.replied"]
        else:
            replies = [commands[-1][0]] if len(commands) > 1 else []
        if replies:
            answered.append((begun, replies[0]))
    answered.sort()
    between = Hop("answered", "the next turn's start", "gateway, client")
    for (_, reply), (following, _) in itertools.pairwise(answered):
        between.after_cause_ms.append((following - reply) * 1000)
    rows = sorted(table.values(), key=lambda h: statistics.median(h.after_start_ms))
    return [*rows, between] if between.after_cause_ms else rows


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Cell:
    """One system at one number of clients."""

    clients: int
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    failed: int = 0
    warmed: int = 0  # requests of the warm-up, not measured
    # CPU time each process of the system spent per completed request (one client only).
    cpu_ms: dict[str, float] = field(default_factory=dict)
    # Where a full turn's time went, hop by hop (one client only): see ``hops``.
    hops: list[Hop] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies_ms) + self.failed + self.warmed

    def pool(self, other: Cell) -> None:
        """Take ``other``'s requests in, as one cell measured for both their times: its CPU per
        request averaged over both cells' requests, its hops added to the same hops'."""
        mine, theirs = self.requests, other.requests
        if other.cpu_ms and not self.cpu_ms:
            self.cpu_ms = dict(other.cpu_ms)
        elif other.cpu_ms:
            self.cpu_ms = {
                p: round((self.cpu_ms.get(p, 0.0) * mine + ms * theirs) / (mine + theirs), 2)
                for p, ms in other.cpu_ms.items()
            }
        by_name = {(h.cause, h.message): h for h in self.hops}
        for hop in other.hops:
            same = by_name.get((hop.cause, hop.message))
            if same is None:
                self.hops.append(hop)
            else:
                same.after_cause_ms += hop.after_cause_ms
                same.after_start_ms += hop.after_start_ms
        # In a turn's order, the time between turns last, as ``hops`` gives them.
        self.hops.sort(
            key=lambda h: (0, statistics.median(h.after_start_ms)) if h.after_start_ms else (1, 0)
        )
        self.seconds += other.seconds
        self.latencies_ms += other.latencies_ms
        self.failed += other.failed
        self.warmed += other.warmed

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 0.99) if self.latencies_ms else float("nan")


def freeze_heap() -> None:
    """Keep what the load generator holds now out of its later garbage collections.

    Its full collections walk every object it ever imported (about 60 ms on two cores) and
    would land in whichever system's tail was being measured; the processes measured do the
    same at startup (``kernel.processes.freeze_imports``).
    """
    gc.collect()
    gc.freeze()


async def load(url: str, key: str, clients: int, seconds: float, warmup: float) -> Cell:
    """``clients`` loops of sequential completions: a warm-up, then ``seconds`` measured.

    Each client has its own connection: one shared httpx pool serialises its callers and
    becomes the bottleneck from about 20 of them (encode/httpx#3215), whatever the server.
    """
    body = {"model": MODEL, "messages": PROMPT, "max_tokens": MAX_TOKENS}
    cell = Cell(clients)
    async with contextlib.AsyncExitStack() as stack:
        pool = [
            await stack.enter_async_context(
                httpx.AsyncClient(
                    headers={"Authorization": f"Bearer {key}"},
                    timeout=60,
                    limits=httpx.Limits(max_connections=1),
                )
            )
            for _ in range(clients)
        ]

        async def caller(client: httpx.AsyncClient, until: float, record: bool) -> None:
            while time.perf_counter() < until:
                started = time.perf_counter()
                response = await client.post(url, json=body)
                elapsed = (time.perf_counter() - started) * 1000
                if not record:
                    cell.warmed += 1
                    continue
                if response.status_code == 200:
                    cell.latencies_ms.append(elapsed)
                else:
                    cell.failed += 1

        until = time.perf_counter() + warmup
        await asyncio.gather(*(caller(c, until, False) for c in pool))
        freeze_heap()
        started = time.perf_counter()
        until = started + seconds
        await asyncio.gather(*(caller(c, until, True) for c in pool))
        cell.seconds = time.perf_counter() - started
    return cell


async def stream_load(url: str, key: str, seconds: float, warmup: float) -> Cell:
    """One client's sequential streamed completions; each latency is the time from sending the
    request to the first chunk carrying content (the stream is read to its end)."""
    body = {"model": MODEL, "messages": PROMPT, "max_tokens": MAX_TOKENS, "stream": True}
    cell = Cell(1)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:

        async def first_token() -> float | None:
            started = time.perf_counter()
            first: float | None = None
            async with client.stream("POST", url, json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    return None
                async for line in response.aiter_lines():
                    if first is not None or not line.startswith("data: {"):
                        continue
                    choices = json.loads(line[6:]).get("choices") or []
                    if any((c.get("delta") or {}).get("content") for c in choices):
                        first = (time.perf_counter() - started) * 1000
            return first

        until = time.perf_counter() + warmup
        while time.perf_counter() < until:
            await first_token()
        freeze_heap()
        started = time.perf_counter()
        until = started + seconds
        while time.perf_counter() < until:
            ttft = await first_token()
            if ttft is None:
                cell.failed += 1
            else:
                cell.latencies_ms.append(ttft)
        cell.seconds = time.perf_counter() - started
    return cell


def measure_ttft(name: str, url: str, key: str, seconds: float, warmup: float) -> Cell:
    cell = asyncio.run(stream_load(url, key, seconds, warmup))
    print(
        f"  {LABELS[name]:<18}   1 client, streamed: time to first token "
        f"p50 {cell.p50:7.2f} ms  p99 {cell.p99:7.2f} ms  failed {cell.failed}",
        flush=True,
    )
    return cell


def measure(
    name: str,
    url: str,
    key: str,
    clients: list[int],
    seconds: float,
    warmup: float,
    pids: dict[str, int] | None = None,
    bus: str | None = None,
) -> dict[int, Cell]:
    """Each number of clients in turn; with ``pids``, the one-client cell also records the CPU
    each process spent per request, over the warm-up's requests and the measured ones; with
    ``bus``, where the time of its chat turns went (``hops``)."""
    cells = {}
    for n in clients:
        before = cpu_seconds(pids) if pids and n == 1 else {}
        since = datetime.datetime.now(datetime.UTC)
        cell = asyncio.run(load(url, key, n, seconds, warmup))
        if before and pids and cell.latencies_ms:
            after = cpu_seconds(pids)
            requests = len(cell.latencies_ms) + cell.failed + cell.warmed
            cell.cpu_ms = {
                p: round((after[p] - before[p]) * 1000 / requests, 2) for p in before if p in after
            }
        # After the CPU reading: reading the hops back costs CPU too.
        if bus and n == 1 and name in ("full", "direct", "floor", "floor_direct"):
            cell.hops = asyncio.run(hops(bus, since))
        cells[n] = cell
        print(
            f"  {LABELS[name]:<18} {n:>3} clients: {cell.rps:8.1f} req/s  "
            f"p50 {cell.p50:7.2f} ms  p99 {cell.p99:7.2f} ms  failed {cell.failed}",
            flush=True,
        )
    return cells


def measure_system(
    up: str,
    tmp: Path,
    backend: str,
    replaced: dict[str, str | None] | None,
    names: dict[str, str],
    clients: list[int],
    seconds: float,
    warmup: float,
    label: str = "",
) -> tuple[dict[str, dict[int, Cell]], dict[str, Cell], str]:
    """One system on ``backend`` (``replaced``: see ``soma_system``): each gateway mode in
    ``names`` measured under its name, and streamed too unless it is a floor or the no-hop
    prototype (neither streams). Its cells, its streamed cells, and why it was skipped ("" if
    it was not)."""
    cells: dict[str, dict[int, Cell]] = {}
    ttft: dict[str, Cell] = {}
    print(f"soma ({backend}){label}: starting", flush=True)
    work = tmp / f"{next(iter(names.values()))}-{backend}"
    work.mkdir()
    try:
        with soma_system(up, work, tuple(names), backend, replaced) as (urls, keys, pids, bus):
            for mode, name in names.items():
                url, key = f"{urls[mode]}/v1/chat/completions", keys[mode]
                cells[name] = measure(name, url, key, clients, seconds, warmup, pids, bus)
                # The stand-ins do not stream, and the no-hop prototype is not built to.
                if not name.startswith("floor") and name != "nohop":
                    ttft[name] = measure_ttft(name, url, key, seconds, warmup)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"soma ({backend}){label}: skipped: {exc}", flush=True)
        return cells, ttft, str(exc)
    return cells, ttft, ""


# ── report ──────────────────────────────────────────────────────────────────────────────


def _num(value: float | None, digits: int = 2) -> float | None:
    return None if value is None or value != value else round(value, digits)


def _fmt(value: float | None, width: int, digits: int = 2) -> str:
    return f"{'-':>{width}}" if value is None or value != value else f"{value:{width}.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _met(value: float | None, goal: float, at_least: bool) -> bool | None:
    if value is None:
        return None
    return value >= goal if at_least else value <= goal


def report(
    title: str,
    results: dict[str, dict[int, Cell]],
    ttft: dict[str, Cell],
    clients: list[int],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Print one backend's table, ratios and goals; its JSON summary."""
    up = results["upstream"]

    def ttft_added(name: str) -> float | None:
        """Time to first token over the upstream's own, streamed, one client."""
        if name not in ttft or "upstream" not in ttft or not ttft[name].latencies_ms:
            return None
        return ttft[name].p50 - ttft["upstream"].p50

    def added(name: str, n: int, q: str) -> float | None:
        """Over the upstream's own latency: alone, with one client."""
        if name not in results or n not in results[name] or 1 not in up:
            return None
        value: float = getattr(results[name][n], q) - getattr(up[1], q)
        return value

    def rps(name: str, n: int) -> float | None:
        return results[name][n].rps if name in results and n in results[name] else None

    print()
    print(f"── {title} " + "─" * max(0, 88 - len(title)))
    print(
        f"{'system':<18} {'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'+p50 ms':>8} {'+p99 ms':>8} {'req/s vs litellm':>17} {'failed':>6}"
    )
    for name in SYSTEMS:
        for n in clients:
            if name not in results or n not in results[name]:
                print(f"{LABELS[name]:<18} {n:>7}  skipped")
                continue
            cell = results[name][n]
            extra_cols = (
                (_fmt(None, 8), _fmt(None, 8))
                if name == "upstream"
                else (_fmt(added(name, n, "p50"), 8), _fmt(added(name, n, "p99"), 8))
            )
            print(
                f"{LABELS[name]:<18} {n:>7} {cell.rps:9.1f} {cell.p50:8.2f} {cell.p99:8.2f} "
                f"{extra_cols[0]} {extra_cols[1]} "
                f"{_fmt(_ratio(cell.rps, rps('litellm', n)), 16)}x {cell.failed:>6}"
            )
    print("(+p50/+p99: over the upstream alone with one client, its own latency)")
    print()
    print(
        f"{'streamed, 1 client':<18} {'ttft p50':>9} {'ttft p99':>9} {'+ttft ms':>9} {'failed':>6}"
    )
    for name in SYSTEMS:
        if name.startswith("floor"):
            continue  # the stand-in model does not stream
        if name not in ttft:
            print(f"{LABELS[name]:<18}  skipped")
            continue
        cell = ttft[name]
        more = _fmt(None, 9) if name == "upstream" else _fmt(ttft_added(name), 9)
        print(f"{LABELS[name]:<18} {cell.p50:9.2f} {cell.p99:9.2f} {more} {cell.failed:>6}")
    print("(+ttft: time to first token over the upstream's own, p50)")

    full_p50, full_p99 = added("full", 1, "p50"), added("full", 1, "p99")
    direct_p50, direct_p99 = added("direct", 1, "p50"), added("direct", 1, "p99")
    pass_p50, lite_p50 = added("passthrough", 1, "p50"), added("litellm", 1, "p50")
    rps_ratio = _ratio(rps("passthrough", 10), rps("litellm", 10))
    latency_ratio = _ratio(pass_p50, lite_p50)
    goals = {
        "full_p50": (full_p50, GOAL_FULL_P50_MS, False, "full turn adds p50 <= 5 ms, 1 client"),
        "full_p99": (full_p99, GOAL_FULL_P99_MS, False, "full turn adds p99 <= 20 ms, 1 client"),
        "passthrough_rps": (
            rps_ratio,
            GOAL_RPS_RATIO,
            True,
            "pass-through req/s >= 2x litellm, 10 clients",
        ),
        "passthrough_latency": (
            latency_ratio,
            GOAL_LATENCY_RATIO,
            False,
            "pass-through adds <= 1/2 litellm's p50, 1 client",
        ),
        "passthrough_ttft": (
            _ratio(ttft_added("passthrough"), ttft_added("litellm")),
            GOAL_TTFT_PASSTHROUGH_RATIO,
            False,
            "pass-through adds <= 1/2 litellm's 1st-token time",
        ),
        "full_ttft": (
            _ratio(ttft_added("full"), ttft_added("litellm")),
            GOAL_TTFT_FULL_RATIO,
            False,
            "full turn adds <= litellm's 1st-token time",
        ),
        "full_below_litellm": (
            _ratio(full_p50, lite_p50),
            1.0,
            False,
            "full turn adds less than litellm's p50, 1 client",
        ),
        # The same goals for the full turn as the gateway runs it itself (SOMA_CHAT_PIPELINE=
        # direct): the same checks, recall, model call and memory write, no saga.
        "direct_p50": (direct_p50, GOAL_FULL_P50_MS, False, "direct turn adds p50 <= 5 ms"),
        "direct_p99": (direct_p99, GOAL_FULL_P99_MS, False, "direct turn adds p99 <= 20 ms"),
        "direct_below_litellm": (
            _ratio(direct_p50, lite_p50),
            1.0,
            False,
            "direct turn adds less than litellm's p50",
        ),
        "direct_ttft": (
            _ratio(ttft_added("direct"), ttft_added("litellm")),
            GOAL_TTFT_FULL_RATIO,
            False,
            "direct turn adds <= litellm's 1st-token time",
        ),
    }
    print()
    print("ratios vs litellm:")
    for name in ("full", "direct", "passthrough"):
        for n in clients:
            print(
                f"  {LABELS[name]:<18} {n:>3} clients: req/s "
                f"{_fmt(_ratio(rps(name, n), rps('litellm', n)), 6)}x   added p50 "
                f"{_fmt(_ratio(added(name, n, 'p50'), added('litellm', n, 'p50')), 6)}x   "
                f"added p99 "
                f"{_fmt(_ratio(added(name, n, 'p99'), added('litellm', n, 'p99')), 6)}x"
            )
    print()
    print("full turn req/s:")
    for name in ("full", "direct"):
        for n in (10, 50):
            print(
                f"  {LABELS[name]:<18} {n:>3} clients: {_fmt(rps(name, n), 8, 1)} req/s   litellm "
                f"{_fmt(rps('litellm', n), 8, 1)} req/s   "
                f"{_fmt(_ratio(rps(name, n), rps('litellm', n)), 6)}x"
            )
    cpu = {
        name: results[name][1].cpu_ms
        for name in ("full", "direct", "passthrough", "fused", "nohop", *FLOORS.values())
        if name in results and 1 in results[name]
    }
    if any(cpu.values()):
        print()
        print("CPU per request, 1 client, ms by process (the warm-up's requests included):")
        first = next(iter(cpu.values()))
        names = sorted({p for c in cpu.values() for p in c}, key=lambda p: -first.get(p, 0))
        print(f"  {'process':<22}" + "".join(f"{LABELS[n]:>20}" for n in cpu))
        for p in [*names, "total"]:
            row = [sum(c.values()) if p == "total" else c.get(p) for c in cpu.values()]
            print(f"  {p:<22}" + "".join(_fmt(v, 20) for v in row))
    turn_hops = {
        name: results[name][1].hops
        for name in ("full", "direct", "floor", "floor_direct")
        if 1 in results.get(name, {}) and results[name][1].hops
    }
    for name, table in turn_hops.items():
        print()
        print(f"where a turn's time goes, {LABELS[name]}, 1 client: each message stored after")
        print("its cause, ms (JetStream's stored times; 'after start': after the turn's first")
        print("command)")
        print(f"  {'cause':<18} {'message':<30} {'by':<16}   p50    p99  after start   turns")
        for h in table:
            at = statistics.median(h.after_start_ms) if h.after_start_ms else None
            print(
                f"  {h.cause:<18} {h.message:<30} {h.by:<16}"
                f"{_fmt(statistics.median(h.after_cause_ms), 6)} "
                f"{_fmt(percentile(h.after_cause_ms, 0.99), 6)} {_fmt(at, 12)} "
                f"{len(h.after_cause_ms):>7}"
            )
    print()
    print("goals:")
    verdicts = {
        name: _met(value, goal, at_least) for name, (value, goal, at_least, _) in goals.items()
    }
    for name, (value, _, _, text) in goals.items():
        word = {True: "MET ", False: "MISS", None: "n/a "}[verdicts[name]]
        print(f"  {word} {text:<50} {_fmt(value, 8)}")
    floor_p50, floor_p99 = added("floor", 1, "p50"), added("floor", 1, "p99")
    bare_p50, bare_p99 = added("floor_passthrough", 1, "p50"), added("floor_passthrough", 1, "p99")
    direct_floor_p50 = added("floor_direct", 1, "p50")
    direct_floor_p99 = added("floor_direct", 1, "p99")
    if floor_p50 is not None or bare_p50 is not None or direct_floor_p50 is not None:
        print()
        print("the shapes' floors, with policy, memory and the model answering at once, 1 client:")
        print(f"  full turn    +p50 {_fmt(floor_p50, 6)} ms  +p99 {_fmt(floor_p99, 6)} ms")
        direct_floor = f"+p50 {_fmt(direct_floor_p50, 6)} ms  +p99 {_fmt(direct_floor_p99, 6)} ms"
        print(f"  direct turn  {direct_floor}")
        print(f"  pass-through +p50 {_fmt(bare_p50, 6)} ms  +p99 {_fmt(bare_p99, 6)} ms")
    if "fused" in results and 1 in results["fused"]:
        print()
        print(
            "the candidate shape (bench/fused.py: the same checks, recall, model call and memory "
            "write in one process): "
            f"+p50 {_fmt(added('fused', 1, 'p50'), 0)} ms, +p99 {_fmt(added('fused', 1, 'p99'), 0)}"
            " ms, 1 client"
        )
    if "nohop" in results and 1 in results["nohop"]:
        print()
        print(
            "the shape with no hop before the answer (bench/nohop.py: the same turn in the "
            f"gateway's process): +p50 {_fmt(added('nohop', 1, 'p50'), 0)} ms, "
            f"+p99 {_fmt(added('nohop', 1, 'p99'), 0)} ms, 1 client"
        )
    print()

    def per_clients(name: str) -> dict[str, Any]:
        return {
            str(n): {
                "rps": _num(c.rps, 1),
                "p50_ms": _num(c.p50),
                "p99_ms": _num(c.p99),
                "added_p50_ms": _num(added(name, n, "p50")) if name != "upstream" else None,
                "added_p99_ms": _num(added(name, n, "p99")) if name != "upstream" else None,
                "failed": c.failed,
            }
            for n, c in results.get(name, {}).items()
        }

    summary = {
        "full_p50_ms": _num(full_p50),
        "full_p99_ms": _num(full_p99),
        "full_rps": _num(rps("full", 10), 1),
        "passthrough_p50_ms": _num(pass_p50),
        "passthrough_rps": _num(rps("passthrough", 10), 1),
        "litellm_p50_ms": _num(lite_p50),
        "litellm_rps": _num(rps("litellm", 10), 1),
        "rps_ratio_vs_litellm": _num(rps_ratio),
        "passthrough_p99_ms": _num(added("passthrough", 1, "p99")),
        "litellm_p99_ms": _num(added("litellm", 1, "p99")),
        "latency_ratio_vs_litellm": _num(latency_ratio),
        "full_rps_ratio_vs_litellm": _num(_ratio(rps("full", 10), rps("litellm", 10))),
        "upstream_p50_ms": _num(up[1].p50) if 1 in up else None,
        "upstream_p99_ms": _num(up[1].p99) if 1 in up else None,
        "full_rps_10": _num(rps("full", 10), 1),
        "full_rps_50": _num(rps("full", 50), 1),
        "floor_p50_ms": _num(floor_p50),
        "floor_p99_ms": _num(floor_p99),
        "floor_rps": _num(rps("floor", 10), 1),
        "direct_p50_ms": _num(direct_p50),
        "direct_p99_ms": _num(direct_p99),
        "direct_rps_10": _num(rps("direct", 10), 1),
        "direct_rps_50": _num(rps("direct", 50), 1),
        "ttft_direct_ms": _num(ttft_added("direct")),
        "fused_p50_ms": _num(added("fused", 1, "p50")),
        "fused_p99_ms": _num(added("fused", 1, "p99")),
        "fused_rps": _num(rps("fused", 10), 1),
        "ttft_fused_ms": _num(ttft_added("fused")),
        "nohop_p50_ms": _num(added("nohop", 1, "p50")),
        "nohop_p99_ms": _num(added("nohop", 1, "p99")),
        "nohop_rps": _num(rps("nohop", 10), 1),
        "ttft_nohop_ms": _num(ttft_added("nohop")),
        "floor_direct_p50_ms": _num(direct_floor_p50),
        "floor_direct_p99_ms": _num(direct_floor_p99),
        "floor_passthrough_p50_ms": _num(bare_p50),
        "floor_passthrough_p99_ms": _num(bare_p99),
        "litellm_rps_50": _num(rps("litellm", 50), 1),
        "ttft_full_ms": _num(ttft_added("full")),
        "ttft_passthrough_ms": _num(ttft_added("passthrough")),
        "litellm_ttft_ms": _num(ttft_added("litellm")),
        "upstream_ttft_ms": _num(ttft["upstream"].p50) if "upstream" in ttft else None,
        "goals_met": verdicts,
        "cpu_ms_per_turn": {
            name: results[name][1].cpu_ms
            for name in ("full", "direct", "passthrough", "fused", "nohop", *FLOORS.values())
            if 1 in results.get(name, {}) and results[name][1].cpu_ms
        },
        "turn_hops_ms": {
            name: [
                {
                    "cause": h.cause,
                    "message": h.message,
                    "by": h.by,
                    "p50": _num(statistics.median(h.after_cause_ms)),
                    "p99": _num(percentile(h.after_cause_ms, 0.99)),
                    "turns": len(h.after_cause_ms),
                }
                for h in table
            ]
            for name, table in turn_hops.items()
        },
        **extra,
        "cells": {name: per_clients(name) for name in SYSTEMS},
    }
    return summary


K = TypeVar("K")


@dataclass
class Round:
    """Every cell of one pass over the chosen systems, and why any was skipped."""

    common: dict[str, dict[int, Cell]] = field(default_factory=dict)  # upstream, litellm
    common_ttft: dict[str, Cell] = field(default_factory=dict)
    ours: dict[str, dict[str, dict[int, Cell]]] = field(default_factory=dict)  # by backend
    ours_ttft: dict[str, dict[str, Cell]] = field(default_factory=dict)
    skipped: dict[str, dict[str, str]] = field(default_factory=dict)  # by backend


def one_round(
    up: str,
    tmp: Path,
    chosen: set[str],
    modes: tuple[str, ...],
    backends: list[str],
    clients: list[int],
    seconds: float,
    warmup: float,
) -> Round:
    """The upstream alone, each backend's systems, then LiteLLM, each measured in turn."""
    measured = Round(
        ours={b: {} for b in backends},
        ours_ttft={b: {} for b in backends},
        skipped={b: {} for b in backends},
    )
    common, common_ttft = measured.common, measured.common_ttft
    print("upstream alone", flush=True)
    alone = f"{up}/chat/completions"
    common["upstream"] = measure("upstream", alone, UPSTREAM_KEY, clients, seconds, warmup)
    common_ttft["upstream"] = measure_ttft("upstream", alone, UPSTREAM_KEY, seconds, warmup)

    def upstream_again() -> None:
        """The upstream's one-client cell once more, pooled into the first (see above)."""
        print("upstream alone, again", flush=True)
        again = measure("upstream", alone, UPSTREAM_KEY, [1], seconds, warmup)
        common["upstream"][1].pool(again[1])

    for backend in backends:
        # The system itself, the one-process shape, the shapes' floors: (label, the
        # processes in place of handlers, each gateway mode measured under which name).
        systems: list[tuple[str, dict[str, str | None] | None, dict[str, str]]] = []
        if modes:
            systems.append(("", None, {m: m for m in modes}))
        else:
            measured.skipped[backend]["soma_skipped"] = "not selected (--systems)"
        if "fused" in chosen:
            systems.append((", one process for the turn", FUSED, {"passthrough": "fused"}))
        if "nohop" in chosen:
            systems.append((", no hop before the answer", NOHOP, {"passthrough": "nohop"}))
        if "floor" in chosen:
            floors = {m: FLOORS[m] for m in modes or ("full",)}
            systems.append((", its shapes' floors", STANDINS, floors))
        for label, replaced, names in systems:
            cells, ttft, skipped = measure_system(
                up, tmp, backend, replaced, names, clients, seconds, warmup, label
            )
            measured.ours[backend].update(cells)
            measured.ours_ttft[backend].update(ttft)
            if skipped and not label:
                measured.skipped[backend]["soma_skipped"] = skipped
            upstream_again()
    work = tmp / "litellm"
    work.mkdir()
    try:
        if "litellm" not in chosen:
            raise RuntimeError("not selected (--systems)")
        print("litellm: starting", flush=True)
        with litellm_proxy(up, work) as url:
            url = f"{url}/v1/chat/completions"
            common["litellm"] = measure("litellm", url, LITELLM_KEY, clients, seconds, warmup)
            common_ttft["litellm"] = measure_ttft("litellm", url, LITELLM_KEY, seconds, warmup)
    except RuntimeError as exc:
        print(f"litellm: skipped: {exc}", flush=True)
        for backend in backends:
            measured.skipped[backend]["litellm_skipped"] = str(exc)
    return measured


def pool_each(into: dict[K, Cell], more: dict[K, Cell]) -> None:
    """Another round's cells pooled into the same systems' (or clients') cells of this one."""
    for key, cell in more.items():
        if key in into:
            into[key].pool(cell)
        else:
            into[key] = cell


def pool_cells(into: dict[str, dict[int, Cell]], more: dict[str, dict[int, Cell]]) -> None:
    """Each system's cells of another round pooled into this one's, clients by clients."""
    for name, cells in more.items():
        pool_each(into.setdefault(name, {}), cells)


def main(args: argparse.Namespace) -> None:
    clients = sorted({int(c) for c in args.clients.split(",")})
    if 1 not in clients or 10 not in clients:
        raise SystemExit("--clients must include 1 and 10: the summary is read there")
    if args.rounds < 1:
        raise SystemExit("--rounds must be 1 or more")
    warmup = min(2.0, args.seconds / 4)
    chosen = {s.strip() for s in args.systems.split(",") if s.strip()}
    if unknown := chosen - set(SYSTEMS):
        raise SystemExit(f"--systems: unknown {', '.join(sorted(unknown))}; known: {SYSTEMS}")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or (unknown := set(backends) - set(BACKENDS)):
        raise SystemExit(f"--backends: unknown {', '.join(sorted(unknown))}; known: {BACKENDS}")
    modes = tuple(m for m in ("full", "direct", "passthrough") if m in chosen)
    common: dict[str, dict[int, Cell]] = {}
    common_ttft: dict[str, Cell] = {}
    ours: dict[str, dict[str, dict[int, Cell]]] = {b: {} for b in backends}
    ours_ttft: dict[str, dict[str, Cell]] = {b: {} for b in backends}
    extra: dict[str, dict[str, Any]] = {
        b: {
            "seconds_per_cell": args.seconds,
            "rounds": args.rounds,
            "database": "postgresql" if b == "services" else "sqlite",
            "backend": b,
        }
        for b in backends
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="soma-bench-gw-") as tmp, upstream() as up:
        for number in range(1, args.rounds + 1):
            if args.rounds > 1:
                print(f"round {number} of {args.rounds}", flush=True)
            work = Path(tmp) / f"round-{number}"
            work.mkdir()
            measured = one_round(up, work, chosen, modes, backends, clients, args.seconds, warmup)
            pool_cells(common, measured.common)
            pool_each(common_ttft, measured.common_ttft)
            for backend in backends:
                pool_cells(ours[backend], measured.ours[backend])
                pool_each(ours_ttft[backend], measured.ours_ttft[backend])
                extra[backend].update(measured.skipped[backend])
    total = round(time.monotonic() - started, 1)
    titles = {
        "embedded": "embedded: SQLite file per area, in-process limits",
        "services": "services: PostgreSQL + Redis",
    }
    summaries = {}
    for backend in backends:
        extra[backend]["total_seconds"] = total
        summaries[backend] = report(
            titles[backend],
            {**common, **ours[backend]},
            {**common_ttft, **ours_ttft[backend]},
            clients,
            extra[backend],
        )
    # The first backend's figures under the keys every earlier run used; the others nested.
    first, *others = backends
    print(json.dumps({**summaries[first], **{b: summaries[b] for b in others}}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--clients", default="1,10,50", help="concurrent clients per cell")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per cell")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="times the whole sequence runs; each cell pools its rounds, so on a machine whose "
        "speed drifts every system is measured across the same stretch of time",
    )
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help="systems to measure, comma-separated (the upstream alone is always measured)",
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="Soma's stores, comma-separated: embedded (SQLite, in-process limits) and services "
        "(PostgreSQL + Redis: DATABASE_URL and REDIS_URL, else the local servers); the first "
        "one's figures are the JSON's top-level keys, the others nested under their names",
    )
    parsed = parser.parse_args()
    if parsed.upstream:
        serve_upstream(parsed.upstream)
    else:
        main(parsed)
