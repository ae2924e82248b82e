"""`soma dlq`: list, show, replay and purge what a real handler dead-lettered."""

from __future__ import annotations

import asyncio
import json

from nats.js import JetStreamContext

from bus import runtime
from bus.service import Service
from schemas.catalogue import STREAMS
from schemas.envelope import Envelope
from schemas.policy import PolicyEvaluate, PolicyEvaluated
from soma.settings import Settings
from tests.cli.conftest import Soma
from tests.servers import NatsServer


async def _dead_letters(js: JetStreamContext, url: str, texts: list[str]) -> None:
    """A policy handler receives commands whose bodies break the schema: each is dead-lettered."""

    async def evaluate(cmd: PolicyEvaluate, env: Envelope) -> PolicyEvaluated:
        return PolicyEvaluated(decision_id=env.message_id, decision="allow", stage=cmd.stage)

    settings = Settings(NATS_URL=url, SOMA_MAX_DELIVER=2, SOMA_RETRY_INITIAL=0.05)
    running = await runtime.start(Service("policy", {PolicyEvaluate: evaluate}), settings)
    try:
        for i, text in enumerate(texts):
            env = Envelope(
                message_id=f"bad-{i}",
                correlation_id=f"c-{i}",
                tenant="acme",
                schema="policy.evaluate",
            )
            body = json.dumps({"stage": "nowhere", "text": text}).encode()
            await js.publish("soma.cmd.acme.policy.evaluate", body, headers=env.to_headers())
        for _ in range(200):
            if (await js.stream_info(STREAMS["dlq"])).state.messages >= len(texts):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the handler did not dead-letter the invalid commands")
    finally:
        await running.stop()


async def test_ls_lists_each_dead_letter_with_its_reason(
    js: JetStreamContext, fresh_nats: NatsServer, soma: Soma
) -> None:
    await _dead_letters(js, fresh_nats.url, ["one", "two"])
    result = await soma("dlq", "ls", "--json")
    assert result.exit_code == 0, result.stderr
    letters = [json.loads(line) for line in result.stdout.splitlines()]
    assert [letter["payload"]["text"] for letter in letters] == ["one", "two"]
    assert all("schema-invalid policy.evaluate" in letter["reason"] for letter in letters)
    assert {letter["subject"] for letter in letters} == {"soma.cmd.acme.policy.evaluate"}
    assert {letter["service"] for letter in letters} == {"policy"}
    table = await soma("dlq", "ls")
    assert "2 dead letters" in table.stdout and "schema-invalid" in table.stdout


async def test_show_prints_the_reason_headers_and_body(
    js: JetStreamContext, fresh_nats: NatsServer, soma: Soma
) -> None:
    await _dead_letters(js, fresh_nats.url, ["inspect me"])
    result = await soma("dlq", "show", "1")
    assert result.exit_code == 0, result.stderr
    assert "schema-invalid" in result.stdout
    assert "Soma-Correlation-Id: c-0" in result.stdout
    assert '"inspect me"' in result.stdout


async def test_show_of_a_missing_sequence_says_how_to_find_one(
    js: JetStreamContext, soma: Soma
) -> None:
    result = await soma("dlq", "show", "99")
    assert result.exit_code == 1
    assert "soma dlq ls" in result.stderr


async def test_replay_sends_the_original_back_with_a_fresh_id_and_removes_it(
    js: JetStreamContext, fresh_nats: NatsServer, soma: Soma
) -> None:
    await _dead_letters(js, fresh_nats.url, ["again"])
    before = (await js.stream_info(STREAMS["cmd"])).state.last_seq
    result = await soma("dlq", "replay", "1")
    assert result.exit_code == 0, result.stderr
    assert "replayed 1 to soma.cmd.acme.policy.evaluate" in result.stdout
    resent = await js.get_msg(STREAMS["cmd"], before + 1)
    assert json.loads(resent.data or b"")["text"] == "again"
    assert (resent.headers or {})["Nats-Msg-Id"] == "bad-0-replay1"
    assert (resent.headers or {})["Soma-Correlation-Id"] == "c-0"
    assert (await js.stream_info(STREAMS["dlq"])).state.messages == 0


async def test_replay_all_replays_every_dead_letter(
    js: JetStreamContext, fresh_nats: NatsServer, soma: Soma
) -> None:
    await _dead_letters(js, fresh_nats.url, ["a", "b"])
    result = await soma("dlq", "replay", "--all")
    assert result.exit_code == 0, result.stderr
    assert "2 dead letters replayed" in result.stdout
    assert (await js.stream_info(STREAMS["dlq"])).state.messages == 0


async def test_purge_without_yes_refuses_when_it_cannot_ask(
    js: JetStreamContext, fresh_nats: NatsServer, soma: Soma
) -> None:
    await _dead_letters(js, fresh_nats.url, ["keep"])
    result = await soma("dlq", "purge")
    assert result.exit_code == 2
    assert "--yes" in result.stderr
    assert (await js.stream_info(STREAMS["dlq"])).state.messages == 1


async def test_purge_yes_deletes_every_dead_letter(
    js: JetStreamContext, fresh_nats: NatsServer, soma: Soma
) -> None:
    await _dead_letters(js, fresh_nats.url, ["x", "y"])
    result = await soma("dlq", "purge", "--yes")
    assert result.exit_code == 0, result.stderr
    assert "purged 2 dead letters" in result.stdout
    assert (await soma("dlq", "ls")).stdout.strip() == "no dead letters"
