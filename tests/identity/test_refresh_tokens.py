from __future__ import annotations

import hashlib

import pytest
import sqlalchemy as sa

from handlers.identity.api_keys import create_api_key, revoke_api_key, verify_api_key
from handlers.identity.errors import (
    RefreshTokenExpired,
    RefreshTokenReused,
    RefreshTokenRevoked,
    TokenRevoked,
    UnknownRefreshToken,
)
from handlers.identity.tables import refresh_tokens
from handlers.identity.tokens import issue_tokens, refresh
from tests.identity.conftest import current_verifier


async def test_a_refresh_returns_a_new_pair_in_the_same_session(db, settings, keys, alice, now):
    first = await issue_tokens(db, settings, alice, now=now)

    second = await refresh(db, settings, first.refresh_token, now + 60)

    verifier = await current_verifier(db, settings, now + 60)
    principal = verifier.verify(second.access_token, now + 60)
    assert second.refresh_token != first.refresh_token
    assert second.jti != first.jti
    assert second.session == first.session == principal.session
    assert (principal.tenant, principal.user, principal.roles) == ("acme", alice.user, ("member",))


async def test_refresh_tokens_are_stored_only_as_hashes(db, settings, keys, alice, now):
    pair = await issue_tokens(db, settings, alice, now=now)

    async with db.connect() as conn:
        stored = (await conn.execute(sa.select(refresh_tokens.c.token_hash))).scalars().all()

    assert stored == [hashlib.sha256(pair.refresh_token.encode()).hexdigest()]


async def test_a_reused_refresh_token_revokes_its_whole_family(db, settings, keys, alice, now):
    first = await issue_tokens(db, settings, alice, now=now)
    second = await refresh(db, settings, first.refresh_token, now + 60)

    with pytest.raises(RefreshTokenReused):
        await refresh(db, settings, first.refresh_token, now + 120)

    with pytest.raises(RefreshTokenRevoked):
        await refresh(db, settings, second.refresh_token, now + 121)
    verifier = await current_verifier(db, settings, now + 121)
    for access_token in (first.access_token, second.access_token):
        with pytest.raises(TokenRevoked):
            verifier.verify(access_token, now + 121)


async def test_a_reuse_leaves_other_sessions_of_the_user_alone(db, settings, keys, alice, now):
    stolen = await issue_tokens(db, settings, alice, now=now)
    other = await issue_tokens(db, settings, alice, now=now)
    await refresh(db, settings, stolen.refresh_token, now + 1)

    with pytest.raises(RefreshTokenReused):
        await refresh(db, settings, stolen.refresh_token, now + 2)

    renewed = await refresh(db, settings, other.refresh_token, now + 3)
    verifier = await current_verifier(db, settings, now + 3)
    assert verifier.verify(renewed.access_token, now + 3).session == other.session


async def test_an_expired_refresh_token_is_refused(db, settings, keys, alice, now):
    pair = await issue_tokens(db, settings, alice, now=now)

    with pytest.raises(RefreshTokenExpired):
        await refresh(db, settings, pair.refresh_token, now + settings.refresh_ttl)


async def test_an_unknown_refresh_token_is_refused(db, settings, keys, alice, now):
    await issue_tokens(db, settings, alice, now=now)

    with pytest.raises(UnknownRefreshToken):
        await refresh(db, settings, "rt-soma-made-up", now)


async def test_a_session_started_from_an_api_key_carries_the_key(db, settings, keys, alice, now):
    issued = await create_api_key(db, "acme", alice.user, models=["gpt-4o-mini"], now=now)
    principal = await verify_api_key(db, issued.key, now)
    pair = await issue_tokens(db, settings, principal, now=now)

    renewed = await refresh(db, settings, pair.refresh_token, now + 1)

    claims = (await current_verifier(db, settings, now + 1)).verify(renewed.access_token, now + 1)
    assert claims.client_id == issued.info.id
    assert claims.key_id == issued.info.id
    assert claims.models == ("gpt-4o-mini",)


async def test_a_session_started_from_an_api_key_ends_with_the_key(db, settings, keys, alice, now):
    issued = await create_api_key(db, "acme", alice.user, now=now)
    principal = await verify_api_key(db, issued.key, now)
    pair = await issue_tokens(db, settings, principal, now=now)

    await revoke_api_key(db, "acme", issued.info.id, settings, now=now + 2)

    with pytest.raises(TokenRevoked):
        (await current_verifier(db, settings, now + 3)).verify(pair.access_token, now + 3)
    with pytest.raises(RefreshTokenRevoked):
        await refresh(db, settings, pair.refresh_token, now + 3)
