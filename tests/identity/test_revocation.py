from __future__ import annotations

import pytest

from handlers.identity.directory import create_user
from handlers.identity.errors import NotFound, RefreshTokenRevoked, TokenRevoked
from handlers.identity.principal import Principal
from handlers.identity.revocation import prune, revocations_since, revoke, revoke_user
from handlers.identity.tokens import issue_access_token, issue_tokens, refresh
from handlers.identity.verify import RevocationUpdate
from tests.identity.conftest import current_verifier, refresh_digest


async def test_a_revoked_jti_is_refused_once_the_verifier_polls(db, settings, keys, alice, now):
    issued = await issue_access_token(db, settings, alice, now=now)
    other = await issue_access_token(db, settings, alice, now=now)
    verifier = await current_verifier(db, settings, now)

    await revoke(db, issued.jti, settings, now=now + 1)

    assert verifier.verify(issued.token, now + 1).jti == issued.jti  # not polled yet
    verifier.apply(await revocations_since(db, verifier.cursor, now + 2), now + 2)
    with pytest.raises(TokenRevoked):
        verifier.verify(issued.token, now + 2)
    assert verifier.verify(other.token, now + 2).jti == other.jti


async def test_revoking_a_user_refuses_their_earlier_tokens_only(db, settings, keys, alice, now):
    t = float(int(now))  # iat is whole seconds
    bob = await create_user(db, "acme", "bob", ["member"], now=t)
    bobs = await issue_access_token(
        db, settings, Principal(tenant="acme", user=bob.id, roles=("member",)), now=t
    )
    earlier = [await issue_access_token(db, settings, alice, now=t) for _ in range(2)]
    verifier = await current_verifier(db, settings, t)

    await revoke_user(db, "acme", alice.user, settings, now=t + 1.5)
    later = await issue_access_token(db, settings, alice, now=t + 2)
    verifier.apply(await revocations_since(db, verifier.cursor, t + 2), t + 2)

    for token in earlier:
        with pytest.raises(TokenRevoked):
            verifier.verify(token.token, t + 2)
    assert verifier.verify(later.token, t + 2).jti == later.jti
    assert verifier.verify(bobs.token, t + 2).user == bob.id


async def test_revoking_a_user_ends_their_refresh_sessions(db, settings, keys, alice, now):
    token = refresh_digest()
    await issue_tokens(db, settings, alice, token, now=now)

    await revoke_user(db, "acme", alice.user, settings, now=now + 1)

    with pytest.raises(RefreshTokenRevoked):
        await refresh(db, settings, token, refresh_digest(), now + 2)


async def test_revoking_a_user_of_another_tenant_is_not_found(db, settings, alice, now):
    with pytest.raises(NotFound):
        await revoke_user(db, "globex", alice.user, settings, now=now)


async def test_a_poll_with_a_cursor_skips_what_was_already_seen(db, settings, now):
    await revoke(db, "older-jti", settings, now=now - 100)
    await revoke(db, "old-jti", settings, now=now)
    first = await revocations_since(db, None, now)

    await revoke(db, "new-jti", settings, now=now + 100)
    second = await revocations_since(db, first.cursor, now + 100)

    assert first.complete and set(first.tokens) == {"older-jti", "old-jti"}
    assert not second.complete and "new-jti" in second.tokens
    assert "older-jti" not in second.tokens
    assert second.cursor == now + 100


async def test_revocations_are_forgotten_once_their_tokens_have_expired(db, settings, now):
    await revoke(db, "some-jti", settings, now=now)
    after = now + settings.revocation_ttl + 1

    await prune(db, after)

    assert (await revocations_since(db, None, now)).tokens == {}


async def test_the_verifier_forgets_revocations_past_their_expiry(db, settings, keys, now):
    verifier = await current_verifier(db, settings, now)
    verifier.apply(RevocationUpdate(tokens={"gone": now + 10, "kept": now + 100}), now + 50)

    verifier.apply(RevocationUpdate(), now + 50)

    assert set(verifier.revoked_tokens) == {"kept"}


async def test_a_complete_update_replaces_the_verifiers_revocations(db, settings, keys, now):
    verifier = await current_verifier(db, settings, now)
    verifier.apply(RevocationUpdate(tokens={"stale": now + 100}), now)

    verifier.apply(RevocationUpdate(tokens={"fresh": now + 100}, complete=True), now)

    assert set(verifier.revoked_tokens) == {"fresh"}


async def test_a_repeated_user_revocation_spares_tokens_issued_after_the_first(
    db, settings, keys, alice, now
):
    t = float(int(now))
    await revoke_user(db, "acme", alice.user, settings, now=t + 1.5, command_id="cmd-7")
    later = await issue_access_token(db, settings, alice, now=t + 2)

    await revoke_user(db, "acme", alice.user, settings, now=t + 3.5, command_id="cmd-7")

    verifier = await current_verifier(db, settings, t + 4)
    assert verifier.verify(later.token, t + 4).jti == later.jti
