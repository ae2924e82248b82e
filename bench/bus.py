"""How much the bus runtime costs over raw nats-py, on one machine, in one run.

    python bench/bus.py                 # 20 000 messages, its own nats-server from the wheel
    python bench/bus.py --messages 5000
    NATS_URL=nats://127.0.0.1:4222 python bench/bus.py   # a server with no Soma system on it

Four throughput figures on the same server:
- raw: a nats-py pull consumer fetching batches of 64 and acking each message;
- ours: ``bus.runtime`` consuming the same number of policy commands with a handler that returns
  None (decode envelope + payload, route, trace span, metrics, ack) — the like-for-like figure;
- ours with reply: the same handler returning an event, which the runtime publishes and waits
  for JetStream to acknowledge before acking the command (at-least-once needs that order);
- FastStream: the same handler (returning the event) written as a FastStream subscriber through
  ``bus.faststream`` — the cost of writing a handler for convenience rather than for speed;
plus three latencies, sequential:
- first, the machine's own: one byte to another process over loopback TCP and back (two wake-ups,
  no broker, no Python beyond the calls), below which no hop through nats-server can go;
- ``bus.publish.publish`` (publish + JetStream ack);
- the round trip through a handler in another process (this file, ``--serve-handler``, on the
  event loop ``soma run`` uses): from publishing a policy command, as the system's own callers
  do, to its event arriving on a core subscription — the floor of one hop of a chain, before
  any work is done.
Throughput runs from the first message in hand to the last one handled. The last line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nats.aio.client import Client  # noqa: E402
from nats.aio.msg import Msg  # noqa: E402
from nats.js import JetStreamContext  # noqa: E402
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig  # noqa: E402
from nats.js.errors import NotFoundError  # noqa: E402

from bus import runtime  # noqa: E402
from bus.connection import connect  # noqa: E402
from bus.publish import encode, envelope_for, publish  # noqa: E402
from bus.service import Connected, Service  # noqa: E402
from bus.streams import provision  # noqa: E402
from kernel.settings import Settings  # noqa: E402
from schemas.catalogue import STREAMS  # noqa: E402
from schemas.envelope import CORRELATION_ID, Envelope  # noqa: E402
from schemas.policy import PolicyEvaluate, PolicyEvaluated  # noqa: E402
from soma import embedded  # noqa: E402
from soma.terminal import quiet_disconnect  # noqa: E402

TENANT = "bench"
RAW_STREAM = "BENCH_RAW"
BATCH = 64
ROUND_TRIP_WARMUP = 200


def start_server(store: Path) -> subprocess.Popen[bytes]:
    port = embedded.free_port()
    proc = subprocess.Popen(
        [embedded.binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        if embedded.accepts(port):
            break
        time.sleep(0.05)
    os.environ["NATS_URL"] = f"nats://127.0.0.1:{port}"
    return proc


async def preload(
    nc: Client,
    js: JetStreamContext,
    stream: str,
    subject: str,
    count: int,
    body: Callable[[int], tuple[bytes, dict[str, str] | None]],
) -> None:
    """Put ``count`` messages in ``stream`` fast (core publishes), then wait until all are kept."""
    start = (await js.stream_info(stream)).state.messages
    for i in range(count):
        data, headers = body(i)
        await nc.publish(subject, data, headers=headers)
        if i % 2000 == 0:
            await nc.flush()
    await nc.flush()
    for _ in range(1200):
        if (await js.stream_info(stream)).state.messages >= start + count:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{stream} did not receive {count} messages within 60s")


async def raw(nc: Client, js: JetStreamContext, count: int) -> float:
    await js.add_stream(StreamConfig(name=RAW_STREAM, subjects=["bench.raw"]))
    await preload(nc, js, RAW_STREAM, "bench.raw", count, lambda i: (b'{"n":%d}' % i, None))
    sub = await js.pull_subscribe(
        "bench.raw",
        "raw",
        stream=RAW_STREAM,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=10_000),
    )
    seen = 0
    started = 0.0
    while seen < count:
        batch = await sub.fetch(BATCH, timeout=5)
        if not started:
            started = time.perf_counter()
        for msg in batch:
            json.loads(msg.data)
            await msg.ack()
            seen += 1
    elapsed = time.perf_counter() - started
    await js.delete_stream(RAW_STREAM)
    return count / elapsed


def _command(i: int) -> tuple[bytes, dict[str, str]]:
    cmd = PolicyEvaluate(stage="prompt", text=f"message {i}")
    return encode(cmd), envelope_for(cmd, tenant=TENANT).to_headers()


async def ours(js: JetStreamContext, settings: Settings, count: int, reply: bool) -> float:
    done = asyncio.Event()
    marks: list[float] = []
    handled = 0

    async def evaluate(cmd: PolicyEvaluate, env: Envelope) -> PolicyEvaluated | None:
        nonlocal handled
        handled += 1
        if handled == 1:
            marks.append(time.perf_counter())
        if handled == count:
            marks.append(time.perf_counter())
            done.set()
        if reply:
            return PolicyEvaluated(decision_id=env.message_id, decision="allow", stage=cmd.stage)
        return None

    running = await runtime.start(Service("policy", {PolicyEvaluate: evaluate}), settings)
    try:
        await asyncio.wait_for(done.wait(), timeout=max(120, count / 50))
    finally:
        with quiet_disconnect():
            await running.stop()
    await js.delete_consumer(STREAMS["cmd"], "policy")
    return count / (marks[1] - marks[0])


async def faststream(js: JetStreamContext, settings: Settings, count: int) -> float:
    from bus.faststream import SomaFastStream

    done = asyncio.Event()
    marks: list[float] = []
    handled = 0
    service = SomaFastStream("policy", concurrency=settings.fetch_batch)

    @service.command(PolicyEvaluate)
    async def evaluate(cmd: PolicyEvaluate) -> PolicyEvaluated:
        nonlocal handled
        handled += 1
        if handled == 1:
            marks.append(time.perf_counter())
        if handled == count:
            marks.append(time.perf_counter())
            done.set()
        return PolicyEvaluated(decision_id=cmd.text, decision="allow", stage=cmd.stage)

    await service.start(settings)
    try:
        await asyncio.wait_for(done.wait(), timeout=max(120, count / 50))
    finally:
        with quiet_disconnect():
            await service.stop()
    await js.delete_consumer(STREAMS["cmd"], "policy-evaluate")
    return count / (marks[1] - marks[0])


def p50_p99(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), statistics.quantiles(values, n=100)[98]


def _echo(listener: socket.socket) -> None:
    peer, _ = listener.accept()
    peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while data := peer.recv(16):
        peer.sendall(data)


def loopback(count: int) -> list[float]:
    """Round trips of one byte to an echoing process over loopback TCP, in µs."""
    listener = socket.create_server(("127.0.0.1", 0))
    echo = multiprocessing.get_context("fork").Process(target=_echo, args=(listener,))
    echo.start()
    times = []
    try:
        with socket.create_connection(listener.getsockname()) as conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(count + ROUND_TRIP_WARMUP):
                started = time.perf_counter()
                conn.sendall(b"x")
                conn.recv(16)
                if i >= ROUND_TRIP_WARMUP:
                    times.append((time.perf_counter() - started) * 1e6)
    finally:
        listener.close()
        echo.join(10)
    return times


async def publish_latency(bus: Connected, count: int) -> list[float]:
    times = []
    for i in range(count):
        cmd = PolicyEvaluate(stage="prompt", text=f"latency {i}")
        env = envelope_for(cmd, tenant=TENANT)
        started = time.perf_counter()
        await publish(bus, cmd, env)
        times.append((time.perf_counter() - started) * 1000)
    return times


async def evaluate_at_once(cmd: PolicyEvaluate, env: Envelope) -> PolicyEvaluated:
    return PolicyEvaluated(decision_id=env.message_id, decision="allow", stage=cmd.stage)


def serve_handler() -> None:
    """The handler side of the round trip: a process of its own, on the event loop and with the
    imports frozen as ``soma run`` has them, so the figure holds both hops between processes."""
    from kernel.processes import freeze_imports, loop_factory, until_stopped

    async def serve() -> None:
        service = Service("policy", {PolicyEvaluate: evaluate_at_once})
        running = await runtime.start(service, Settings())
        print("ready", flush=True)  # its consumer is pulling: the bench may publish
        try:
            await asyncio.Event().wait()  # until SIGTERM cancels it
        finally:
            with quiet_disconnect():
                await running.stop()

    freeze_imports()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(until_stopped(serve()))


async def start_handler() -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve-handler", cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
    except TimeoutError:
        line = b""
    if line.strip() != b"ready":
        await stop_handler(proc)
        raise RuntimeError(f"the handler process did not start (exit code {proc.returncode})")
    return proc


async def stop_handler(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), timeout=15)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def round_trip(bus: Connected, count: int) -> list[float]:
    """From a command's publish (JetStream ack included) to its event's arrival here, handled in
    the other process. An event ends a round trip only with its command's correlation id."""
    arrivals: asyncio.Queue[tuple[float, str | None]] = asyncio.Queue()

    async def arrived(msg: Msg) -> None:
        arrivals.put_nowait((time.perf_counter(), (msg.headers or {}).get(CORRELATION_ID)))

    sub = await bus.nc.subscribe(f"soma.evt.{TENANT}.policy.>", cb=arrived)
    await bus.nc.flush()
    proc = await start_handler()
    times: list[float] = []
    try:
        for i in range(ROUND_TRIP_WARMUP + count):
            cmd = PolicyEvaluate(stage="prompt", text=f"round trip {i}")
            env = envelope_for(cmd, tenant=TENANT)
            started = time.perf_counter()
            await publish(bus, cmd, env)
            async with asyncio.timeout(10):
                while True:
                    at, correlation = await arrivals.get()
                    if correlation == env.correlation_id:
                        break
            if i >= ROUND_TRIP_WARMUP:
                times.append((at - started) * 1000)
    finally:
        await stop_handler(proc)
        await sub.unsubscribe()
        with contextlib.suppress(NotFoundError):
            await bus.js.delete_consumer(STREAMS["cmd"], "policy")
    return times


async def guard_shared_server(js: JetStreamContext) -> None:
    try:
        consumers = await js.consumers_info(STREAMS["cmd"])
    except NotFoundError:
        return
    if consumers:
        names = ", ".join(c.name for c in consumers)
        raise SystemExit(
            f"NATS_URL names a server where consumers run on {STREAMS['cmd']} ({names}); the bench "
            "would compete with them. Unset NATS_URL to let it start its own nats-server."
        )


async def clean_shared_server(js: JetStreamContext) -> None:
    for stream, subject in (
        (STREAMS["cmd"], f"soma.cmd.{TENANT}.>"),
        (STREAMS["evt"], f"soma.evt.{TENANT}.>"),
    ):
        await js.purge_stream(stream, subject=subject)


async def main(count: int, latency_count: int, round_trips: int) -> dict[str, Any]:
    # First, before this process holds a client: the echo is a fork of it.
    print(f"loopback TCP between two processes, {latency_count} round trips …", flush=True)
    echo_p50, echo_p99 = p50_p99(loopback(latency_count))
    print(
        f"  p50 {echo_p50:.0f} µs, p99 {echo_p99:.0f} µs (the machine's floor for two "
        "wake-ups; a hop through nats-server takes at least four)",
        flush=True,
    )
    settings = Settings()
    nc = await connect(settings.nats_url or embedded.DEFAULT_URL, "bench")
    js = nc.jetstream()
    await guard_shared_server(js)
    await provision(js, settings)
    try:
        print(f"raw nats-py: pull fetch {BATCH} + ack, {count} messages …", flush=True)
        raw_rate = await raw(nc, js, count)
        print(f"  {raw_rate:,.0f} msgs/s", flush=True)

        await preload(nc, js, STREAMS["cmd"], f"soma.cmd.{TENANT}.policy.evaluate", count, _command)
        print(f"bus.runtime, handler returns None, {count} messages …", flush=True)
        ours_rate = await ours(js, settings, count, reply=False)
        print(f"  {ours_rate:,.0f} msgs/s ({ours_rate / raw_rate:.0%} of raw)", flush=True)

        print(f"bus.runtime, handler returns a reply event, {count} messages …", flush=True)
        reply_rate = await ours(js, settings, count, reply=True)
        print(f"  {reply_rate:,.0f} msgs/s (each reply published and acknowledged)", flush=True)

        # Its own durable reads the same commands from the start of the stream.
        print(f"bus.faststream, handler returns a reply event, {count} messages …", flush=True)
        fs_rate = await faststream(js, settings, count)
        print(f"  {fs_rate:,.0f} msgs/s ({fs_rate / reply_rate:.0%} of the runtime's)", flush=True)

        print(f"bus.publish.publish, sequential, {latency_count} messages …", flush=True)
        times = await publish_latency(Connected(nc, js), latency_count)
        p50, p99 = p50_p99(times)
        print(f"  p50 {p50:.3f} ms, p99 {p99:.3f} ms", flush=True)

        # Last, on an emptied stream: the handler's new durable reads it from the start.
        await clean_shared_server(js)
        print(f"round trip through a handler, sequential, {round_trips} commands …", flush=True)
        trips = await round_trip(Connected(nc, js), round_trips)
        trip_p50, trip_p99 = p50_p99(trips)
        print(
            f"  round trip through a handler in another process, sequential: "
            f"p50 {trip_p50:.2f} ms, p99 {trip_p99:.2f} ms",
            flush=True,
        )
        print(
            "  (the floor of one hop: every arrow of a chain, command to handler or event back, "
            "costs about half of it before any work is done)",
            flush=True,
        )
    finally:
        await clean_shared_server(js)
        with quiet_disconnect():
            await nc.close()
    return {
        "raw_msgs_per_s": round(raw_rate),
        "ours_msgs_per_s": round(ours_rate),
        "ratio": round(ours_rate / raw_rate, 3),
        "loopback_p50_us": round(echo_p50),
        "loopback_p99_us": round(echo_p99),
        "publish_p50_ms": round(p50, 3),
        "publish_p99_ms": round(p99, 3),
        "ours_with_reply_msgs_per_s": round(reply_rate),
        "faststream_with_reply_msgs_per_s": round(fs_rate),
        "round_trip_p50_ms": round(trip_p50, 3),
        "round_trip_p99_ms": round(trip_p99, 3),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--latency-messages", type=int, default=2_000)
    parser.add_argument("--round-trips", type=int, default=2_000)
    parser.add_argument("--serve-handler", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_handler:
        serve_handler()
        sys.exit()
    server = None
    with tempfile.TemporaryDirectory(prefix="soma-bench-") as store:
        if not os.environ.get("NATS_URL"):
            server = start_server(Path(store))
            print(f"nats-server from the wheel on {os.environ['NATS_URL']}", flush=True)
        try:
            result = asyncio.run(main(args.messages, args.latency_messages, args.round_trips))
        finally:
            if server is not None:
                server.terminate()
                server.wait(10)
    print(json.dumps(result))
