"""`soma trace`: one correlation id's commands and events, in stream order, with their gaps."""

from __future__ import annotations

import asyncio
import itertools
import json

import msgspec

from bus.publish import Published, envelope_for, publish
from bus.service import Connected
from schemas.catalogue import STREAMS
from schemas.envelope import sender_of, turn_step_id
from schemas.memory import MemoryRecall
from schemas.policy import PolicyEvaluate, PolicyEvaluated
from schemas.sagas import SagaStart
from tests.cli.conftest import Soma

TURN = "turn0123456789abcdef"


async def _send(
    bus: Connected,
    message: msgspec.Struct,
    correlation: str = TURN,
    message_id: str | None = None,
    tenant: str = "acme",
) -> Published:
    env = envelope_for(message, tenant=tenant, correlation_id=correlation, message_id=message_id)
    return await publish(bus, message, env)


async def _turn(bus: Connected, pause: float = 0.05) -> list[Published]:
    """A turn's beginning, as the gateway, the saga runner and policy would publish it, with
    another turn's messages in between."""
    sent = [await _send(bus, SagaStart(saga_type="chat_turn", input={}), message_id=f"{TURN}.s")]
    await _send(bus, PolicyEvaluate(stage="prompt", text="other"), correlation="another")
    await asyncio.sleep(pause)
    sent.append(
        await _send(bus, PolicyEvaluate(stage="prompt", text="hi"), message_id=f"{TURN}.1.2.0.1.g")
    )
    sent.append(await _send(bus, MemoryRecall(query="hi"), message_id=f"{TURN}.1.2.1.1.g"))
    await asyncio.sleep(pause)
    sent.append(
        await _send(
            bus,
            PolicyEvaluated(decision_id="d", decision="allow", stage="prompt"),
            message_id=f"{TURN}.1.2.0.1.g.reply",
        )
    )
    return sent


def _lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


async def test_the_story_holds_every_command_and_event_of_the_id_in_stream_order(
    bus: Connected, soma: Soma
) -> None:
    sent = await _turn(bus)
    result = await soma("trace", TURN, "--json")
    assert result.exit_code == 0, result.stderr
    lines = _lines(result.stdout)
    assert [line["message_id"] for line in lines] == [p.message_id for p in sent]
    assert [line["kind"] for line in lines] == ["cmd", "cmd", "cmd", "evt"]
    assert [line["index"] for line in lines] == [1, 2, 3, 4]
    assert lines[3]["stream"] == STREAMS["evt"] and lines[3]["payload"]["decision"] == "allow"


async def test_each_message_is_timed_from_the_first_and_from_the_one_before(
    bus: Connected, soma: Soma
) -> None:
    await _turn(bus, pause=0.2)
    lines = _lines((await soma("trace", TURN, "--json")).stdout)
    assert lines[0]["since_first_ms"] == 0 and lines[0]["gap_ms"] == 0
    assert lines[1]["gap_ms"] >= 150  # the pause before the saga's commands
    assert lines[3]["gap_ms"] >= 150
    for before, line in itertools.pairwise(lines):
        assert abs(line["since_first_ms"] - before["since_first_ms"] - line["gap_ms"]) < 0.01


async def test_the_publisher_is_the_caller_the_saga_runner_or_the_emitting_service(
    bus: Connected, soma: Soma
) -> None:
    await _turn(bus)
    lines = _lines((await soma("trace", TURN, "--json")).stdout)
    assert [(line["publisher"], line["service"]) for line in lines] == [
        ("caller", "sagas"),
        ("sagas", "policy"),
        ("sagas", "memory"),
        ("policy", "policy"),
    ]


async def test_the_steps_of_a_turn_the_gateway_runs_itself_are_the_gateways_commands(
    bus: Connected, soma: Soma
) -> None:
    direct = "direct0123456789abcdef"
    await _send(
        bus, PolicyEvaluate(stage="prompt", text="hi"), direct, turn_step_id(direct, "prompt")
    )
    await _send(bus, MemoryRecall(query="hi"), direct, turn_step_id(direct, "recall"))
    await _send(bus, PolicyEvaluate(stage="answer", text="hello"), direct, f"{direct}.answer")
    lines = _lines((await soma("trace", direct, "--json")).stdout)
    assert [(line["publisher"], line["service"]) for line in lines] == [
        ("gateway", "policy"),
        ("gateway", "memory"),
        ("gateway", "policy"),
    ]


def test_only_a_turns_own_steps_are_told_apart_as_the_gateways() -> None:
    assert sender_of("t1.prompt", "t1") == "gateway"
    assert sender_of("t1.prompt", "t2") == "caller"  # named like another turn's step
    assert sender_of("t1.start", "t1") == "caller"  # not a step the gateway runs
    assert sender_of("t1.1.2.0.1.g", "t1") == "sagas"
    assert sender_of("0123abcd", "0123abcd") == "caller"


async def test_the_readable_story_is_a_table_of_types_hops_and_gaps(
    bus: Connected, soma: Soma
) -> None:
    await _turn(bus)
    result = await soma("trace", TURN)
    assert result.exit_code == 0, result.stderr
    assert f"correlation {TURN}: 4 messages over" in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 4
    assert "sagas.start" in rows[0] and "caller → sagas" in rows[0]
    assert "policy.evaluate" in rows[1] and "sagas → policy" in rows[1]
    assert "memory.recall" in rows[2] and "sagas → memory" in rows[2]
    assert "policy.evaluated" in rows[3]


async def test_a_tenant_narrows_the_search_to_its_subjects(bus: Connected, soma: Soma) -> None:
    await _send(bus, PolicyEvaluate(stage="prompt", text="a"), tenant="acme")
    await _send(bus, PolicyEvaluate(stage="prompt", text="g"), tenant="globex")
    lines = _lines((await soma("trace", TURN, "--json", "--tenant", "globex")).stdout)
    assert [line["payload"]["text"] for line in lines] == ["g"]


async def test_an_unknown_id_says_where_it_looked_and_fails(bus: Connected, soma: Soma) -> None:
    await _turn(bus)
    result = await soma("trace", "no-such-turn")
    assert result.exit_code == 1
    assert "no command or event with correlation id 'no-such-turn'" in result.stderr
    assert STREAMS["cmd"] in result.stderr and STREAMS["evt"] in result.stderr
    assert result.stdout == ""


async def test_messages_older_than_since_are_left_out(bus: Connected, soma: Soma) -> None:
    await _send(bus, PolicyEvaluate(stage="prompt", text="old"))
    await asyncio.sleep(1.5)
    await _send(bus, PolicyEvaluate(stage="prompt", text="new"))
    lines = _lines((await soma("trace", TURN, "--json", "--since", "1s")).stdout)
    assert [line["payload"]["text"] for line in lines] == ["new"]
