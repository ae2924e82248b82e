"""`soma streams`: what each stream holds and how far behind each consumer is."""

from __future__ import annotations

import json

from nats.js.api import AckPolicy, ConsumerConfig

from bus.publish import envelope_for, publish
from bus.service import Connected
from schemas.catalogue import STREAMS
from schemas.policy import PolicyEvaluate
from tests.cli.conftest import Soma


async def _lagging_policy_consumer(bus: Connected) -> None:
    """Five commands: the policy durable has taken two, acknowledged one."""
    await bus.js.add_consumer(
        STREAMS["cmd"],
        ConsumerConfig(
            durable_name="policy",
            ack_policy=AckPolicy.EXPLICIT,
            filter_subject="soma.cmd.*.policy.>",
            ack_wait=60,
        ),
    )
    for i in range(5):
        cmd = PolicyEvaluate(stage="prompt", text=str(i))
        await publish(bus, cmd, envelope_for(cmd, tenant="acme"))
    sub = await bus.js.pull_subscribe_bind("policy", STREAMS["cmd"])
    taken = await sub.fetch(2, timeout=2)
    await taken[0].ack_sync()


async def test_json_shows_a_consumers_lag_and_in_flight_messages(
    bus: Connected, soma: Soma
) -> None:
    await _lagging_policy_consumer(bus)
    result = await soma("streams", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    commands = next(s for s in report["streams"] if s["name"] == STREAMS["cmd"])
    assert commands["messages"] == 5 and commands["last_seq"] == 5
    assert commands["num_subjects"] == 1
    (policy,) = commands["consumers"]
    assert policy["name"] == "policy" and policy["durable"]
    assert policy["filter"] == ["soma.cmd.*.policy.>"]
    assert (policy["pending"], policy["ack_pending"]) == (3, 1)
    # SOMA_CMD, SOMA_EVT, SOMA_DLQ, the gateway's KV_soma_idempotency and KV_soma_revocations
    assert report["stream_count"] == 5 and report["consumer_count"] == 1


async def test_the_table_names_every_stream_and_consumer(bus: Connected, soma: Soma) -> None:
    await _lagging_policy_consumer(bus)
    result = await soma("streams")
    assert result.exit_code == 0, result.stderr
    for name in (
        *STREAMS.values(),
        "KV_soma_idempotency",
        "KV_soma_revocations",
        "policy",
        "1 consumers",
        "5 streams",
    ):
        assert name in result.stdout


async def test_streams_info_shows_one_streams_limits_state_and_consumers(
    bus: Connected, soma: Soma
) -> None:
    await _lagging_policy_consumer(bus)
    result = await soma("streams", "info", STREAMS["cmd"], "-o", "json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert (info["name"], info["subjects"], info["retention"]) == (
        STREAMS["cmd"],
        ["soma.cmd.>"],
        "limits",
    )
    assert (info["messages"], info["last_seq"]) == (5, 5)
    assert [c["name"] for c in info["consumers"]] == ["policy"]
    table = await soma("streams", "info", STREAMS["cmd"])
    assert table.exit_code == 0 and "retention" in table.stdout and "policy" in table.stdout


async def test_streams_info_of_a_stream_that_does_not_exist_says_where_to_look(
    bus: Connected, soma: Soma
) -> None:
    result = await soma("streams", "info", "NOPE")
    assert result.exit_code == 1
    assert "no stream NOPE; `soma streams` lists them" in result.stderr


async def test_msg_get_prints_one_stored_message_of_any_stream(bus: Connected, soma: Soma) -> None:
    cmd = PolicyEvaluate(stage="prompt", text="read me back")
    env = envelope_for(cmd, tenant="acme")
    ack = await publish(bus, cmd, env)
    result = await soma("msg", "get", STREAMS["cmd"], str(ack.seq), "-o", "json")
    assert result.exit_code == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["subject"] == "soma.cmd.acme.policy.evaluate"
    assert found["headers"]["Nats-Msg-Id"] == env.message_id
    assert found["body"]["text"] == "read me back"
    missing = await soma("msg", "get", STREAMS["cmd"], "99999")
    assert missing.exit_code == 1 and "no message 99999" in missing.stderr


async def test_consumers_info_shows_one_consumers_lag_and_settings(
    bus: Connected, soma: Soma
) -> None:
    await _lagging_policy_consumer(bus)
    result = await soma("consumers", "info", STREAMS["cmd"], "policy", "-o", "json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert (info["name"], info["pending"], info["ack_pending"]) == ("policy", 3, 1)
    assert info["ack_policy"] == "explicit" and info["ack_wait_seconds"] == 60
    missing = await soma("consumers", "info", STREAMS["cmd"], "nobody")
    assert missing.exit_code == 1
    assert f"`soma streams info {STREAMS['cmd']}` lists them" in missing.stderr
