from __future__ import annotations

import pytest
import sqlalchemy as sa

from handlers.identity.api_keys import create_api_key, revoke_api_key, verify_api_key
from handlers.identity.errors import (
    InvalidInput,
    RefreshTokenExpired,
    RefreshTokenReused,
    RefreshTokenRevoked,
    TokenRevoked,
    UnknownRefreshToken,
)
from handlers.identity.tables import refresh_tokens
from handlers.identity.tokens import issue_tokens, refresh
from tests.identity.conftest import current_verifier, refresh_digest


async def test_a_refresh_returns_a_new_access_token_in_the_same_session(
    db, settings, keys, alice, now
):
    r1, r2 = refresh_digest(), refresh_digest()
    first = await issue_tokens(db, settings, alice, r1, now=now)

    second = await refresh(db, settings, r1, r2, now + 60)

    verifier = await current_verifier(db, settings, now + 60)
    principal = verifier.verify(second.access_token, now + 60)
    assert second.jti != first.jti
    assert second.session == first.session == principal.session
    assert (principal.tenant, principal.user, principal.roles) == ("acme", alice.user, ("member",))
    assert (second.tenant, second.user) == ("acme", alice.user)


async def test_only_the_given_hashes_are_stored(db, settings, keys, alice, now):
    r1, r2 = refresh_digest(), refresh_digest()
    await issue_tokens(db, settings, alice, r1, now=now)
    await refresh(db, settings, r1, r2, now + 1)

    async with db.connect() as conn:
        stored = (await conn.execute(sa.select(refresh_tokens.c.token_hash))).scalars().all()

    assert sorted(stored) == sorted([r1, r2])


async def test_a_reused_refresh_token_revokes_its_whole_family(db, settings, keys, alice, now):
    r1, r2 = refresh_digest(), refresh_digest()
    first = await issue_tokens(db, settings, alice, r1, now=now)
    second = await refresh(db, settings, r1, r2, now + 60)

    with pytest.raises(RefreshTokenReused):
        await refresh(db, settings, r1, refresh_digest(), now + 120)

    with pytest.raises(RefreshTokenRevoked):
        await refresh(db, settings, r2, refresh_digest(), now + 121)
    verifier = await current_verifier(db, settings, now + 121)
    for access_token in (first.access_token, second.access_token):
        with pytest.raises(TokenRevoked):
            verifier.verify(access_token, now + 121)


async def test_the_same_exchange_again_is_not_reuse(db, settings, keys, alice, now):
    r1, r2 = refresh_digest(), refresh_digest()
    first = await issue_tokens(db, settings, alice, r1, now=now)
    await refresh(db, settings, r1, r2, now + 1, command_id="cmd-1")

    again = await refresh(db, settings, r1, r2, now + 2, command_id="cmd-1")

    renewed = await refresh(db, settings, r2, refresh_digest(), now + 3)
    assert again.session == renewed.session == first.session


async def test_the_same_command_id_again_is_not_reuse(db, settings, keys, alice, now):
    r1, r2 = refresh_digest(), refresh_digest()
    await issue_tokens(db, settings, alice, r1, now=now)
    await refresh(db, settings, r1, r2, now + 1, command_id="cmd-1")

    again = await refresh(db, settings, r1, refresh_digest(), now + 2, command_id="cmd-1")

    assert (await refresh(db, settings, r2, refresh_digest(), now + 3)).session == again.session


async def test_a_reuse_leaves_other_sessions_of_the_user_alone(db, settings, keys, alice, now):
    stolen, other = refresh_digest(), refresh_digest()
    await issue_tokens(db, settings, alice, stolen, now=now)
    session = (await issue_tokens(db, settings, alice, other, now=now)).session
    await refresh(db, settings, stolen, refresh_digest(), now + 1)

    with pytest.raises(RefreshTokenReused):
        await refresh(db, settings, stolen, refresh_digest(), now + 2)

    renewed = await refresh(db, settings, other, refresh_digest(), now + 3)
    verifier = await current_verifier(db, settings, now + 3)
    assert verifier.verify(renewed.access_token, now + 3).session == session


async def test_an_expired_refresh_token_is_refused(db, settings, keys, alice, now):
    token = refresh_digest()
    await issue_tokens(db, settings, alice, token, now=now)

    with pytest.raises(RefreshTokenExpired):
        await refresh(db, settings, token, refresh_digest(), now + settings.refresh_ttl)


async def test_an_unknown_refresh_token_is_refused(db, settings, keys, alice, now):
    await issue_tokens(db, settings, alice, refresh_digest(), now=now)

    with pytest.raises(UnknownRefreshToken):
        await refresh(db, settings, refresh_digest(), refresh_digest(), now)


async def test_a_next_token_hash_already_in_use_is_refused(db, settings, keys, alice, now):
    r1, r2 = refresh_digest(), refresh_digest()
    await issue_tokens(db, settings, alice, r1, now=now)
    await issue_tokens(db, settings, alice, r2, now=now)

    with pytest.raises(InvalidInput):
        await refresh(db, settings, r1, r2, now + 1)


async def test_starting_a_session_twice_with_one_hash_keeps_one_family(
    db, settings, keys, alice, now
):
    token = refresh_digest()
    first = await issue_tokens(db, settings, alice, token, now=now)

    again = await issue_tokens(db, settings, alice, token, now=now + 1)

    assert again.session == first.session
    assert again.jti != first.jti


async def test_a_session_started_from_an_api_key_carries_the_key(db, settings, keys, alice, now):
    issued = await create_api_key(db, "acme", alice.user, models=["gpt-4o-mini"], now=now)
    principal = await verify_api_key(db, issued.key, now)
    token = refresh_digest()
    await issue_tokens(db, settings, principal, token, now=now)

    renewed = await refresh(db, settings, token, refresh_digest(), now + 1)

    claims = (await current_verifier(db, settings, now + 1)).verify(renewed.access_token, now + 1)
    assert claims.client_id == issued.info.id
    assert claims.key_id == issued.info.id
    assert claims.models == ("gpt-4o-mini",)


async def test_a_session_started_from_an_api_key_ends_with_the_key(db, settings, keys, alice, now):
    issued = await create_api_key(db, "acme", alice.user, now=now)
    principal = await verify_api_key(db, issued.key, now)
    token = refresh_digest()
    pair = await issue_tokens(db, settings, principal, token, now=now)

    await revoke_api_key(db, "acme", issued.info.id, settings, now=now + 2)

    with pytest.raises(TokenRevoked):
        (await current_verifier(db, settings, now + 3)).verify(pair.access_token, now + 3)
    with pytest.raises(RefreshTokenRevoked):
        await refresh(db, settings, token, refresh_digest(), now + 3)
