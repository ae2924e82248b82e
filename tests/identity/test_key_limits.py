"""A key's budget and limits: set when it is made, changed in place, checked where kept."""

from __future__ import annotations

import pytest

from handlers.identity.api_keys import (
    KeyLimits,
    create_api_key,
    get_api_key,
    revoke_api_key,
    update_api_key,
)
from handlers.identity.directory import create_tenant, set_tenant_budget
from handlers.identity.errors import AlreadyExists, InvalidInput


async def test_a_key_keeps_its_budget_limits_and_metadata(db, alice, now):
    limits = KeyLimits(
        max_budget=10,
        budget_duration="30d",
        rpm_limit=60,
        tpm_limit=1000,
        metadata={"team": "search"},
    )
    issued = await create_api_key(db, "acme", alice.user, now=now, limits=limits)

    key = await get_api_key(db, "acme", issued.info.id)

    assert key.budget is not None
    assert (key.budget.max_budget, key.budget.budget_duration, key.budget.budget_start) == (
        10,
        "30d",
        now,
    )
    assert (key.rpm_limit, key.tpm_limit, dict(key.metadata)) == (60, 1000, {"team": "search"})


async def test_a_changed_budget_starts_a_new_window_and_the_same_one_again_does_not(db, alice, now):
    issued = await create_api_key(
        db, "acme", alice.user, now=now, limits=KeyLimits(max_budget=10, budget_duration="1d")
    )
    key_id = issued.info.id

    same = await update_api_key(db, "acme", key_id, {"max_budget": 10}, now=now + 60)
    raised = await update_api_key(db, "acme", key_id, {"max_budget": 20}, now=now + 120)

    assert same.budget is not None and same.budget.budget_start == now
    assert raised.budget is not None and raised.budget.budget_start == now + 120


async def test_clearing_limits_removes_them_and_keeps_the_rest(db, alice, now):
    issued = await create_api_key(
        db, "acme", alice.user, now=now, limits=KeyLimits(max_budget=5, rpm_limit=10, tpm_limit=99)
    )

    key = await update_api_key(
        db, "acme", issued.info.id, {}, clear=["max_budget", "rpm_limit"], now=now
    )

    assert (key.budget, key.rpm_limit, key.tpm_limit) == (None, None, 99)


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"budget_duration": "monthly"}, "90s, 30m, 12h, 7d, 2w"),
        ({"max_budget": -1}, "zero or more"),
        ({"rpm_limit": 0}, "at least 1"),
        ({"roles": ["admin"]}, "cannot change roles"),
    ],
)
async def test_a_limit_it_cannot_keep_is_invalid_and_says_why(db, alice, now, changes, says):
    issued = await create_api_key(db, "acme", alice.user, now=now, limits=KeyLimits(max_budget=5))

    with pytest.raises(InvalidInput, match=says):
        await update_api_key(db, "acme", issued.info.id, changes, now=now)


async def test_a_revoked_key_is_not_changed(db, settings, alice, now):
    issued = await create_api_key(db, "acme", alice.user, now=now)
    await revoke_api_key(db, "acme", issued.info.id, settings, now)

    with pytest.raises(AlreadyExists, match="revoked"):
        await update_api_key(db, "acme", issued.info.id, {"rpm_limit": 5}, now=now)


async def test_a_tenant_budget_is_set_and_removed(db, now):
    await create_tenant(db, "capped", now=now)

    capped = await set_tenant_budget(db, "capped", 100, "30d", now)
    freed = await set_tenant_budget(db, "capped", None, None, now)

    assert capped.budget is not None and capped.budget.max_budget == 100
    assert freed.budget is None
