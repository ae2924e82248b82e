"""nats.conf: valid, and its per-service permissions let each process do its job and no more."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from bus import runtime
from bus.connection import connect
from bus.request import Requester
from bus.service import Service
from bus.streams import StreamsNotProvisioned, provision
from kernel.settings import Settings
from schemas.envelope import Envelope
from schemas.policy import PolicyEvaluate, PolicyEvaluated
from soma.terminal import quiet_disconnect
from tests.cli.conftest import ROOT, Soma, clean_env
from tests.servers import free_port, nats_server_binary, wait_port

USERS = (
    "policy",
    "memory",
    "slm",
    "tools",
    "identity",
    "analytics",
    "sagas",
    "gateway",
    "operator",
    "console",
    "admin",
    "system",
)
PASSWORDS = {f"NATS_{u.upper()}_PASSWORD": f"secret-{u}" for u in USERS}


def _url(port: int, user: str) -> str:
    return f"nats://{user}:secret-{user}@127.0.0.1:{port}"


def test_nats_conf_is_valid() -> None:
    result = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(ROOT / "nats.conf")],
        env=clean_env(NATS_STORE_DIR="/data/jetstream", **PASSWORDS),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_nats_conf_refuses_to_start_without_a_password() -> None:
    missing = {k: v for k, v in PASSWORDS.items() if k != "NATS_GATEWAY_PASSWORD"}
    result = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(ROOT / "nats.conf")],
        env=clean_env(NATS_STORE_DIR="/data/jetstream", **missing),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "NATS_GATEWAY_PASSWORD" in result.stderr


def test_nats_conf_refuses_to_start_without_a_store_dir() -> None:
    result = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(ROOT / "nats.conf")],
        env=clean_env(**PASSWORDS),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "NATS_STORE_DIR" in result.stderr


@contextmanager
def nats_conf_server(here: Path) -> Iterator[int]:
    """nats.conf and nats-accounts.conf copied into ``here`` and run as nats.conf documents:
    ``NATS_STORE_DIR=… NATS_<USER>_PASSWORD=… nats-server -c nats.conf -a … -p … -m …``.

    Yields the client port; the monitoring port is ``here / "http.port"``'s content.
    """
    port, http_port = free_port(), free_port()
    (here / "deploy").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "deploy" / "nats-accounts.conf", here / "deploy")
    shutil.copy(ROOT / "nats.conf", here)
    (here / "http.port").write_text(str(http_port))
    log = (here / "nats.log").open("wb")
    proc = subprocess.Popen(
        [
            nats_server_binary(),
            "-c",
            str(here / "nats.conf"),
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "-m",
            str(http_port),
        ],
        env=clean_env(NATS_STORE_DIR=str(here / "store"), **PASSWORDS),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        try:
            wait_port(port)
        except RuntimeError as exc:
            raise RuntimeError((here / "nats.log").read_text()) from exc
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def provision_as_admin(port: int) -> None:
    """What `soma migrate` does as the admin user: create the streams."""

    async def provisioning() -> None:
        nc = await connect(_url(port, "admin"), "admin")
        try:
            await provision(nc.jetstream(), Settings(NATS_URL=_url(port, "admin")))
        finally:
            with quiet_disconnect():
                await nc.close()

    asyncio.run(provisioning())


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A nats-server running nats.conf on free ports, its JetStream store in a tmp dir, and
    the streams provisioned by the admin user."""
    with nats_conf_server(tmp_path_factory.mktemp("secured")) as port:
        provision_as_admin(port)
        yield port


def _status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:
        return int(response.status)


async def test_the_documented_command_starts_a_server_that_answers(tmp_path: Path) -> None:
    with nats_conf_server(tmp_path) as port:
        http_port = (tmp_path / "http.port").read_text()
        health = f"http://127.0.0.1:{http_port}/healthz?js-enabled-only=true"
        status = await asyncio.to_thread(_status, health)
        assert status == 200
        nc = await connect(_url(port, "admin"), "admin")
        try:
            info = await nc.jetstream().account_info()
            assert info.limits is not None
        finally:
            with quiet_disconnect():
                await nc.close()
        assert (tmp_path / "store" / "jetstream").is_dir()


async def _policy_handler(port: int) -> runtime.Running:
    async def evaluate(cmd: PolicyEvaluate, env: Envelope) -> PolicyEvaluated:
        return PolicyEvaluated(decision_id=env.message_id, decision="allow", stage=cmd.stage)

    settings = Settings(NATS_URL=_url(port, "policy"))
    return await runtime.start(Service("policy", {PolicyEvaluate: evaluate}), settings)


async def test_a_handler_user_consumes_and_the_gateway_user_gets_its_reply(secured: int) -> None:
    handler = await _policy_handler(secured)
    nc = await connect(_url(secured, "gateway"), "gateway")
    requester = Requester(nc, nc.jetstream())
    await requester.start()
    try:
        _, reply = await requester.request(
            PolicyEvaluate(stage="prompt", text="hi"),
            tenant="acme",
            expect={"policy.evaluated"},
            timeout=10,
        )
        assert reply.schema == "policy.evaluated"
    finally:
        await requester.close()
        with quiet_disconnect():
            await nc.close()
        await handler.stop()


async def _violations(port: int, user: str, subjects: list[str]) -> list[str]:
    """Publish to each subject as ``user``; the server's permission errors, in order."""
    import nats

    errors: list[str] = []

    async def on_error(err: Exception) -> None:
        errors.append(str(err))

    nc = await nats.connect(_url(port, user), error_cb=on_error)
    try:
        for subject in subjects:
            await nc.publish(subject, b"{}")
        await nc.flush()
        await asyncio.sleep(0.3)
    finally:
        await nc.close()
    return errors


async def test_a_handler_user_cannot_publish_another_services_events(secured: int) -> None:
    errors = await _violations(
        secured, "policy", ["soma.evt.acme.memory.recalled", "soma.evt.acme.policy.evaluated"]
    )
    assert len(errors) == 1 and "soma.evt.acme.memory.recalled" in errors[0]


async def test_the_operator_user_cannot_publish_anything_on_the_bus(secured: int) -> None:
    errors = await _violations(
        secured, "operator", ["soma.cmd.acme.policy.evaluate", "soma.evt.acme.policy.evaluated"]
    )
    assert len(errors) == 2


async def test_the_operator_user_can_tail_and_list_streams(secured: int, tmp_path: Path) -> None:
    operator = Soma(clean_env(NATS_URL=_url(secured, "operator"), SOMA_DATA_DIR=str(tmp_path)))
    admin = Soma(clean_env(NATS_URL=_url(secured, "admin"), SOMA_DATA_DIR=str(tmp_path)))
    published = await admin(
        "publish",
        "soma.evt.acme.policy.evaluated",
        '{"decision_id": "d", "decision": "allow", "stage": "prompt"}',
    )
    assert published.exit_code == 0, published.stderr
    tail = await operator("tail", "--all", "--json", "--until-idle", "1")
    assert tail.exit_code == 0, tail.stderr
    assert '"decision_id":"d"' in tail.stdout
    streams = await operator("streams", "--json")
    assert streams.exit_code == 0, streams.stderr
    assert '"SOMA_EVT"' in streams.stdout


async def test_a_handler_user_finding_no_streams_says_who_provisions_them(tmp_path: Path) -> None:
    with nats_conf_server(tmp_path) as port:
        with pytest.raises(StreamsNotProvisioned) as refused:
            await _policy_handler(port)
        assert "stream SOMA_CMD does not exist" in str(refused.value)
        assert "`soma migrate` / the admin user" in str(refused.value)
        http_port = (tmp_path / "http.port").read_text()
        async with httpx.AsyncClient() as monitor:
            for _ in range(
                50
            ):  # the server sees a closed socket a moment after the client shuts it
                connz = (await monitor.get(f"http://127.0.0.1:{http_port}/connz")).json()
                if connz["num_connections"] == 0:
                    break
                await asyncio.sleep(0.1)
        assert connz["num_connections"] == 0, "a refused start leaves no client reconnecting"


async def test_soma_migrate_as_admin_creates_the_streams(tmp_path: Path) -> None:
    with nats_conf_server(tmp_path / "nats") as port:
        admin = Soma(clean_env(NATS_URL=_url(port, "admin"), SOMA_DATA_DIR=str(tmp_path)))
        migrated = await admin("migrate")
        assert migrated.exit_code == 0, migrated.stderr
        streams = "SOMA_CMD, SOMA_EVT, SOMA_DLQ, KV_soma_idempotency, KV_soma_revocations"
        assert f"streams: {streams} ready" in migrated.stdout
        handler = await _policy_handler(port)
        await handler.stop()


async def test_the_gateway_user_reads_a_passthrough_answer_back_but_makes_no_durable(
    secured: int,
) -> None:
    from bus.publish import envelope_for, publish
    from bus.service import Connected
    from gateway.auth import Principal
    from gateway.dispatch import Dispatch
    from gateway.passthrough import PassThroughTurn, command_id
    from schemas.chat import ChatTurnInput
    from schemas.slm import ChatMessage, SlmCompleted

    slm = await connect(_url(secured, "slm"), "slm")
    answer = SlmCompleted(
        model="m", provider="local", message=ChatMessage(role="assistant", content="earlier")
    )
    env = envelope_for(answer, tenant="acme", correlation_id="turn-1", causation_id="turn-1.slm")
    await publish(Connected(slm, slm.jetstream()), answer, env)
    nc = await connect(_url(secured, "gateway"), "gateway")
    try:
        principal = Principal(tenant="acme", user="u", roles=("member",), via="api_key")
        turn = ChatTurnInput(model="m", messages=[ChatMessage(role="user", content="hi")])
        dispatch = Dispatch(nc, nc.jetstream(), Requester(nc, nc.jetstream()), timeout=10)
        reply = await PassThroughTurn(dispatch, principal, turn, "turn-1").earlier_reply()
        assert reply is not None and reply.payload == answer
        assert command_id("turn-1") == "turn-1.slm"
    finally:
        with quiet_disconnect():
            await nc.close()
            await slm.close()
    errors = await _violations(
        secured, "gateway", ["$JS.API.CONSUMER.CREATE.SOMA_EVT.mine.soma.evt.>"]
    )
    assert len(errors) == 1


async def test_identity_writes_the_revocations_bucket_and_the_gateway_user_follows_it(
    secured: int,
) -> None:
    """What identity's board and the gateway's verifier do, each as its own user: a put, a
    revocation with its TTL and a direct get; the load, the watch and a direct get."""
    import time

    import msgspec
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gateway.tokens import AccessClaims, TokenRules, TokenVerifier
    from handlers.identity.signing_keys import public_jwk
    from schemas.identity import (
        JWKS_KEY,
        REVOCATIONS_BUCKET,
        IdentityJwksPublished,
        Revocation,
        revocation_key,
    )

    errors: list[str] = []

    async def on_error(err: Exception) -> None:
        errors.append(str(err))

    def claims(jti: str, session: str) -> AccessClaims:
        now = time.time()
        return AccessClaims("u", "acme", (), (), None, jti, session, now, now + 60, None, None)

    async def revoke(kind: str, subject: str) -> None:
        now = time.time()
        entry = Revocation(kind=kind, subject=subject, revoked_at=now, expires_at=now + 60)  # type: ignore[arg-type]
        subject_ = f"$KV.{REVOCATIONS_BUCKET}.{revocation_key(entry)}"
        await identity.jetstream().publish(subject_, msgspec.json.encode(entry), msg_ttl=60)

    identity = await connect(_url(secured, "identity"), "identity")
    gateway = await connect(_url(secured, "gateway"), "gateway")
    identity._error_cb = gateway._error_cb = on_error  # type: ignore[assignment]
    jwk = public_jwk(Ed25519PrivateKey.generate())
    board = await identity.jetstream().key_value(REVOCATIONS_BUCKET)
    await board.put(JWKS_KEY, msgspec.json.encode(IdentityJwksPublished(keys=[jwk])))
    assert (await board.get(JWKS_KEY)).value
    await revoke("jti", "before-start")
    verifier = TokenVerifier(
        TokenRules("soma", "soma-gateway"),
        await gateway.jetstream().key_value(REVOCATIONS_BUCKET),
        lambda: True,
        lambda: 0,
    )
    try:
        await verifier.prime()
        assert verifier.keys.get(jwk["kid"]) is not None
        assert verifier.revoked.revokes(claims("before-start", "s"))
        await revoke("session", "after-start")
        async with asyncio.timeout(10):
            while not verifier.revoked.revokes(claims("j", "after-start")):
                await asyncio.sleep(0.02)
        await verifier.refresh_keys()
        assert errors == []
    finally:
        await verifier.stop()
        with quiet_disconnect():
            await identity.close()
            await gateway.close()


async def test_the_console_user_reads_the_streams_and_replays_a_dead_letter(secured: int) -> None:
    """What the operator console does over the bus, as its own user: stream state, a story,
    the dead letters, and a replay; it makes no durable consumer and purges nothing."""
    from datetime import UTC, datetime, timedelta

    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.api import ConsumerConfig
    from nats.js.errors import APIError

    from console import bus_views, story

    handler = await _policy_handler(secured)
    admin = await connect(_url(secured, "admin"), "admin")
    nc = await connect(_url(secured, "console"), "console")
    js = nc.jetstream()
    try:
        env = Envelope(
            message_id="bad-1", correlation_id="c-console", tenant="acme", schema="policy.evaluate"
        )
        await admin.jetstream().publish(
            "soma.cmd.acme.policy.evaluate",
            b'{"stage": "nowhere", "text": "x"}',
            headers=env.to_headers(),
        )
        for _ in range(100):
            letters = await bus_views.dead_letters(js, "acme", 10)
            if letters:
                break
            await asyncio.sleep(0.1)
        assert [x["service"] for x in letters] == ["policy"]
        names = {s["name"] for s in await bus_views.streams(nc)}
        assert {"SOMA_CMD", "SOMA_EVT", "SOMA_DLQ"} <= names
        since = datetime.now(UTC) - timedelta(minutes=5)
        steps = await story.collect(js, "c-console", "acme", since)
        assert steps and steps[0]["schema"] == "policy.evaluate"
        outcome = await bus_views.replay(js, letters[0]["seq"])
        assert outcome["replayed"] is True, outcome
        with pytest.raises((APIError, NatsTimeout)):
            await js.add_consumer("SOMA_CMD", ConsumerConfig(durable_name="policy"))
        with pytest.raises((APIError, NatsTimeout)):
            await js.purge_stream("SOMA_DLQ")
    finally:
        with quiet_disconnect():
            await nc.close()
            await admin.close()
        await handler.stop()


async def test_the_gateway_user_follows_the_usage_events_its_budgets_are_summed_from(
    secured: int,
) -> None:
    """What ``gateway.spend`` does as the gateway user: an ordered consumer on SOMA_EVT from a
    start time, reading completions published by the slm user."""
    import time

    import msgspec

    from gateway.spend import SpendFollower, SpendLedger
    from schemas.envelope import new_id
    from schemas.slm import ChatMessage, SlmCompleted

    errors: list[str] = []

    async def on_error(err: Exception) -> None:
        errors.append(str(err))

    slm = await connect(_url(secured, "slm"), "slm")
    gateway = await connect(_url(secured, "gateway"), "gateway")
    slm._error_cb = gateway._error_cb = on_error  # type: ignore[assignment]

    async def complete(usd: float) -> None:
        env = Envelope(
            message_id=new_id(), correlation_id=new_id(), tenant="acme", schema="slm.completed"
        )
        event = SlmCompleted(
            model="m",
            provider="local",
            message=ChatMessage(role="assistant", content="hi"),
            cost_usd=usd,
            key_id="k1",
        )
        await slm.jetstream().publish(
            "soma.evt.acme.slm.completed", msgspec.json.encode(event), headers=env.to_headers()
        )

    follower = SpendFollower(gateway.jetstream(), SpendLedger(3600))
    try:
        await complete(0.25)
        await follower.start()
        await complete(0.5)
        async with asyncio.timeout(10):
            while follower.ledger.key_spend("k1", time.time() - 60) < 0.75:
                await asyncio.sleep(0.05)
        assert follower.ledger.tenant_spend("acme", time.time() - 60) == 0.75
        assert errors == []
    finally:
        await follower.stop()
        with quiet_disconnect():
            await slm.close()
            await gateway.close()
