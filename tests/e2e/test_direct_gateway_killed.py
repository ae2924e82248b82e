"""A direct turn whose gateway is killed with -9 mid-turn still ends in SOMA_EVT: the saga
runner, which reads every event, publishes the end the gateway never did once the turn's
deadline passes (``SOMA_TURN_DEADLINE``, above the gateway's ``SOMA_CHAT_TIMEOUT``). Every
process is an OS process; the model is a scripted server speaking OpenAI's protocol."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

import msgspec
import openai
import pytest
from nats.js.errors import NotFoundError

from bus.connection import connect
from schemas.catalogue import STREAMS
from schemas.chat import ChatTurnFinished
from schemas.common import FailureCode
from schemas.envelope import Envelope
from tests.e2e.chat_system import MODEL, TENANT, ChatSystem, chat_system
from tests.e2e.trail import ask, events_of
from tests.slm.scripted import Reply

PROCESSES = ["identity", "policy", "memory", "slm", "sagas"]
CONSUMERS = [*PROCESSES, "sagas-events"]
CHAT_TIMEOUT = 3.0
DEADLINE = 4.0


@pytest.fixture(scope="module")
async def system(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ChatSystem]:
    env = {"SOMA_CHAT_TIMEOUT": str(CHAT_TIMEOUT), "SOMA_TURN_DEADLINE": str(DEADLINE)}
    data = tmp_path_factory.mktemp("direct-killed")
    async with chat_system("direct", PROCESSES, CONSUMERS, data, env) as system:
        yield system


async def test_a_turn_whose_gateway_is_killed_mid_turn_ends_failed_in_its_trail(
    system: ChatSystem,
) -> None:
    system.script.then(Reply(text="Nobody is left to hear this.", delay=1.0))
    call = asyncio.ensure_future(
        system.client().chat.completions.create(model=MODEL, messages=ask("Are you there?"))
    )
    async with asyncio.timeout(30):
        while not system.script.requests:
            await asyncio.sleep(0.02)
    system.kill("gateway")
    with pytest.raises(openai.APIConnectionError):
        await call
    turn = await _turn_with_a_model_call(system)
    async with asyncio.timeout(DEADLINE + 20):
        while "gateway.turn_finished" not in (trail := await _kinds(system, turn)):
            await asyncio.sleep(0.5)
    # The answer never reached the caller, so nothing of it was stored as a memory.
    assert trail == Counter(
        {
            "policy.evaluated": 1,
            "memory.recalled": 1,
            "slm.completed": 1,
            "gateway.turn_finished": 1,
        }
    )
    [end] = [
        m
        for kind, m in await events_of(system.nats, TENANT, turn)
        if kind == "gateway.turn_finished"
    ]
    finished = msgspec.json.decode(end.data, type=ChatTurnFinished)
    assert (finished.state, finished.error_code) == ("failed", FailureCode.UNAVAILABLE)


async def _turn_with_a_model_call(system: ChatSystem) -> str:
    """The turn whose model call the killed gateway had sent: the only one in this module."""
    nc = await connect(system.nats.url, "killed-gateway-turn")
    try:
        async with asyncio.timeout(20):
            while True:
                with contextlib.suppress(NotFoundError):
                    last = await nc.jetstream().get_last_msg(
                        STREAMS["evt"], f"soma.evt.{TENANT}.slm.completed"
                    )
                    return Envelope.from_headers(last.headers).correlation_id
                await asyncio.sleep(0.2)
    finally:
        await nc.close()


async def _kinds(system: ChatSystem, turn: str) -> Counter[str]:
    events = await events_of(system.nats, TENANT, turn)
    return Counter(kind for kind, _ in events if kind != "policy.constitution_changed")
