"""bus.faststream on a real bus: a FastStream handler fails, retries and dead-letters exactly as
a built-in one does, and a command published twice is answered once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from bus.connection import connect
from bus.faststream import SomaEnvelope, SomaFastStream
from bus.publish import envelope_for, publish
from bus.service import Connected
from kernel.settings import Settings
from schemas import catalogue, extensions
from schemas.base import Message
from schemas.catalogue import STREAMS
from soma.terminal import quiet_disconnect
from tests.servers import NatsServer, nats_server


class ProbeRun(Message):
    """Run the probe; ``fail`` makes its handler raise."""

    label: str
    fail: bool = False


class ProbeDone(Message):
    label: str
    tenant: str


MESSAGES = [
    extensions.command("probe", "run", ProbeRun),
    extensions.event("probe", "done", ProbeDone),
]
attempts: dict[str, int] = {}


async def run_probe(cmd: ProbeRun, env: SomaEnvelope) -> ProbeDone:
    attempts[cmd.label] = attempts.get(cmd.label, 0) + 1
    if cmd.fail:
        raise RuntimeError("the probe broke")
    return ProbeDone(label=cmd.label, tenant=env.tenant)


@pytest.fixture(scope="module")
def registered() -> Iterator[None]:
    names, types = dict(catalogue.CATALOGUE), dict(catalogue._BY_TYPE)
    extensions.register(MESSAGES)
    yield
    for table, saved in ((catalogue.CATALOGUE, names), (catalogue._BY_TYPE, types)):
        table.clear()
        table.update(saved)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def nats() -> Iterator[NatsServer]:
    with nats_server() as server:
        yield server


@pytest.fixture(scope="module")
async def bus(
    nats: NatsServer, registered: None, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Connected]:
    settings = Settings(
        NATS_URL=nats.url,
        SOMA_DATA_DIR=str(tmp_path_factory.mktemp("probe")),
        SOMA_MAX_DELIVER=2,
        SOMA_RETRY_INITIAL=0.1,
        SOMA_ACK_WAIT=5,
    )
    service = SomaFastStream("probe", concurrency=4)
    service.command(ProbeRun)(run_probe)  # its messages are registered by now
    await service.start(settings)
    nc = await connect(nats.url, "probe-test")
    yield Connected(nc, nc.jetstream())
    with quiet_disconnect():
        await nc.close()
        await service.stop()


async def _last(js: JetStreamContext, stream: str, subject: str) -> tuple[dict, bytes, int]:
    deadline = time.monotonic() + 20
    while True:
        try:
            msg = await js.get_last_msg(stream, subject)
            return dict(msg.headers or {}), msg.data or b"", msg.seq
        except NotFoundError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_a_failing_faststream_handler_is_retried_then_dead_lettered(
    bus: Connected,
) -> None:
    cmd = ProbeRun(label="broken", fail=True)
    await publish(bus, cmd, envelope_for(cmd, tenant="retries"))
    headers, body, _ = await _last(bus.js, STREAMS["dlq"], "soma.dlq.retries.probe")
    assert headers["Soma-Dlq-Reason"] == "failed 2 times, last: RuntimeError: the probe broke"
    assert b'"broken"' in body
    assert attempts["broken"] == 2
    _, failed, _ = await _last(bus.js, STREAMS["evt"], "soma.evt.retries.probe.failed")
    assert b'"retryable":true' in failed


async def test_a_command_published_twice_is_handled_and_answered_once(
    bus: Connected,
) -> None:
    cmd = ProbeRun(label="twice")
    env = envelope_for(cmd, tenant="twice")
    await publish(bus, cmd, env)
    await publish(bus, cmd, env)  # the same message id: the server drops it
    _, body, seq = await _last(bus.js, STREAMS["evt"], "soma.evt.twice.probe.done")
    assert body == b'{"label":"twice","tenant":"twice"}'
    info = await bus.js.stream_info(STREAMS["evt"], subjects_filter="soma.evt.twice.>")
    assert info.state.subjects == {"soma.evt.twice.probe.done": 1}
    assert attempts["twice"] == 1
