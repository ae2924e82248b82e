from __future__ import annotations

import hashlib
import secrets

import pytest
import sqlalchemy as sa

from handlers.identity.api_keys import (
    check_api_key,
    create_api_key,
    hash_secret,
    list_api_keys,
    record_api_key,
    revoke_api_key,
    verify_api_key,
)
from handlers.identity.directory import create_tenant, create_user
from handlers.identity.errors import (
    ExpiredApiKey,
    InvalidInput,
    NotFound,
    RevokedApiKey,
    UnknownApiKey,
)
from handlers.identity.tables import api_keys


async def test_a_new_key_verifies_to_its_tenant_user_and_roles(db, alice, now):
    issued = await create_api_key(db, "acme", alice.user, "ci", now=now)

    principal = await verify_api_key(db, issued.key, now)

    assert issued.key.startswith(f"sk-soma-{issued.info.id}-")
    assert principal.tenant == "acme"
    assert principal.user == alice.user
    assert principal.roles == ("admin", "member")
    assert principal.models is None
    assert principal.key_id == issued.info.id


async def test_the_secret_is_shown_once_and_stored_only_as_a_hash(db, alice, now):
    issued = await create_api_key(db, "acme", alice.user, now=now)
    secret = issued.key.split("-", 3)[3]

    async with db.connect() as conn:
        rows = (await conn.execute(sa.select(api_keys))).all()
    listed = await list_api_keys(db, "acme")

    stored = " ".join(str(value) for row in rows for value in row)
    assert secret not in stored
    assert rows[0].secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert [k.id for k in listed] == [issued.info.id]
    assert secret not in repr(listed)
    assert listed[0].hint == f"sk-soma-{issued.info.id}-…"


async def test_a_wrong_secret_is_refused_as_unknown(db, alice, now):
    issued = await create_api_key(db, "acme", alice.user, now=now)
    prefix, secret = issued.key[:-43], issued.key[-43:]
    forged = prefix + ("A" if secret[0] != "A" else "B") + secret[1:]

    with pytest.raises(UnknownApiKey):
        await verify_api_key(db, forged, now)


@pytest.mark.parametrize(
    "key",
    ["", "sk-soma-", "sk-soma-0123456789abcdef-" + "A" * 43, "Bearer whatever", "sk-other-1-2"],
)
async def test_malformed_or_never_issued_keys_are_refused(db, alice, key):
    with pytest.raises(UnknownApiKey):
        await verify_api_key(db, key)


async def test_a_revoked_key_is_refused(db, settings, alice, now):
    issued = await create_api_key(db, "acme", alice.user, now=now)

    revoked = await revoke_api_key(db, "acme", issued.info.id, settings, now=now + 1)

    assert revoked.revoked_at == now + 1
    with pytest.raises(RevokedApiKey):
        await verify_api_key(db, issued.key, now + 2)


async def test_a_key_is_refused_once_expired(db, alice, now):
    issued = await create_api_key(db, "acme", alice.user, expires_at=now + 60, now=now)

    assert (await verify_api_key(db, issued.key, now + 59)).user == alice.user
    with pytest.raises(ExpiredApiKey):
        await verify_api_key(db, issued.key, now + 60)


async def test_a_key_limited_to_models_carries_the_limit(db, alice, now):
    issued = await create_api_key(db, "acme", alice.user, models=["gpt-4o-mini"], now=now)

    principal = await verify_api_key(db, issued.key, now)

    assert principal.models == ("gpt-4o-mini",)
    assert principal.may_use_model("gpt-4o-mini")
    assert not principal.may_use_model("gpt-4o")


async def test_a_key_may_narrow_but_not_widen_its_users_roles(db, alice, now):
    narrow = await create_api_key(db, "acme", alice.user, roles=["member"], now=now)

    assert (await verify_api_key(db, narrow.key, now)).roles == ("member",)
    with pytest.raises(InvalidInput):
        await create_api_key(db, "acme", alice.user, roles=["member", "owner"], now=now)


async def test_a_tenant_cannot_revoke_another_tenants_key(db, settings, alice, now):
    issued = await create_api_key(db, "acme", alice.user, now=now)
    await create_tenant(db, "globex", now=now)
    await create_user(db, "globex", "mallory", ["admin"], now=now)

    with pytest.raises(NotFound):
        await revoke_api_key(db, "globex", issued.info.id, settings, now=now)
    assert (await verify_api_key(db, issued.key, now)).tenant == "acme"


async def test_a_key_for_a_user_of_another_tenant_is_not_created(db, alice, now):
    await create_tenant(db, "globex", now=now)

    with pytest.raises(NotFound):
        await create_api_key(db, "globex", alice.user, now=now)


async def test_a_key_recorded_from_its_secrets_hash_verifies_with_the_secret(db, alice, now):
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)

    info = await record_api_key(db, "acme", alice.user, key_id, hash_secret(secret), now=now)

    principal = await verify_api_key(db, f"sk-soma-{key_id}-{secret}", now)
    assert (principal.tenant, principal.user, principal.key_id) == ("acme", alice.user, info.id)


async def test_a_key_checked_under_another_tenant_is_unknown(db, alice, now):
    issued = await create_api_key(db, "acme", alice.user, now=now)
    secret_sha256 = hash_secret(issued.key[-43:])

    assert (await check_api_key(db, issued.info.id, secret_sha256, now, "acme")).user == alice.user
    with pytest.raises(UnknownApiKey):
        await check_api_key(db, issued.info.id, secret_sha256, now, "globex")


async def test_recording_a_key_with_a_malformed_id_or_hash_is_invalid(db, alice, now):
    with pytest.raises(InvalidInput):
        await record_api_key(db, "acme", alice.user, "XYZ", hash_secret("s"), now=now)
    with pytest.raises(InvalidInput):
        await record_api_key(db, "acme", alice.user, secrets.token_hex(8), "not-a-hash", now=now)
