"""The gateway's spend ledger and budget windows, in memory: what the budget check sums."""

from __future__ import annotations

import pytest

from gateway.budgets import BudgetGuard, window_of
from gateway.errors import ApiError
from gateway.spend import SpendLedger
from schemas.identity import Budget

DAY = 86400.0
T0 = 1_800_000_000.0


def test_a_window_of_a_day_resets_a_day_after_its_start() -> None:
    budget = Budget(max_budget=1, budget_duration="1d", budget_start=T0)

    assert window_of(budget, T0 + 10).resets_at == T0 + DAY
    assert window_of(budget, T0 + DAY + 10).start == T0 + DAY


def test_a_completion_counted_twice_is_spent_once() -> None:
    ledger = SpendLedger(lookback=31 * DAY)

    assert ledger.record("m1", "acme", "k1", T0, 0.5)
    assert not ledger.record("m1", "acme", "k1", T0, 0.5)

    assert ledger.key_spend("k1", T0 - 1) == 0.5
    assert ledger.tenant_spend("acme", T0 - 1) == 0.5


def test_completions_arriving_out_of_order_sum_by_their_own_time() -> None:
    ledger = SpendLedger(lookback=31 * DAY)
    ledger.record("late", "acme", "k1", T0 + 30, 2.0)
    ledger.record("early", "acme", "k1", T0 + 10, 1.0)

    assert ledger.key_spend("k1", T0, T0 + 20) == 1.0
    assert ledger.key_spend("k1", T0 + 20) == 2.0
    assert ledger.key_spend("k1", T0) == 3.0


def test_a_spent_key_is_refused_until_its_window_resets() -> None:
    now = [T0 + 100]
    ledger = SpendLedger(lookback=31 * DAY)
    guard = BudgetGuard(ledger, lambda: now[0])
    budget = Budget(max_budget=1, budget_duration="1d", budget_start=T0)
    ledger.record("m1", "acme", "k1", T0 + 50, 1.25)

    with pytest.raises(ApiError) as refused:
        guard.admit("acme", "k1", budget, None)
    assert (refused.value.status, refused.value.code) == (429, "budget_exceeded")
    assert refused.value.headers["Retry-After"] == str(int(DAY - 100))
    now[0] = T0 + DAY
    guard.admit("acme", "k1", budget, None)
