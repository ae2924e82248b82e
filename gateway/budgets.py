"""Budgets: a key's or a tenant's spend in its current window against its ``max_budget``.

A budget's windows follow one another from ``budget_start``, each ``budget_duration`` long; the
spend of the current window comes from the gateway's ``SpendLedger`` (see ``gateway.spend``), so
the check is a sum in memory and no bus round trip. A spent budget is refused with 429 in
OpenAI's error shape (``type: insufficient_quota``, ``code: budget_exceeded``), naming which
budget, how much of it is spent, and when it resets (also as ``Retry-After``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.errors import ApiError
from gateway.spend import SpendLedger
from schemas.durations import budget_window
from schemas.identity import Budget


@dataclass(frozen=True)
class Window:
    start: float
    resets_at: float | None  # None: a budget without a duration never resets


def window_of(budget: Budget, now: float) -> Window:
    """The window of ``budget`` that holds ``now``."""
    return Window(*budget_window(budget.budget_start, budget.budget_duration, now))


@dataclass(frozen=True)
class BudgetState:
    max_budget: float
    spent: float
    window: Window
    budget_duration: str | None

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.max_budget


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def budget_exceeded(whose: str, state: BudgetState, now: float) -> ApiError:
    per = f" per {state.budget_duration}" if state.budget_duration else ""
    message = (
        f"Budget exceeded: {whose} has spent ${state.spent:.4f} of its ${state.max_budget:.4f}"
        f"{per} budget."
    )
    headers: dict[str, str] = {}
    if state.window.resets_at is not None:
        wait = max(math.ceil(state.window.resets_at - now), 1)
        message += f" It resets at {_when(state.window.resets_at)} (in {wait} s)."
        headers["Retry-After"] = str(wait)
    else:
        message += " It does not reset: an admin can raise max_budget (PATCH /v1/admin/keys)."
    return ApiError(
        429, message, type="insufficient_quota", code="budget_exceeded", headers=headers
    )


class BudgetGuard:
    """Answers, from memory, whether a key and its tenant may start another request."""

    def __init__(self, ledger: SpendLedger, clock: Callable[[], float] = time.time) -> None:
        self.ledger = ledger
        self.clock = clock

    def key_state(self, key_id: str, budget: Budget) -> BudgetState:
        window = window_of(budget, self.clock())
        spent = self.ledger.key_spend(key_id, window.start, window.resets_at)
        return BudgetState(budget.max_budget, spent, window, budget.budget_duration)

    def tenant_state(self, tenant: str, budget: Budget) -> BudgetState:
        window = window_of(budget, self.clock())
        spent = self.ledger.tenant_spend(tenant, window.start, window.resets_at)
        return BudgetState(budget.max_budget, spent, window, budget.budget_duration)

    def admit(
        self,
        tenant: str,
        key_id: str | None,
        key_budget: Budget | None,
        tenant_budget: Budget | None,
    ) -> None:
        """Raise ``budget_exceeded`` when the key's or the tenant's budget is spent."""
        now = self.clock()
        if key_id and key_budget is not None:
            state = self.key_state(key_id, key_budget)
            if state.exhausted:
                raise budget_exceeded(f"API key {key_id}", state, now)
        if tenant_budget is not None:
            state = self.tenant_state(tenant, tenant_budget)
            if state.exhausted:
                raise budget_exceeded(f"tenant {tenant}", state, now)
