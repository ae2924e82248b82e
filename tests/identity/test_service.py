from __future__ import annotations

import asyncio

import msgspec
import sqlalchemy as sa

from bus.connection import connect
from bus.service import Connected
from bus.streams import provision
from handlers.identity.config import IdentitySettings
from handlers.identity.service import build, maintain
from handlers.identity.signing_keys import ensure_signing_keys, jwks
from handlers.identity.tables import signing_keys
from kernel.settings import Settings
from schemas.catalogue import commands_of, of_type
from schemas.identity import JWKS_KEY, REVOCATIONS_BUCKET, IdentityJwksPublished
from tests.servers import NatsServer


async def test_startup_creates_the_key_set_and_shutdown_stops_maintenance(
    db, settings, database_url, nats: NatsServer
):
    bus_settings = Settings.model_validate({"DATABASE_URL": database_url, "NATS_URL": nats.url})
    nc = await connect(nats.url, "identity-test")
    await provision(nc.jetstream(), bus_settings)
    service = build(bus_settings, settings)

    for hook in service.startup:
        await hook(Connected(nc, nc.jetstream()))
    tasks_before = {t for t in asyncio.all_tasks() if "_maintain_forever" in repr(t.get_coro())}
    for hook in service.shutdown:
        await hook()

    assert service.name == "identity"
    assert len((await jwks(db))["keys"]) == 2
    assert len(tasks_before) == 1
    assert all(task.done() for task in tasks_before)
    await nc.close()


async def test_startup_publishes_the_key_set_to_the_gateways_bucket(
    db, settings, database_url, nats: NatsServer
):
    bus_settings = Settings.model_validate({"DATABASE_URL": database_url, "NATS_URL": nats.url})
    nc = await connect(nats.url, "identity-test")
    await provision(nc.jetstream(), bus_settings)
    service = build(bus_settings, settings)

    for hook in service.startup:
        await hook(Connected(nc, nc.jetstream()))
    try:
        kv = await nc.jetstream().key_value(REVOCATIONS_BUCKET)
        held = msgspec.json.decode((await kv.get(JWKS_KEY)).value, type=IdentityJwksPublished)
        assert held.keys == (await jwks(db))["keys"]
    finally:
        for hook in service.shutdown:
            await hook()
        await nc.close()


def test_every_identity_command_in_the_catalogue_has_a_route(database_url):
    service = build(Settings.model_validate({"DATABASE_URL": database_url}))

    routed = {of_type(t).name for t in service.routes}

    assert routed == {entry.name for entry in commands_of("identity")}


async def test_maintenance_rotates_a_key_whose_period_is_over(db, settings, now):
    stale = await ensure_signing_keys(db, settings, now - 100)
    short = settings.model_copy(update={"rotate_every": 50.0})

    await maintain(db, short)

    async with db.connect() as conn:
        query = sa.select(signing_keys.c.kid).where(signing_keys.c.status == "active")
        active = (await conn.execute(query)).scalar_one()
    assert active != stale


def test_settings_come_from_the_soma_jwt_environment(monkeypatch):
    monkeypatch.setenv("SOMA_JWT_TTL_SECONDS", "60")
    monkeypatch.setenv("SOMA_JWT_ROTATE_SECONDS", "3600")
    monkeypatch.setenv("SOMA_JWT_ISSUER", "https://id.example")

    config = IdentitySettings()

    assert (config.access_ttl, config.rotate_every) == (60, 3600)
    assert (config.issuer, config.audience) == ("https://id.example", "soma-gateway")


def test_defaults_follow_the_documented_values(monkeypatch):
    for name in ("SOMA_JWT_TTL_SECONDS", "SOMA_JWT_ROTATE_SECONDS", "SOMA_JWT_ISSUER"):
        monkeypatch.delenv(name, raising=False)

    config = IdentitySettings()

    assert (config.access_ttl, config.rotate_every, config.issuer) == (900, 86400, "soma")
