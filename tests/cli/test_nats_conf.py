"""nats.conf: valid, and its per-service permissions let each process do its job and no more."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus import runtime
from bus.connection import connect
from bus.request import Requester
from bus.service import Service
from schemas.envelope import Envelope
from schemas.policy import PolicyEvaluate, PolicyEvaluated
from soma.settings import Settings
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
    "admin",
    "system",
)
PASSWORDS = {f"NATS_{u.upper()}_PASSWORD": f"secret-{u}" for u in USERS}


def _url(port: int, user: str) -> str:
    return f"nats://{user}:secret-{user}@127.0.0.1:{port}"


def test_nats_conf_is_valid() -> None:
    result = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(ROOT / "nats.conf")],
        env=clean_env(**PASSWORDS),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_nats_conf_refuses_to_start_without_a_password() -> None:
    missing = {k: v for k, v in PASSWORDS.items() if k != "NATS_GATEWAY_PASSWORD"}
    result = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(ROOT / "nats.conf")],
        env=clean_env(**missing),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "NATS_GATEWAY_PASSWORD" in result.stderr


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A nats-server running nats.conf on free ports, its JetStream store moved to a tmp dir."""
    port = free_port()
    here = tmp_path_factory.mktemp("secured")
    (here / "deploy").mkdir()
    shutil.copy(ROOT / "deploy" / "nats-accounts.conf", here / "deploy")
    conf = (ROOT / "nats.conf").read_text()
    assert "store_dir: /data/jetstream" in conf
    (here / "nats.conf").write_text(conf.replace("/data/jetstream", str(here / "store")))
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
            str(free_port()),
        ],
        env=clean_env(**PASSWORDS),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


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
    handler = await _policy_handler(secured)  # provisions the streams
    await handler.stop()
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
