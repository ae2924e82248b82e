"""Revocations reach every gateway through identity's bucket, and an idle system stays silent.

The real identity process and real gateways on a nats-server of the module's own. Each
gateway loads the ``soma_revocations`` bucket when it starts and then watches it; nothing is
polled, so the event stream holds only what someone did.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Literal

import httpx
import jwt
import msgspec
import pytest
from nats.js import JetStreamContext

from bus import runtime
from bus.connection import connect
from bus.request import Requester
from bus.streams import provision
from gateway.tokens import AccessClaims, TokenRules, TokenVerifier
from handlers.identity.service import build
from kernel.settings import Settings
from schemas.catalogue import STREAMS
from schemas.identity import (
    REVOCATIONS_BUCKET,
    IdentityKeyRevoked,
    IdentityRevoke,
    IdentityRevoked,
    IdentityRevokeKey,
    Revocation,
    revocation_key,
)
from tests.gateway.serving import auth, gateway_config, served
from tests.identity.test_bus_routes import CONFIG, Member, ask, member_with_key, seed_operator
from tests.servers import NatsServer, nats_server

# What the brief of a revocation promises is a second; the margin is for a loaded test machine.
PROMISED = 1.0
MARGIN = 3.0
API_KEY_CACHE = 2.0


@pytest.fixture(scope="module")
def bus_server() -> Iterator[NatsServer]:
    with nats_server() as server:
        yield server


@pytest.fixture(scope="module")
def settings(bus_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data: Path = tmp_path_factory.mktemp("revocations")
    return Settings.model_validate({"NATS_URL": bus_server.url, "SOMA_DATA_DIR": data})


@pytest.fixture(scope="module")
async def requester(settings: Settings) -> AsyncIterator[Requester]:
    """The identity process, and a connection to ask it as the gateway or an admin would."""
    running = await runtime.start(build(settings, CONFIG), settings)
    await seed_operator(settings)
    nc = await connect(settings.nats_url or "", "revocations-test")
    caller = Requester(nc, nc.jetstream())
    await caller.start()
    yield caller
    await caller.close()
    await nc.close()
    await running.stop()


@pytest.fixture
async def member(requester: Requester) -> Member:
    return await member_with_key(requester)


def api_key(member: Member) -> str:
    return f"sk-soma-{member.key.key_id}-{member.key.secret}"


async def accepted(http: httpx.AsyncClient, credential: str) -> bool:
    """Whether the gateway lets ``credential`` in; the route asks no other process."""
    response = await http.post("/v1/auth/revoke", headers=auth(credential), json={"token": "-"})
    assert response.status_code in (200, 401), response.text
    return response.status_code == 200


async def access_token(http: httpx.AsyncClient, member: Member) -> str:
    response = await http.post("/v1/auth/token", headers=auth(api_key(member)))
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def _jti(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


async def seconds_until_refused(http: httpx.AsyncClient, credential: str, since: float) -> float:
    deadline = since + 10 * MARGIN
    while await accepted(http, credential):
        assert time.monotonic() < deadline, "never refused"
        await asyncio.sleep(0.01)
    return time.monotonic() - since


async def test_a_revoked_access_token_is_refused_by_every_gateway_within_a_second(
    requester: Requester, member: Member, settings: Settings
) -> None:
    async with (
        served(settings, gateway_config()) as first_url,
        served(settings, gateway_config()) as second_url,
        httpx.AsyncClient(base_url=first_url) as first,
        httpx.AsyncClient(base_url=second_url) as second,
    ):
        token = await access_token(first, member)
        assert await accepted(first, token) and await accepted(second, token)

        start = time.monotonic()
        revoked = await ask(
            requester, IdentityRevoke(jti=_jti(token)), tenant=member.tenant, actor=member.user
        )
        assert isinstance(revoked, IdentityRevoked) and revoked.revoked
        waits = await asyncio.gather(
            seconds_until_refused(first, token, start), seconds_until_refused(second, token, start)
        )

    print(f"revocation reached the gateways in {max(waits) * 1000:.0f} ms (promised < 1 s)")
    assert max(waits) < MARGIN


async def test_a_gateway_started_after_a_revocation_refuses_the_token(
    requester: Requester, member: Member, settings: Settings
) -> None:
    async with served(settings, gateway_config()) as url, httpx.AsyncClient(base_url=url) as http:
        token = await access_token(http, member)
    revoked = await ask(
        requester, IdentityRevoke(jti=_jti(token)), tenant=member.tenant, actor=member.user
    )
    assert isinstance(revoked, IdentityRevoked)

    async with served(settings, gateway_config()) as url, httpx.AsyncClient(base_url=url) as http:
        assert not await accepted(http, token), "refused from the first request on"


async def test_revoking_every_token_of_a_user_reaches_a_gateway_within_a_second(
    requester: Requester, member: Member, settings: Settings
) -> None:
    async with served(settings, gateway_config()) as url, httpx.AsyncClient(base_url=url) as http:
        token = await access_token(http, member)
        await asyncio.sleep(1.1)  # ``iat`` is whole seconds: the revocation must come after it
        assert await accepted(http, token)
        start = time.monotonic()
        revoked = await ask(
            requester, IdentityRevoke(user_id=member.user), tenant=member.tenant, actor=member.user
        )
        assert isinstance(revoked, IdentityRevoked)
        waited = await seconds_until_refused(http, token, start)

    print(f"user revocation reached the gateway in {waited * 1000:.0f} ms")
    assert waited < MARGIN


async def test_a_revoked_api_key_stops_working_within_the_verdict_cache_window(
    requester: Requester, member: Member, settings: Settings
) -> None:
    config = gateway_config(SOMA_API_KEY_CACHE_SECONDS=API_KEY_CACHE)
    async with served(settings, config) as url, httpx.AsyncClient(base_url=url) as http:
        key = api_key(member)
        assert await accepted(http, key)  # the verdict is cached from here
        start = time.monotonic()
        revoked = await ask(
            requester,
            IdentityRevokeKey(key_id=member.key.key_id),
            tenant=member.tenant,
            actor=member.admin,
        )
        assert isinstance(revoked, IdentityKeyRevoked), revoked
        waited = await seconds_until_refused(http, key, start)

    print(f"a revoked API key was refused after {waited:.2f} s (cache window {API_KEY_CACHE} s)")
    assert waited < API_KEY_CACHE + MARGIN


async def test_an_idle_system_writes_nothing_to_the_streams(
    requester: Requester, member: Member, settings: Settings
) -> None:
    async with served(settings, gateway_config()) as url, httpx.AsyncClient(base_url=url) as http:
        token = await access_token(http, member)
        assert await accepted(http, token)
        js = requester.js
        before = {name: (await js.stream_info(name)).state.last_seq for name in STREAMS.values()}
        await asyncio.sleep(5)
        after = {name: (await js.stream_info(name)).state.last_seq for name in STREAMS.values()}

    print(f"stream sequences over 5 idle seconds: {before} -> {after}")
    assert after == before


async def test_a_gateway_that_reconnects_loads_what_was_written_while_it_was_away(
    tmp_path: Path,
) -> None:
    """The server restarts (its consumers gone with it) and a revocation is written before the
    gateway is back: the gateway loads the bucket again on reconnecting, then keeps watching."""
    server = NatsServer(tmp_path).start()
    settings = Settings.model_validate({"NATS_URL": server.url, "SOMA_DATA_DIR": tmp_path})
    admin = await connect(server.url, "revocations-admin")
    await provision(admin.jetstream(), settings)
    await admin.close()
    gateway = await connect(server.url, "revocations-gateway")
    verifier = TokenVerifier(
        TokenRules(CONFIG.issuer, CONFIG.audience),
        await gateway.jetstream().key_value(REVOCATIONS_BUCKET),
        lambda: bool(gateway.is_connected),
        lambda: int(gateway.stats["reconnects"]),
    )
    try:
        await verifier.prime()
        server.stop()
        server = NatsServer(tmp_path, server.port).start()
        writer = await connect(server.url, "revocations-writer")
        start = time.monotonic()
        await _write(writer.jetstream(), "jti", "while-away")
        # Sooner than nats-py's own repair of a lost watch, after two missed heartbeats (10 s).
        async with asyncio.timeout(2 * MARGIN):
            while not verifier.revoked.revokes(_claims(jti="while-away")):
                await asyncio.sleep(0.02)
        reloaded = time.monotonic() - start
        await _write(writer.jetstream(), "session", "after-return")
        async with asyncio.timeout(MARGIN):
            while not verifier.revoked.revokes(_claims(session="after-return")):
                await asyncio.sleep(0.02)
        await writer.close()
    finally:
        await verifier.stop()
        await gateway.close()
        server.stop()

    print(f"after the server restarted the gateway had the revocation in {reloaded:.2f} s")


async def _write(js: JetStreamContext, kind: Literal["jti", "session"], subject: str) -> None:
    now = time.time()
    entry = Revocation(kind=kind, subject=subject, revoked_at=now, expires_at=now + 60)
    await js.publish(
        f"$KV.{REVOCATIONS_BUCKET}.{revocation_key(entry)}", msgspec.json.encode(entry), msg_ttl=60
    )


def _claims(jti: str = "j", session: str = "s") -> AccessClaims:
    now = time.time()
    return AccessClaims("u", "acme", (), (), None, jti, session, now, now + 60, None, None)
