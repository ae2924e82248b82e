"""`soma dlq`: list, show, replay and purge what a real handler dead-lettered."""

from __future__ import annotations

import asyncio
import json

from nats.js import JetStreamContext

from bus import runtime
from bus.service import Service
from kernel.settings import Settings
from schemas.catalogue import STREAMS
from schemas.envelope import Envelope
from schemas.policy import PolicyEvaluate, PolicyEvaluated
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
    assert {letter["origin"] for letter in letters} == {"policy"}
    assert all(letter["suspicions"] == [] for letter in letters)
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


async def _plant(js: JetStreamContext, dlq_subject: str, original: str, claims: str) -> None:
    """A dead letter written by hand (not by a handler): headers say whatever the writer likes."""
    env = Envelope(message_id="forged", correlation_id="c-f", tenant="acme", schema="x.y")
    headers = {
        **env.to_headers(),
        "Soma-Dlq-Reason": "handler failed",
        "Soma-Dlq-Subject": original,
        "Soma-Dlq-Consumer": claims,
        "Soma-Dlq-Deliveries": "5",
        "Soma-Dlq-Stream-Seq": "1",
    }
    await js.publish(dlq_subject, b'{"role": "admin"}', headers=headers)


async def _commands(js: JetStreamContext) -> int:
    return (await js.stream_info(STREAMS["cmd"])).state.messages


async def test_replay_refuses_a_command_dead_lettered_by_a_service_it_was_not_addressed_to(
    js: JetStreamContext, soma: Soma
) -> None:
    await _plant(js, "soma.dlq.acme.policy", "soma.cmd.acme.identity.create_key", "policy")
    result = await soma("dlq", "replay", "1")
    assert result.exit_code == 1
    assert "refused to replay dead letter 1" in result.stderr
    assert "addressed to 'identity'" in result.stderr
    assert await _commands(js) == 0
    assert (await js.stream_info(STREAMS["dlq"])).state.messages == 1


async def test_replay_refuses_a_dead_letter_whose_headers_claim_another_origin(
    js: JetStreamContext, soma: Soma
) -> None:
    await _plant(js, "soma.dlq.acme.policy", "soma.cmd.acme.identity.create_key", "identity")
    result = await soma("dlq", "replay", "1")
    assert result.exit_code == 1
    assert "headers claim it came from 'identity'" in result.stderr
    assert await _commands(js) == 0


async def test_replay_refuses_an_event_that_is_not_in_the_events_stream(
    js: JetStreamContext, soma: Soma
) -> None:
    await _plant(js, "soma.dlq.acme.sagas", "soma.evt.acme.identity.key_created", "sagas")
    result = await soma("dlq", "replay", "1")
    assert result.exit_code == 1
    assert "not in SOMA_EVT" in result.stderr
    assert (await js.stream_info(STREAMS["evt"])).state.messages == 0


async def test_replay_all_replays_the_genuine_and_refuses_the_forged(
    js: JetStreamContext, fresh_nats: NatsServer, soma: Soma
) -> None:
    await _dead_letters(js, fresh_nats.url, ["genuine"])
    await _plant(js, "soma.dlq.acme.policy", "soma.cmd.acme.identity.create_key", "identity")
    before = await _commands(js)
    result = await soma("dlq", "replay", "--all")
    assert result.exit_code == 1
    assert "1 dead letters replayed, 1 refused" in result.stdout
    assert await _commands(js) == before + 1
    last = await js.get_msg(STREAMS["cmd"], (await js.stream_info(STREAMS["cmd"])).state.last_seq)
    assert last.subject == "soma.cmd.acme.policy.evaluate"


async def test_replay_force_sends_a_forged_dead_letter_and_warns(
    js: JetStreamContext, soma: Soma
) -> None:
    await _plant(js, "soma.dlq.acme.policy", "soma.cmd.acme.identity.create_key", "identity")
    result = await soma("dlq", "replay", "1", "--force")
    assert result.exit_code == 0, result.stderr
    assert "WARNING" in result.stderr and "(--force)" in result.stderr
    assert await _commands(js) == 1


async def test_ls_shows_the_origin_from_the_subject_and_marks_a_forged_claim(
    js: JetStreamContext, soma: Soma
) -> None:
    await _plant(js, "soma.dlq.acme.policy", "soma.cmd.acme.policy.evaluate", "identity")
    result = await soma("dlq", "ls", "--json")
    (letter,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert letter["origin"] == "policy" and letter["service"] == "identity"
    assert letter["suspicions"] and "claim it came from 'identity'" in letter["suspicions"][0]
    table = await soma("dlq", "ls")
    assert "policy (headers say identity)" in table.stdout and "SUSPECT" in table.stdout


async def test_replay_sends_back_an_event_still_in_the_events_stream(
    js: JetStreamContext, fresh_nats: NatsServer, soma: Soma
) -> None:
    async def evaluated(event: PolicyEvaluated, env: Envelope) -> None:
        return None

    settings = Settings(NATS_URL=fresh_nats.url, SOMA_MAX_DELIVER=2, SOMA_RETRY_INITIAL=0.05)
    service = Service("analytics", {}, event_routes={"policy.evaluated": evaluated})
    running = await runtime.start(service, settings)
    try:
        env = Envelope(
            message_id="e-1", correlation_id="c", tenant="acme", schema="policy.evaluated"
        )
        await js.publish(
            "soma.evt.acme.policy.evaluated", b'{"decision": 7}', headers=env.to_headers()
        )
        for _ in range(200):
            if (await js.stream_info(STREAMS["dlq"])).state.messages:
                break
            await asyncio.sleep(0.05)
    finally:
        await running.stop()
    result = await soma("dlq", "replay", "1")
    assert result.exit_code == 0, result.stderr
    assert "replayed 1 to soma.evt.acme.policy.evaluated" in result.stdout
    assert (await js.stream_info(STREAMS["evt"])).state.messages == 2


async def test_purge_with_filters_deletes_only_the_dead_letters_they_match(
    js: JetStreamContext, fresh_nats: NatsServer, soma: Soma
) -> None:
    await _dead_letters(js, fresh_nats.url, ["x"])
    await _plant(js, "soma.dlq.globex.tools", "soma.cmd.globex.tools.invoke", "tools")
    none = await soma("dlq", "purge", "--reason", "no such reason", "--yes")
    assert none.exit_code == 0 and "no dead letters match" in none.stdout
    result = await soma("dlq", "purge", "--tenant", "globex", "--service", "tools", "--yes")
    assert result.exit_code == 0, result.stderr
    assert "purged 1 dead letters" in result.stdout
    left = [json.loads(line) for line in (await soma("dlq", "ls", "--json")).stdout.splitlines()]
    assert [letter["service"] for letter in left] == ["policy"]


async def test_purge_before_a_time_it_cannot_read_is_a_usage_error(
    js: JetStreamContext, fresh_nats: NatsServer, soma: Soma
) -> None:
    result = await soma("dlq", "purge", "--before", "yesterday-ish", "--yes")
    assert result.exit_code == 2
    assert "unix seconds, a duration" in result.stderr


async def test_ls_output_json_is_the_same_as_json(
    js: JetStreamContext, fresh_nats: NatsServer, soma: Soma
) -> None:
    await _dead_letters(js, fresh_nats.url, ["x"])
    assert (await soma("dlq", "ls", "-o", "json")).stdout == (
        await soma("dlq", "ls", "--json")
    ).stdout
