"""Attacks on the bus by a process's own NATS user, against nats.conf and nats-accounts.conf.

Each service user is a process that may have been taken over. Whatever it sends, the server
must refuse it anything beyond the process's own job: no stream created or changed, no durable
pointed at another service's subjects, no reply read from another user's inbox, no dead letter
published in another service's name. The same users must still do their own job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, RePublish, StreamConfig

from bus import deadletter, runtime
from bus.connection import connect
from bus.service import Connected
from kernel.settings import Settings
from schemas.catalogue import STREAMS, by_name
from schemas.envelope import Envelope
from schemas.identity import JWKS_KEY, REVOCATIONS_BUCKET
from soma.terminal import quiet_disconnect
from tests.cli.conftest import Soma, clean_env
from tests.cli.test_nats_conf import nats_conf_server, provision_as_admin

HANDLERS = ("policy", "memory", "slm", "tools", "identity", "analytics", "sagas")
SERVICE_USERS = (*HANDLERS, "gateway", "operator")
REFUSAL_WAIT = 5.0  # seconds to wait for the server's permission error; it comes at once


def _url(port: int, user: str) -> str:
    return f"nats://{user}:secret-{user}@127.0.0.1:{port}"


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """nats.conf on free ports, the streams provisioned by the admin user (`soma migrate`)."""
    with nats_conf_server(tmp_path_factory.mktemp("attacks")) as running:
        provision_as_admin(running)
        yield running


@dataclass
class User:
    """A connection as one NATS user, with the permission errors the server sent it."""

    name: str
    nc: Client
    errors: list[str] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def js(self) -> JetStreamContext:
        return self.nc.jetstream(timeout=REFUSAL_WAIT)

    def _violated(self, subject: str) -> bool:
        # nats-py reports the server's -ERR in lower case.
        return any(f'"{subject.lower()}"' in e.lower() for e in self.errors)

    async def refused(
        self, subject: str, attempt: Awaitable[Any], *, answered: bool = True
    ) -> None:
        """``attempt`` must draw a permission violation naming ``subject`` and, if it is a call
        that waits for an answer (``answered``), never succeed."""
        task = asyncio.ensure_future(attempt)
        try:
            async with asyncio.timeout(REFUSAL_WAIT):
                while not self._violated(subject):
                    self.arrived.clear()
                    await self.arrived.wait()
        except TimeoutError:
            pass
        await asyncio.sleep(0.05)  # an attempt the server allowed would have its answer now
        succeeded = answered and task.done() and not task.cancelled() and task.exception() is None
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        assert not succeeded, f"{self.name} was allowed: {subject}"
        assert self._violated(subject), (
            f"no permission violation for {subject} as {self.name}: {self.errors}"
        )


@contextlib.asynccontextmanager
async def as_user(port: int, name: str) -> AsyncIterator[User]:
    user: User | None = None

    async def on_error(err: Exception) -> None:
        assert user is not None
        user.errors.append(str(err))
        user.arrived.set()

    nc = await connect(_url(port, name), f"attack-{name}")
    user = User(name, nc)
    nc._error_cb = on_error  # connect() logs errors; the test needs to see them
    try:
        yield user
    finally:
        with quiet_disconnect():
            await nc.close()


@contextlib.asynccontextmanager
async def admin(port: int) -> AsyncIterator[JetStreamContext]:
    nc = await connect(_url(port, "admin"), "attack-admin")
    try:
        yield nc.jetstream()
    finally:
        with quiet_disconnect():
            await nc.close()


def _command(tenant: str = "acme", schema: str = "x.do", msg_id: str = "m-1") -> dict[str, str]:
    env = Envelope(message_id=msg_id, correlation_id="c-1", tenant=tenant, schema=schema)
    return env.to_headers()


# Streams: only the provisioning identity creates or changes them.


@pytest.mark.parametrize("name", SERVICE_USERS)
async def test_a_service_user_cannot_shorten_the_event_history(port: int, name: str) -> None:
    async with admin(port) as js:
        before = (await js.stream_info(STREAMS["evt"])).config
    async with as_user(port, name) as user:
        cut = StreamConfig(
            name=STREAMS["evt"], subjects=["soma.evt.>"], max_age=1.0,
            num_replicas=before.num_replicas, storage=before.storage,
        )  # fmt: skip
        await user.refused(f"$JS.API.STREAM.UPDATE.{STREAMS['evt']}", user.js.update_stream(cut))
    async with admin(port) as js:
        assert (await js.stream_info(STREAMS["evt"])).config.max_age == before.max_age


@pytest.mark.parametrize("name", SERVICE_USERS)
async def test_a_service_user_cannot_create_a_stream(port: int, name: str) -> None:
    async with as_user(port, name) as user:
        grab = StreamConfig(name=f"GRAB_{name}", subjects=[f"grab.{name}.>"])
        await user.refused(f"$JS.API.STREAM.CREATE.GRAB_{name}", user.js.add_stream(grab))
    async with admin(port) as js:
        assert f"GRAB_{name}" not in await js.streams_info() and not [
            s for s in await js.streams_info() if s.config.name == f"GRAB_{name}"
        ]


# The revocations bucket: identity writes it, gateways only read it.


@pytest.mark.parametrize("name", [n for n in SERVICE_USERS if n != "identity"])
async def test_only_identity_may_write_the_revocations_bucket(port: int, name: str) -> None:
    """Anyone else could un-revoke a stolen token by overwriting its entry, or publish a key set
    of its own and sign tokens every gateway would accept."""
    forged = f"$KV.{REVOCATIONS_BUCKET}.{JWKS_KEY}"
    async with as_user(port, name) as user:
        await user.refused(forged, user.js.publish(forged, b'{"keys": []}'))


async def test_the_gateway_cannot_make_a_durable_on_the_revocations_bucket(port: int) -> None:
    stream = f"KV_{REVOCATIONS_BUCKET}"
    async with as_user(port, "gateway") as gateway:
        durable = ConsumerConfig(
            name="keep", durable_name="keep", filter_subject=f"$KV.{REVOCATIONS_BUCKET}.>"
        )
        await gateway.refused(
            f"$JS.API.CONSUMER.CREATE.{stream}.keep.$KV.{REVOCATIONS_BUCKET}.>",
            gateway.js.add_consumer(stream, durable),
        )


@pytest.mark.parametrize("name", SERVICE_USERS)
async def test_a_service_user_cannot_republish_the_commands_to_itself(port: int, name: str) -> None:
    async with admin(port) as js:
        before = (await js.stream_info(STREAMS["cmd"])).config
    tap = RePublish(src="soma.cmd.>", dest=f"_INBOX.{name}.tap.>")
    async with as_user(port, name) as user:
        await user.refused(
            f"$JS.API.STREAM.UPDATE.{STREAMS['cmd']}",
            user.js.update_stream(before.evolve(republish=tap)),
        )
        await user.refused(
            "$JS.API.STREAM.CREATE.TAP",
            user.js.add_stream(StreamConfig(name="TAP", subjects=["tap.>"], republish=tap)),
        )
    async with admin(port) as js:
        assert (await js.stream_info(STREAMS["cmd"])).config.republish is None


@pytest.mark.parametrize("name", SERVICE_USERS)
async def test_a_service_user_cannot_purge_or_delete_a_stream(port: int, name: str) -> None:
    async with as_user(port, name) as user:
        await user.refused(
            f"$JS.API.STREAM.PURGE.{STREAMS['evt']}", user.js.purge_stream(STREAMS["evt"])
        )
        await user.refused(
            f"$JS.API.STREAM.DELETE.{STREAMS['dlq']}", user.js.delete_stream(STREAMS["dlq"])
        )


# Consumers: each service its own durable, with its own filter.


def _durable(name: str, filter_subject: str) -> ConsumerConfig:
    return ConsumerConfig(name=name, durable_name=name, filter_subject=filter_subject)


async def test_a_handler_cannot_point_its_own_durable_at_another_services_commands(
    port: int,
) -> None:
    async with as_user(port, "policy") as user:
        stolen = "soma.cmd.*.identity.>"
        await user.refused(
            f"$JS.API.CONSUMER.CREATE.SOMA_CMD.policy.{stolen}",
            user.js.add_consumer(STREAMS["cmd"], _durable("policy", stolen)),
        )
        await user.refused(
            "$JS.API.CONSUMER.CREATE.SOMA_CMD.policy.soma.cmd.>",
            user.js.add_consumer(STREAMS["cmd"], _durable("policy", "soma.cmd.>")),
        )


async def test_a_handler_cannot_smuggle_another_filter_past_its_own_create_subject(
    port: int,
) -> None:
    """The subject is its own; the request inside asks for identity's commands."""
    subject = "$JS.API.CONSUMER.CREATE.SOMA_CMD.policy.soma.cmd.*.policy.>"
    for config in (
        _durable("policy", "soma.cmd.*.identity.>"),
        ConsumerConfig(
            name="policy",
            durable_name="policy",
            filter_subjects=["soma.cmd.*.policy.>", "soma.cmd.*.identity.>"],
        ),
    ):
        async with as_user(port, "policy") as user:
            request = {"stream_name": STREAMS["cmd"], "config": config.as_dict()}
            reply = await user.nc.request(subject, json.dumps(request).encode(), timeout=5)
            answer = json.loads(reply.data)
            assert "error" in answer, answer
    async with admin(port) as js:
        names = {c.name for c in await js.consumers_info(STREAMS["cmd"])}
        if "policy" in names:
            info = await js.consumer_info(STREAMS["cmd"], "policy")
            assert info.config.filter_subject == "soma.cmd.*.policy.>"
            assert not info.config.filter_subjects


async def test_a_handler_cannot_use_the_unfiltered_or_legacy_create_subjects(port: int) -> None:
    async with as_user(port, "policy") as user:
        request = json.dumps(
            {"stream_name": STREAMS["cmd"], "config": _durable("policy", "soma.cmd.>").as_dict()}
        ).encode()
        for subject in (
            "$JS.API.CONSUMER.CREATE.SOMA_CMD.policy",
            "$JS.API.CONSUMER.DURABLE.CREATE.SOMA_CMD.policy",
            "$JS.API.CONSUMER.CREATE.SOMA_CMD",
        ):
            await user.refused(subject, user.nc.request(subject, request, timeout=REFUSAL_WAIT))


async def test_a_handler_cannot_create_a_durable_under_another_name(port: int) -> None:
    async with as_user(port, "policy") as user:
        await user.refused(
            "$JS.API.CONSUMER.CREATE.SOMA_CMD.identity.soma.cmd.*.identity.>",
            user.js.add_consumer(STREAMS["cmd"], _durable("identity", "soma.cmd.*.identity.>")),
        )
        await user.refused(
            "$JS.API.CONSUMER.CREATE.SOMA_CMD.policy2.soma.cmd.*.policy.>",
            user.js.add_consumer(STREAMS["cmd"], _durable("policy2", "soma.cmd.*.policy.>")),
        )


async def test_a_handler_cannot_pull_or_ack_from_another_services_durable(port: int) -> None:
    async with as_user(port, "policy") as user:
        await user.refused(
            "$JS.API.CONSUMER.MSG.NEXT.SOMA_CMD.identity",
            user.nc.request(
                "$JS.API.CONSUMER.MSG.NEXT.SOMA_CMD.identity", b'{"batch": 1}', timeout=5
            ),
        )
        await user.refused(
            "$JS.ACK.SOMA_CMD.identity.1.1.1.1.0",
            user.nc.publish("$JS.ACK.SOMA_CMD.identity.1.1.1.1.0", b"+ACK"),
            answered=False,
        )


# Inboxes: replies are read only by the user that asked.


@pytest.mark.parametrize("name", SERVICE_USERS)
async def test_a_service_user_cannot_subscribe_to_every_inbox(port: int, name: str) -> None:
    async with as_user(port, name) as user:
        await user.refused("_INBOX.>", user.nc.subscribe("_INBOX.>"), answered=False)


async def test_a_service_user_cannot_read_another_users_replies(port: int) -> None:
    async with as_user(port, "policy") as policy, as_user(port, "gateway") as gateway:
        seen: list[Msg] = []

        async def spy(msg: Msg) -> None:
            seen.append(msg)

        await policy.refused(
            "_INBOX.gateway.>", policy.nc.subscribe("_INBOX.gateway.>", cb=spy), answered=False
        )
        # The gateway's own request/reply still works, and the answer reaches only the gateway.
        info = await gateway.js.stream_info(STREAMS["cmd"])
        assert info.config.name == STREAMS["cmd"]
        await policy.nc.flush()
        assert seen == []


# Dead letters: each service publishes them under its own name only.


async def test_a_handler_cannot_publish_a_dead_letter_in_another_services_name(
    port: int,
) -> None:
    async with admin(port) as js:
        before = (await js.stream_info(STREAMS["dlq"])).state.last_seq
    async with as_user(port, "policy") as user:
        forged = user.nc.publish(
            "soma.dlq.acme.identity", b"{}", headers={"Soma-Dlq-Consumer": "identity"}
        )
        await user.refused("soma.dlq.acme.identity", forged, answered=False)
    async with admin(port) as js:
        assert (await js.stream_info(STREAMS["dlq"])).state.last_seq == before


async def test_replay_refuses_a_dead_letter_a_handler_planted_for_another_service(
    port: int, tmp_path: Path
) -> None:
    """policy may write on its own dead-letter subject, so it plants identity's command there,
    headers claiming identity wrote it; the operator's replay must not deliver it."""
    async with as_user(port, "policy") as user:
        headers = {
            **_command(schema="identity.create_key", msg_id="planted"),
            "Soma-Actor": "admin",
            "Soma-Dlq-Reason": "timeout",
            "Soma-Dlq-Subject": "soma.cmd.acme.identity.create_key",
            "Soma-Dlq-Consumer": "identity",
            "Soma-Dlq-Deliveries": "5",
            "Soma-Dlq-Stream-Seq": "1",
        }
        body = json.dumps({"name": "root", "roles": ["admin"]}).encode()
        await user.js.publish("soma.dlq.acme.policy", body, headers=headers)
    async with admin(port) as js:
        planted = (await js.stream_info(STREAMS["dlq"])).state.last_seq
        commands = (await js.stream_info(STREAMS["cmd"])).state.last_seq
    operator = Soma(clean_env(NATS_URL=_url(port, "admin"), SOMA_DATA_DIR=str(tmp_path)))
    result = await operator("dlq", "replay", str(planted))
    assert result.exit_code == 1
    assert "refused to replay" in result.stderr
    async with admin(port) as js:
        assert (await js.stream_info(STREAMS["cmd"])).state.last_seq == commands
        assert (await deadletter.get(js, planted)).origin == "policy"


# Their own job: every handler user still consumes, acks, emits and dead-letters.


def _event_subjects(name: str) -> list[str] | None:
    if name == "sagas":
        return ["soma.evt.>"]
    if name == "analytics":
        return [
            by_name(n).pattern for n in ("slm.completed", "sagas.started", "gateway.turn_finished")
        ]
    return None


@pytest.mark.parametrize("name", HANDLERS)
async def test_a_handler_user_consumes_acks_emits_and_dead_letters_its_own(
    port: int, name: str
) -> None:
    settings = Settings(NATS_URL=_url(port, name))
    got: asyncio.Queue[Msg] = asyncio.Queue()

    async def handle(msg: Msg) -> None:
        await got.put(msg)

    async with admin(port) as js:
        sent = await js.publish(
            f"soma.cmd.acme.{name}.work",
            b"{}",
            headers=_command(msg_id=f"own-{name}"),
        )
    async with as_user(port, name) as user:
        assert user.nc.new_inbox().startswith(f"_INBOX.{name}.")
        config = runtime._consumer_config(name, [f"soma.cmd.*.{name}.>"], settings)
        bus = Connected(user.nc, user.js)
        consumer = runtime.Consumer(bus, STREAMS["cmd"], config, handle, 4)
        await consumer.start()
        try:
            msg = await asyncio.wait_for(_next_with_seq(got, sent.seq), 20)
            await msg.ack_sync()
            await user.js.publish(
                f"soma.evt.acme.{name}.done", b"{}", headers=_command(msg_id=f"done-{name}")
            )
            await deadletter.dead_letter(user.js, msg, reason="test", service=name, deliveries=1)
        finally:
            await consumer.stop()
        events = _event_subjects(name)
        if events is not None:
            config = runtime._consumer_config(f"{name}-events", events, settings)
            await user.js.add_consumer(STREAMS["evt"], config)
        assert user.errors == []
    async with admin(port) as js:
        info = await js.consumer_info(STREAMS["cmd"], name)
        assert info.config.filter_subject == f"soma.cmd.*.{name}.>"
        assert info.ack_floor.stream_seq >= sent.seq
        last = await js.get_last_msg(STREAMS["dlq"], f"soma.dlq.acme.{name}")
        assert (await deadletter.get(js, last.seq or 0)).suspicions() == []
        emitted = await js.get_last_msg(STREAMS["evt"], f"soma.evt.acme.{name}.done")
        assert (emitted.headers or {})["Nats-Msg-Id"] == f"done-{name}"


async def test_the_gateway_emits_its_own_events_and_not_another_services(port: int) -> None:
    """A direct turn's end is the gateway's to publish; a model call's usage is the slm
    process's, so a gateway cannot meter a turn that never reached the model."""
    async with as_user(port, "gateway") as gateway:
        await gateway.js.publish(
            "soma.evt.acme.gateway.turn_finished", b"{}", headers=_command(msg_id="gw-end")
        )
        forged = "soma.evt.acme.slm.completed"
        await gateway.refused(
            forged, gateway.js.publish(forged, b"{}", headers=_command(msg_id="gw-usage"))
        )
    async with admin(port) as js:
        emitted = await js.get_last_msg(STREAMS["evt"], "soma.evt.acme.gateway.turn_finished")
        assert (emitted.headers or {})["Nats-Msg-Id"] == "gw-end"


async def test_the_runner_may_end_a_gateways_turn_and_no_other_gateway_event(port: int) -> None:
    """The saga runner ends a direct turn whose gateway died (sagas/turns.py): that end is the
    one gateway event it may publish, and a model call's usage stays the slm process's."""
    async with as_user(port, "sagas") as sagas:
        await sagas.js.publish(
            "soma.evt.acme.gateway.turn_finished", b"{}", headers=_command(msg_id="runner-end")
        )
        for forged in ("soma.evt.acme.gateway.turn_started", "soma.evt.acme.slm.completed"):
            await sagas.refused(
                forged, sagas.js.publish(forged, b"{}", headers=_command(msg_id=f"by-{forged}"))
            )
    async with admin(port) as js:
        emitted = await js.get_last_msg(STREAMS["evt"], "soma.evt.acme.gateway.turn_finished")
        assert (emitted.headers or {})["Nats-Msg-Id"] == "runner-end"


async def _next_with_seq(got: asyncio.Queue[Msg], seq: int) -> Msg:
    while True:
        msg = await got.get()
        if msg.metadata.sequence.stream == seq:
            return msg
        await msg.ack()


# An operator's saga commands: terminate and retry go where cancel goes, for exactly its users:
# the gateway and the console (for a signed-in user), and the saga runner (a parent's children).
SAGA_COMMANDERS = ("gateway", "console", "sagas")


@pytest.mark.parametrize("name", [*SERVICE_USERS, "console"])
async def test_saga_terminate_and_retry_are_allowed_to_exactly_who_may_cancel(
    port: int, name: str
) -> None:
    allowed: dict[str, bool] = {}
    async with as_user(port, name) as user:
        for verb in ("cancel", "terminate", "retry"):
            subject = by_name(f"sagas.{verb}").subject("acme")
            headers = _command(schema=f"sagas.{verb}", msg_id=f"{verb}-by-{name}")
            await user.nc.publish(subject, b'{"saga_id": "none"}', headers=headers)
            await user.nc.flush()
            await asyncio.sleep(0.2)  # a refusal comes at once
            allowed[verb] = not user._violated(subject)
    assert allowed == dict.fromkeys(allowed, name in SAGA_COMMANDERS)
