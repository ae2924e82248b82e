from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from handlers.identity.errors import NoSigningKey, UnknownSigningKey
from handlers.identity.signing_keys import (
    ensure_signing_keys,
    jwks,
    prune_signing_keys,
    rotate_keys,
)
from handlers.identity.tables import signing_keys
from handlers.identity.tokens import issue_access_token
from tests.identity.conftest import current_verifier


async def statuses(db) -> dict[str, str]:
    async with db.connect() as conn:
        rows = await conn.execute(sa.select(signing_keys.c.kid, signing_keys.c.status))
        return {row.kid: row.status for row in rows}


async def test_a_fresh_database_gets_an_active_and_a_published_next_key(db, settings, now):
    active = await ensure_signing_keys(db, settings, now)

    keys = await statuses(db)
    published = {k["kid"] for k in (await jwks(db, now))["keys"]}

    assert sorted(keys.values()) == ["active", "next"]
    assert keys[active] == "active"
    assert published == set(keys)


async def test_tokens_cannot_be_issued_before_any_key_exists(db, settings, alice, now):
    with pytest.raises(NoSigningKey):
        await issue_access_token(db, settings, alice, now=now)


async def test_rotation_promotes_the_published_next_key(db, settings, keys, now):
    upcoming = next(kid for kid, status in (await statuses(db)).items() if status == "next")

    active = await rotate_keys(db, settings, now + 10)

    after = await statuses(db)
    assert active == upcoming
    assert after[keys] == "retired"
    assert sorted(after.values()) == ["active", "next", "retired"]


async def test_ensure_rotates_only_once_the_period_is_over(db, settings, keys, now):
    assert await ensure_signing_keys(db, settings, now + settings.rotate_every - 1) == keys
    assert await ensure_signing_keys(db, settings, now + settings.rotate_every) != keys


async def test_a_rotated_out_key_still_verifies_its_unexpired_tokens(
    db, settings, keys, alice, now
):
    before = await issue_access_token(db, settings, alice, now=now)
    later = now + 600

    await rotate_keys(db, settings, later)
    after = await issue_access_token(db, settings, alice, now=later)
    verifier = await current_verifier(db, settings, later)

    assert verifier.verify(before.token, later).jti == before.jti
    assert verifier.verify(after.token, later).jti == after.jti


async def test_a_pruned_key_no_longer_verifies(db, settings, keys, alice, now):
    before = await issue_access_token(db, settings, alice, now=now)
    await rotate_keys(db, settings, now + 600)
    pruned_at = now + 600 + settings.revocation_ttl + 1

    await prune_signing_keys(db, pruned_at)

    assert keys not in await statuses(db)
    with pytest.raises(UnknownSigningKey):
        (await current_verifier(db, settings, pruned_at)).verify(before.token, now + 1)


async def test_a_retired_key_leaves_the_jwks_when_its_tokens_have_expired(db, settings, keys, now):
    await rotate_keys(db, settings, now)

    still = {k["kid"] for k in (await jwks(db, now + settings.revocation_ttl))["keys"]}
    gone = {k["kid"] for k in (await jwks(db, now + settings.revocation_ttl + 1))["keys"]}

    assert keys in still
    assert keys not in gone


async def test_processes_finding_rotation_due_together_rotate_once(db, settings, keys, now):
    due = now + settings.rotate_every

    results = await asyncio.gather(*(ensure_signing_keys(db, settings, due) for _ in range(4)))

    after = await statuses(db)
    assert sorted(after.values()) == ["active", "next", "retired"]
    assert set(results) == {next(kid for kid, s in after.items() if s == "active")}


async def test_concurrent_rotations_keep_one_active_and_one_next_key(db, settings, keys, now):
    await asyncio.gather(*(rotate_keys(db, settings, now + 10) for _ in range(4)))

    after = await statuses(db)
    assert sorted(s for s in after.values() if s != "retired") == ["active", "next"]


async def test_concurrent_first_starts_create_one_key_set(db, settings, now):
    results = await asyncio.gather(*(ensure_signing_keys(db, settings, now) for _ in range(4)))

    after = await statuses(db)
    assert sorted(after.values()) == ["active", "next"]
    assert set(results) == {next(kid for kid, s in after.items() if s == "active")}


async def test_private_keys_are_encrypted_with_the_passphrase(db, settings, alice, now):
    sealed = settings.model_copy(update={"key_passphrase": SecretStr("correct horse battery")})
    await ensure_signing_keys(db, sealed, now)

    async with db.connect() as conn:
        pems = (await conn.execute(sa.select(signing_keys.c.private_pem))).scalars().all()
    issued = await issue_access_token(db, sealed, alice, now=now)

    assert pems and all(p.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----") for p in pems)
    assert (await current_verifier(db, sealed, now)).verify(issued.token, now).jti == issued.jti
