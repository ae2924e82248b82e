"""Identity on a real nats-server reads the time from the clock the runtime hands it, so its
expiries are tested by moving that clock on, not by waiting them out.

The module has a database of its own: the moved clock would otherwise make other modules'
records look expired.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from bus import runtime
from bus.connection import connect
from bus.request import Requester
from handlers.identity.service import build
from kernel.settings import Settings
from schemas.common import CommandFailed
from schemas.identity import (
    IdentityKeyVerified,
    IdentityRefresh,
    IdentityRefreshed,
    IdentityTokenIssued,
    IdentityVerifyKey,
)
from tests.clock import Clock
from tests.identity.conftest import refresh_digest
from tests.identity.test_bus_routes import (
    CONFIG,
    Member,
    ask,
    issue,
    member_with_key,
    seed_operator,
)
from tests.servers import NatsServer, database, nats_server


@pytest.fixture(scope="module")
def bus_server() -> Iterator[NatsServer]:
    with nats_server() as server:
        yield server


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with database(request.param, tmp_path_factory.mktemp("expiry"), "identity.db") as url:
        yield url


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
async def requester(
    bus_server: NatsServer,
    database_url: str,
    clock: Clock,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Requester]:
    settings = Settings.model_validate(
        {
            "NATS_URL": bus_server.url,
            "DATABASE_URL": database_url,
            "SOMA_DATA_DIR": tmp_path_factory.mktemp("identity-expiry"),
        }
    )
    running = await runtime.start(build(settings, CONFIG), settings, clock=clock)
    await seed_operator(settings)
    nc = await connect(bus_server.url, "identity-expiry-test")
    caller = Requester(nc, nc.jetstream())
    await caller.start()
    yield caller
    await caller.close()
    await nc.close()
    await running.stop()


async def verify(requester: Requester, member: Member) -> IdentityKeyVerified:
    verdict = await ask(
        requester,
        IdentityVerifyKey(key_id=member.key.key_id, secret_sha256=member.key.secret_sha256),
    )
    assert isinstance(verdict, IdentityKeyVerified), verdict
    return verdict


async def test_a_key_verifies_until_its_expiry_and_is_refused_as_expired_after(
    requester: Requester, clock: Clock
) -> None:
    member = await member_with_key(requester, expires_at=clock() + 3600)
    clock.advance(3599)
    assert (await verify(requester, member)).valid

    clock.advance(2)
    verdict = await verify(requester, member)

    assert not verdict.valid
    assert verdict.reason == f"API key {member.key.key_id} expired"


async def test_a_refresh_token_past_its_lifetime_is_refused_as_expired(
    requester: Requester, clock: Clock
) -> None:
    member = await member_with_key(requester)
    token = refresh_digest()
    issued = await issue(requester, member, token)
    assert isinstance(issued, IdentityTokenIssued), issued

    clock.advance(CONFIG.refresh_ttl + 1)
    refused = await ask(
        requester, IdentityRefresh(refresh_sha256=token, new_refresh_sha256=refresh_digest())
    )

    assert isinstance(refused, CommandFailed), refused
    assert refused.code == "unauthenticated"
    assert refused.error == "refresh token expired"


async def test_a_refresh_token_within_its_lifetime_is_exchanged(
    requester: Requester, clock: Clock
) -> None:
    member = await member_with_key(requester)
    token = refresh_digest()
    await issue(requester, member, token)

    clock.advance(CONFIG.refresh_ttl - 1)
    refreshed = await ask(
        requester, IdentityRefresh(refresh_sha256=token, new_refresh_sha256=refresh_digest())
    )

    assert isinstance(refreshed, IdentityRefreshed), refreshed
