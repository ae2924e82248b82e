"""A service author's handlers, from their own packages, beside the built-ins on a real bus.

The two example packages (examples/billing_handler on Soma's runtime, examples/faststream_handler
with FastStream) are installed with pip, as an author would install theirs, into a folder on the
processes' path — after the saga runner has started, so what is shown is a system that takes new
handlers, messages and sagas without restarting what already runs.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from bus.connection import connect
from schemas.catalogue import STREAMS
from schemas.envelope import Envelope, new_id
from soma.terminal import quiet_disconnect
from tests.authors.packages import install_examples
from tests.cli.conftest import clean_env
from tests.servers import NatsServer, nats_server, stop_processes

ROOT = Path(__file__).resolve().parents[2]
SPEC = "billing=billing_handler.service:build,shipping=shipping_handler.service:service"


@dataclass
class System:
    nats: NatsServer
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]]

    def soma(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "soma.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _start(name: str, env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    out = (logs / f"{name}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "soma.cli", "run", name],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=logs,
    )


async def _wait_for_consumer(js: JetStreamContext, stream: str, durable: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            await js.consumer_info(stream, durable)
            return
        except NotFoundError:
            await asyncio.sleep(0.2)
    raise AssertionError(f"no consumer {durable} on {stream} after 60 s")


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    root = tmp_path_factory.mktemp("authors")
    site, logs = root / "site", root / "logs"
    site.mkdir()
    logs.mkdir()
    with nats_server() as nats:
        env = clean_env(
            NATS_URL=nats.url,
            SOMA_DATA_DIR=str(root / "data"),
            SOMA_PROCESSES=SPEC,
            PYTHONPATH=f"{ROOT}:{site}",
        )
        procs = {"sagas": _start("sagas", env, logs)}
        try:
            # The runner is up first; the authors' packages arrive afterwards.
            asyncio.run(_ready(nats.url, [(STREAMS["evt"], "sagas-events")]))
            assert install_examples(root) == site
            for name in ("billing", "shipping"):
                procs[name] = _start(name, env, logs)
            asyncio.run(
                _ready(nats.url, [(STREAMS["cmd"], "billing"), (STREAMS["cmd"], "shipping-quote")])
            )
            yield System(nats, env, procs)
        finally:
            stop_processes(procs.values())
            for name, proc in procs.items():
                if proc.returncode not in (0, -15):
                    print(f"--- {name} exited {proc.returncode}:")
                    print((logs / f"{name}.log").read_text()[-4000:])


async def _ready(url: str, consumers: list[tuple[str, str]]) -> None:
    nc = await connect(url, "authors-test")
    try:
        js = nc.jetstream()
        for stream, durable in consumers:
            await _wait_for_consumer(js, stream, durable)
    finally:
        with quiet_disconnect():
            await nc.close()


@pytest.fixture
async def js(system: System) -> AsyncIterator[JetStreamContext]:
    nc = await connect(system.nats.url, "authors-test")
    yield nc.jetstream()
    with quiet_disconnect():
        await nc.close()


def test_a_saga_from_the_authors_package_calls_their_handler_and_completes(
    system: System,
) -> None:
    order = {
        "order_id": "o-1",
        "lines": [{"sku": "mug", "quantity": 3, "unit_cents": 1250}],
        "tax_percent": 20,
    }
    done = system.soma(
        "saga",
        "start",
        "billing_order",
        json.dumps(order),
        "--tenant",
        "acme",
        "--wait",
        "--timeout",
        "60",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["state"] == "completed"
    assert outcome["result"] == {"order_id": "o-1", "total_cents": 4500, "state": "invoiced"}


def test_a_saga_calls_a_faststream_handler_and_completes(system: System) -> None:
    parcel = {"order_id": "o-2", "grams": 2100, "country": "de"}
    done = system.soma(
        "saga",
        "start",
        "shipping_order",
        json.dumps(parcel),
        "--tenant",
        "acme",
        "--wait",
        "--timeout",
        "60",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["result"] == {"order_id": "o-2", "cents": 1470, "carrier": "parcelco"}


async def _publish_raw(js: JetStreamContext, subject: str, body: dict, env: Envelope) -> None:
    await js.publish(subject, json.dumps(body).encode(), headers=env.to_headers())


async def _last(js: JetStreamContext, stream: str, subject: str) -> tuple[dict, dict]:
    deadline = time.monotonic() + 30
    while True:
        try:
            msg = await js.get_last_msg(stream, subject)
            return dict(msg.headers or {}), json.loads(msg.data or b"{}")
        except NotFoundError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_a_faststream_handlers_event_carries_somas_envelope(js: JetStreamContext) -> None:
    command_id = new_id()
    env = Envelope(
        message_id=command_id,
        correlation_id="corr-fs-1",
        tenant="envelope",
        actor="user:alice",
        schema="shipping.quote",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    await _publish_raw(
        js,
        "soma.cmd.envelope.shipping.quote",
        {"order_id": "o-3", "grams": 500, "country": "FR"},
        env,
    )
    headers, body = await _last(js, STREAMS["evt"], "soma.evt.envelope.shipping.quoted")
    assert body == {
        "order_id": "o-3",
        "cents": 520,
        "carrier": "parcelco",
        "quoted_for": "user:alice",
    }
    reply = Envelope.from_headers(headers)
    assert (reply.schema, reply.tenant, reply.actor) == (
        "shipping.quoted",
        "envelope",
        "user:alice",
    )
    assert reply.correlation_id == "corr-fs-1"
    assert reply.causation_id == command_id
    # Derived from the command's id: a redelivered command's reply is a server-side duplicate.
    assert headers["Nats-Msg-Id"] == f"{command_id}.reply"


async def test_a_faststream_handlers_refusal_is_its_services_failed_event(
    js: JetStreamContext,
) -> None:
    env = Envelope(
        message_id=new_id(), correlation_id="corr-fs-2", tenant="refused", schema="shipping.quote"
    )
    await _publish_raw(
        js,
        "soma.cmd.refused.shipping.quote",
        {"order_id": "o-4", "grams": 500, "country": "XX"},
        env,
    )
    headers, body = await _last(js, STREAMS["evt"], "soma.evt.refused.shipping.failed")
    assert body["command"] == "shipping.quote" and body["code"] == "invalid"
    assert body["retryable"] is False
    assert "no carrier ships to 'XX'" in body["error"]
    assert headers["Soma-Causation-Id"] == env.message_id


async def test_a_faststream_handler_dead_letters_a_schema_invalid_command(
    js: JetStreamContext,
) -> None:
    env = Envelope(
        message_id=new_id(), correlation_id="corr-fs-3", tenant="badbody", schema="shipping.quote"
    )
    await _publish_raw(js, "soma.cmd.badbody.shipping.quote", {"order_id": "o-5"}, env)
    headers, _ = await _last(js, STREAMS["dlq"], "soma.dlq.badbody.shipping")
    assert headers["Soma-Dlq-Reason"].startswith("schema-invalid shipping.quote")


async def test_an_unknown_event_is_not_a_dead_letter_for_a_follower_of_every_event(
    js: JetStreamContext,
) -> None:
    """The saga runner follows every event; one of a type nobody installed here is acked."""
    env = Envelope(
        message_id=new_id(), correlation_id="corr-x", tenant="mystery", schema="mystery.happened"
    )
    await _publish_raw(js, "soma.evt.mystery.mystery.happened", {"what": "x"}, env)
    stored = await js.get_last_msg(STREAMS["evt"], "soma.evt.mystery.mystery.happened")
    deadline = time.monotonic() + 30
    while True:
        info = await js.consumer_info(STREAMS["evt"], "sagas-events")
        if info.ack_floor.stream_seq >= stored.seq:
            break
        assert time.monotonic() < deadline, info
        await asyncio.sleep(0.1)
    with pytest.raises(NotFoundError):
        await js.get_last_msg(STREAMS["dlq"], "soma.dlq.mystery.sagas")


def test_soma_publish_knows_an_installed_packages_messages(system: System) -> None:
    sent = system.soma(
        "publish", "soma.cmd.cli.billing.invoice", json.dumps({"order_id": "o-6", "lines": []})
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "published billing.invoice" in sent.stdout


def test_the_schema_export_includes_an_installed_packages_messages(
    system: System, tmp_path: Path
) -> None:
    done = system.soma("schemas", "export", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    schema = json.loads((tmp_path / "shipping.quote.schema.json").read_text())
    assert set(schema["$defs"]["ShippingQuote"]["required"]) == {"order_id", "grams", "country"}
    assert "shipping.quote" in (tmp_path / "asyncapi.json").read_text()


def test_soma_tail_decodes_an_installed_packages_events(system: System) -> None:
    order = {"order_id": "o-7", "lines": [{"sku": "pen", "quantity": 2, "unit_cents": 300}]}
    started = system.soma(
        "saga", "start", "billing_order", json.dumps(order), "--tenant", "tailed", "--wait"
    )
    assert started.returncode == 0, started.stdout + started.stderr
    shown = system.soma(
        "tail", "soma.evt.tailed.>", "--all", "--type", "billing.*", "--json", "--until-idle", "1"
    )
    assert shown.returncode == 0, shown.stderr
    [line] = shown.stdout.strip().splitlines()
    event = json.loads(line)
    assert event["schema"] == "billing.invoiced"
    assert event["payload"]["total_cents"] == 600
