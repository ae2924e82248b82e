"""`soma tail`: live and from a point in time, filtered, readable or JSON lines."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import msgspec

from bus.publish import Published, envelope_for, publish
from bus.service import Connected
from schemas.catalogue import STREAMS
from schemas.memory import MemoryRecalled
from schemas.policy import PolicyEvaluate, PolicyEvaluated
from soma import tail
from tests.cli.conftest import Soma, start_soma


async def _event(
    bus: Connected, tenant: str, message: msgspec.Struct, correlation: str | None = None
) -> Published:
    return await publish(
        bus, message, envelope_for(message, tenant=tenant, correlation_id=correlation)
    )


def _allow(text: str = "x") -> PolicyEvaluated:
    return PolicyEvaluated(decision_id=text, decision="allow", stage="prompt")


def _json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


async def test_a_live_tail_prints_events_published_after_it_started(
    bus: Connected, env: dict[str, str]
) -> None:
    await _event(bus, "acme", _allow("before"))
    running = start_soma("tail", "--json", "--limit", "2", env=env)
    try:
        await asyncio.to_thread(running.out.wait_for, r"tailing soma\.evt\.> on SOMA_EVT")
        first = await _event(bus, "acme", _allow("one"))
        second = await _event(bus, "globex", _allow("two"))
        assert await asyncio.to_thread(running.finish) == 0
    finally:
        running.proc.kill()
    lines = [json.loads(line) for line in running.out.lines if line.startswith("{")]
    assert [line["envelope"]["message_id"] for line in lines] == [
        first.message_id,
        second.message_id,
    ]
    assert lines[0]["payload"]["decision_id"] == "one"
    assert lines[0]["schema"] == "policy.evaluated"
    assert lines[0]["subject"] == "soma.evt.acme.policy.evaluated"
    assert lines[1]["envelope"]["tenant"] == "globex"
    assert lines[0]["seq"] == first.seq and lines[0]["stream"] == STREAMS["evt"]


async def test_since_a_time_replays_only_what_came_after_it(bus: Connected, soma: Soma) -> None:
    await _event(bus, "acme", _allow("old"))
    await asyncio.sleep(0.3)
    cut = datetime.now(UTC).isoformat()
    await asyncio.sleep(0.3)
    newer = await _event(bus, "acme", _allow("new"))
    result = await soma("tail", "--since", cut, "--json", "--until-idle", "0.5")
    assert result.exit_code == 0, result.stderr
    assert [r["envelope"]["message_id"] for r in _json_lines(result.stdout)] == [newer.message_id]


async def test_since_a_duration_reaches_back_that_far(bus: Connected, soma: Soma) -> None:
    await _event(bus, "acme", _allow("a"))
    await _event(bus, "acme", _allow("b"))
    result = await soma("tail", "--since", "1h", "--json", "--until-idle", "0.5")
    assert [r["payload"]["decision_id"] for r in _json_lines(result.stdout)] == ["a", "b"]


async def test_from_seq_starts_at_that_sequence(bus: Connected, soma: Soma) -> None:
    for name in ("a", "b", "c"):
        await _event(bus, "acme", _allow(name))
    result = await soma("tail", "--from-seq", "2", "--json", "--until-idle", "0.5")
    assert [r["seq"] for r in _json_lines(result.stdout)] == [2, 3]


async def test_tenant_filter_shows_only_that_tenant(bus: Connected, soma: Soma) -> None:
    await _event(bus, "acme", _allow("a"))
    await _event(bus, "globex", _allow("g"))
    await _event(bus, "acme", _allow("a2"))
    result = await soma("tail", "--all", "--tenant", "acme", "--json", "--until-idle", "0.5")
    assert [r["payload"]["decision_id"] for r in _json_lines(result.stdout)] == ["a", "a2"]


async def test_correlation_filter_matches_a_full_id_or_its_prefix(
    bus: Connected, soma: Soma
) -> None:
    await _event(bus, "acme", _allow("mine"), correlation="run-42-abcdef")
    await _event(bus, "acme", _allow("other"), correlation="run-77")
    full = await soma(
        "tail", "--all", "--correlation", "run-42-abcdef", "--json", "--until-idle", "0.5"
    )
    prefix = await soma("tail", "--all", "-c", "run-42", "--json", "--until-idle", "0.5")
    assert [r["payload"]["decision_id"] for r in _json_lines(full.stdout)] == ["mine"]
    assert [r["payload"]["decision_id"] for r in _json_lines(prefix.stdout)] == ["mine"]


async def test_type_filter_takes_a_glob(bus: Connected, soma: Soma) -> None:
    await _event(bus, "acme", _allow("p"))
    await _event(bus, "acme", MemoryRecalled(items=[]))
    exact = await soma(
        "tail", "--all", "--type", "memory.recalled", "--json", "--until-idle", "0.5"
    )
    glob = await soma("tail", "--all", "--type", "policy.*", "--json", "--until-idle", "0.5")
    assert [r["schema"] for r in _json_lines(exact.stdout)] == ["memory.recalled"]
    assert [r["schema"] for r in _json_lines(glob.stdout)] == ["policy.evaluated"]


async def test_commands_can_be_tailed_while_a_handler_durable_exists(
    bus: Connected, soma: Soma
) -> None:
    from nats.js.api import AckPolicy, ConsumerConfig

    await bus.js.add_consumer(
        STREAMS["cmd"],
        ConsumerConfig(
            durable_name="policy",
            ack_policy=AckPolicy.EXPLICIT,
            filter_subject="soma.cmd.*.policy.>",
        ),
    )
    cmd = PolicyEvaluate(stage="prompt", text="hi")
    await publish(bus, cmd, envelope_for(cmd, tenant="acme"))
    result = await soma("tail", "soma.cmd.>", "--all", "--json", "--until-idle", "0.5")
    assert [r["schema"] for r in _json_lines(result.stdout)] == ["policy.evaluate"]
    durable = await bus.js.consumer_info(STREAMS["cmd"], "policy")
    assert durable.num_pending == 1, "tailing took nothing from the handler's consumer"


async def test_readable_lines_show_time_type_tenant_ids_and_a_preview(
    bus: Connected, soma: Soma
) -> None:
    sent = await _event(bus, "acme", _allow("visible"), correlation="corr-12345678-rest")
    result = await soma("tail", "--all", "--until-idle", "0.5")
    line = result.stdout.strip().splitlines()[-1]
    assert "policy.evaluated" in line and "acme" in line
    assert "c:corr-123" in line and f"m:{sent.message_id[:8]}" in line
    assert '"decision_id":"visible"' in line


async def test_limit_stops_after_that_many_messages(bus: Connected, soma: Soma) -> None:
    for name in ("a", "b", "c"):
        await _event(bus, "acme", _allow(name))
    result = await soma("tail", "--all", "--limit", "2", "--json")
    assert len(_json_lines(result.stdout)) == 2


async def test_a_pattern_outside_the_streams_is_a_usage_error(soma: Soma) -> None:
    result = await soma("tail", "soma.>")
    assert result.exit_code == 2
    assert "soma.evt.>" in result.stderr


async def test_two_start_points_at_once_are_a_usage_error(soma: Soma) -> None:
    result = await soma("tail", "--all", "--since", "5m")
    assert result.exit_code == 2
    assert "--since and --all" in result.stderr


def test_since_parses_durations_and_local_and_zoned_times() -> None:
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    assert tail.parse_since("10m", now) == datetime(2026, 11, 25, 11, 50, tzinfo=UTC)
    assert tail.parse_since("1h30m", now) == datetime(2026, 11, 25, 10, 30, tzinfo=UTC)
    assert tail.parse_since("2026-11-25T10:00:00Z") == datetime(2026, 11, 25, 10, tzinfo=UTC)
    local = datetime(2026, 11, 25, 10, 0).astimezone()
    assert tail.parse_since("2026-11-25T10:00:00") == local.astimezone(UTC)


def test_a_tenant_narrows_the_subject_the_server_filters_on() -> None:
    assert tail.narrow_to_tenant("soma.evt.>", "acme") == "soma.evt.acme.>"
    assert tail.narrow_to_tenant("soma.cmd.*.policy.>", "acme") == "soma.cmd.acme.policy.>"
    assert tail.narrow_to_tenant("soma.evt.globex.>", "acme") == "soma.evt.globex.>"
