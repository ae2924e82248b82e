"""Delivery semantics of the bus runtime, on a real nats-server."""

from __future__ import annotations

import asyncio
from collections import Counter

import msgspec
import pytest

from bus import deadletter, runtime
from bus.publish import envelope_for, publish
from bus.service import Service
from kernel.settings import Settings
from schemas.catalogue import STREAMS
from schemas.envelope import Envelope
from schemas.policy import PolicyEvaluate, PolicyEvaluated


def evaluated(cmd: PolicyEvaluate) -> PolicyEvaluated:
    return PolicyEvaluated(decision_id=cmd.text, decision="allow", stage=cmd.stage)


async def eventually(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)


async def stream_count(js, stream: str, subject: str | None = None) -> int:  # type: ignore[no-untyped-def]
    info = await js.stream_info(stream, subjects_filter=subject) if subject else None
    if subject:
        return sum((info.state.subjects or {}).values()) if info else 0
    return (await js.stream_info(stream)).state.messages


async def test_publishing_the_same_message_id_twice_stores_it_once(bus, js) -> None:  # type: ignore[no-untyped-def]
    cmd = PolicyEvaluate(stage="prompt", text="hello")
    env = envelope_for(cmd, tenant="acme")
    first = await publish(bus, cmd, env)
    second = await publish(bus, cmd, env)
    assert not first.duplicate
    assert second.duplicate
    assert second.seq == first.seq
    assert await stream_count(js, STREAMS["cmd"]) == 1


async def test_a_handler_failing_twice_then_succeeding_is_handled_and_acked_once(
    bus, js, settings: Settings
) -> None:  # type: ignore[no-untyped-def]
    attempts: Counter[str] = Counter()

    async def flaky(cmd: PolicyEvaluate, env: Envelope) -> PolicyEvaluated:
        attempts[env.message_id] += 1
        if attempts[env.message_id] <= 2:
            raise ConnectionError("upstream not ready")
        return evaluated(cmd)

    running = await runtime.start(Service("policy", {PolicyEvaluate: flaky}), settings)
    try:
        cmd = PolicyEvaluate(stage="prompt", text="retry-me")
        env = envelope_for(cmd, tenant="acme")
        await publish(bus, cmd, env)

        async def replied() -> bool:
            return await stream_count(js, STREAMS["evt"], "soma.evt.acme.policy.evaluated") == 1

        await eventually(replied)

        async def acked() -> bool:  # the reply is published before the command is acked
            consumer = await js.consumer_info(STREAMS["cmd"], "policy")
            return consumer.num_ack_pending == 0 and consumer.num_pending == 0

        await eventually(acked)
        consumer = await js.consumer_info(STREAMS["cmd"], "policy")
        assert attempts[env.message_id] == 3
        assert consumer.delivered.stream_seq == consumer.ack_floor.stream_seq
        assert await stream_count(js, STREAMS["dlq"]) == 0
    finally:
        await running.stop()


async def test_a_poison_message_goes_to_dead_letters_with_its_reason_and_others_still_flow(
    bus, js, settings: Settings
) -> None:  # type: ignore[no-untyped-def]
    async def handler(cmd: PolicyEvaluate, env: Envelope) -> PolicyEvaluated:
        if cmd.text == "poison":
            raise ValueError("cannot digest this")
        return evaluated(cmd)

    running = await runtime.start(Service("policy", {PolicyEvaluate: handler}), settings)
    try:
        poison = PolicyEvaluate(stage="prompt", text="poison")
        await publish(bus, poison, envelope_for(poison, tenant="acme"))

        async def dead_lettered() -> bool:
            return await stream_count(js, STREAMS["dlq"]) == 1

        await eventually(dead_lettered)
        for i in range(5):
            good = PolicyEvaluate(stage="prompt", text=f"good-{i}")
            await publish(bus, good, envelope_for(good, tenant="acme"))

        async def all_served() -> bool:
            return await stream_count(js, STREAMS["evt"], "soma.evt.acme.policy.evaluated") == 5

        await eventually(all_served)
        (letter,) = await deadletter.list_all(js)
        assert letter.subject == "soma.cmd.acme.policy.evaluate"
        assert "failed 3 times" in letter.reason and "cannot digest this" in letter.reason
        assert letter.deliveries == settings.max_deliver
        assert msgspec.json.decode(letter.body)["text"] == "poison"
        assert letter.headers["Soma-Tenant"] == "acme"
        assert await stream_count(js, STREAMS["evt"], "soma.evt.acme.policy.failed") == 1
    finally:
        await running.stop()


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        ({"Nats-Msg-Id": "m1"}, b"{}", "undecodable envelope"),
        (None, b"not json", "schema-invalid"),
        (None, b'{"stage": "prompt", "surprise": 1}', "schema-invalid"),
    ],
    ids=["missing-envelope", "not-json", "unknown-field"],
)
async def test_undecodable_or_invalid_messages_are_dead_lettered_at_once(
    js, settings: Settings, headers, body, reason
) -> None:  # type: ignore[no-untyped-def]
    calls = 0

    async def handler(cmd: PolicyEvaluate, env: Envelope) -> PolicyEvaluated:
        nonlocal calls
        calls += 1
        return evaluated(cmd)

    running = await runtime.start(Service("policy", {PolicyEvaluate: handler}), settings)
    try:
        if headers is None:
            headers = envelope_for(PolicyEvaluate(stage="prompt"), tenant="acme").to_headers()
        await js.publish("soma.cmd.acme.policy.evaluate", body, headers=headers)

        async def dead_lettered() -> bool:
            return await stream_count(js, STREAMS["dlq"]) == 1

        await eventually(dead_lettered)
        (letter,) = await deadletter.list_all(js)
        assert reason in letter.reason
        assert letter.deliveries == 1
        assert letter.body == body
        assert calls == 0
    finally:
        await running.stop()


async def test_a_replayed_dead_letter_is_handled(bus, js, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    healthy = False

    async def handler(cmd: PolicyEvaluate, env: Envelope) -> PolicyEvaluated:
        if not healthy:
            raise RuntimeError("dependency down")
        return evaluated(cmd)

    running = await runtime.start(Service("policy", {PolicyEvaluate: handler}), settings)
    try:
        cmd = PolicyEvaluate(stage="prompt", text="later")
        await publish(bus, cmd, envelope_for(cmd, tenant="acme"))

        async def dead_lettered() -> bool:
            return await stream_count(js, STREAMS["dlq"]) == 1

        await eventually(dead_lettered)
        healthy = True
        (letter,) = await deadletter.list_all(js)
        assert await deadletter.replay(js, letter.seq) == "soma.cmd.acme.policy.evaluate"

        async def handled() -> bool:
            return await stream_count(js, STREAMS["evt"], "soma.evt.acme.policy.evaluated") == 1

        await eventually(handled)
        assert await stream_count(js, STREAMS["dlq"]) == 0
    finally:
        await running.stop()


async def test_a_handler_slower_than_ack_wait_is_kept_alive_by_heartbeats(
    bus, js, settings: Settings
) -> None:  # type: ignore[no-untyped-def]
    calls = 0

    async def slow(cmd: PolicyEvaluate, env: Envelope) -> PolicyEvaluated:
        nonlocal calls
        calls += 1
        await asyncio.sleep(2.5)
        return evaluated(cmd)

    short = settings.model_copy(update={"ack_wait": 1.0})
    running = await runtime.start(Service("policy", {PolicyEvaluate: slow}), short)
    try:
        cmd = PolicyEvaluate(stage="prompt", text="slow")
        await publish(bus, cmd, envelope_for(cmd, tenant="acme"))

        async def replied() -> bool:
            return await stream_count(js, STREAMS["evt"], "soma.evt.acme.policy.evaluated") == 1

        await eventually(replied)
        assert calls == 1, "no redelivery while the handler was still working"
    finally:
        await running.stop()
