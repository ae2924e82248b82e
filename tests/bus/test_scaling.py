"""Replicas of one handler share a durable consumer: the work is split, never doubled."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from bus.publish import envelope_for, publish
from bus.request import Requester
from schemas.catalogue import STREAMS
from schemas.policy import PolicyEvaluate
from tests.servers import NatsServer

ROOT = Path(__file__).resolve().parents[2]


def start_worker(url: str, record: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.bus.worker", url, str(record)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


async def both_pulling(js, durable: str, replicas: int) -> None:  # type: ignore[no-untyped-def]
    """Until every replica has a pull request waiting: one started late would find no work."""
    async with asyncio.timeout(60):
        while True:
            try:
                info = await js.consumer_info(STREAMS["cmd"], durable)
            except Exception:
                info = None
            if info is not None and (info.num_waiting or 0) >= replicas:
                return
            await asyncio.sleep(0.1)


async def test_two_processes_of_one_handler_handle_every_message_exactly_once(
    bus, js, fresh_nats: NatsServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    records = [tmp_path / "a.log", tmp_path / "b.log"]
    workers = [start_worker(fresh_nats.url, r) for r in records]
    try:
        await both_pulling(js, "policy", len(workers))
        sent = set()
        for i in range(300):
            cmd = PolicyEvaluate(stage="prompt", text=str(i))
            env = envelope_for(cmd, tenant="acme")
            await publish(bus, cmd, env)
            sent.add(env.message_id)

        async def done() -> bool:
            info = await js.stream_info(STREAMS["evt"])
            return info.state.messages >= len(sent)

        async with asyncio.timeout(60):
            while not await done():
                await asyncio.sleep(0.1)
        handled = [r.read_text().split() if r.exists() else [] for r in records]
        assert all(handled), "both replicas took a share of the work"
        assert sorted(handled[0] + handled[1]) == sorted(sent)
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            assert w.wait(15) == 0


async def test_request_returns_the_reply_with_the_same_correlation_id(
    bus, fresh_nats: NatsServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    worker = start_worker(fresh_nats.url, tmp_path / "w.log")
    requester = Requester(bus.nc, bus.js)
    await requester.start()
    try:
        replies = await asyncio.gather(
            *(
                requester.request(
                    PolicyEvaluate(stage="prompt", text=str(i)),
                    tenant="acme",
                    expect={"policy.evaluated"},
                    timeout=20,
                )
                for i in range(20)
            )
        )
        for published, reply in replies:
            assert reply.envelope.correlation_id == published.message_id
            assert reply.envelope.causation_id == published.message_id
            assert reply.payload.decision_id == published.message_id
    finally:
        await requester.close()
        worker.send_signal(signal.SIGTERM)
        worker.wait(15)
