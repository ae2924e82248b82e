"""The usage report: the daily rollups summed over a window and grouped as asked.

What a row's ``requests``, ``errors`` and ``latency_ms_avg`` count depends on the grouping, because
a saga run and the model calls inside it are different requests:

* grouped by ``saga_type`` (and not by ``model``): saga runs — how many ran, how many failed,
  how long they took from start to end;
* any other grouping: model calls — completions and failed calls, and the provider's latency.

Tokens and cost are always those of the model calls; by saga type, of the calls made inside
sagas of that type. The window is whole UTC days, since the rollups are daily: the reported
``since`` and ``until`` are the bounds actually summed (``until`` exclusive).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, get_args

from sqlalchemy import ColumnElement, Subquery, case, func, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncEngine

from handlers.analytics.rollups import SUMS, day_of
from handlers.analytics.tables import MODEL, SAGA, unattributed, usage_daily
from schemas.analytics import GroupBy, UsageRow

# The report's dimensions; "tenant" is for operators, who see every tenant at once.
DIMENSIONS: tuple[str, ...] = ("tenant", *get_args(GroupBy))

# Report dimension -> column of the facts.
_COLUMNS = {
    "tenant": "tenant",
    "model": "model",
    "saga_type": "saga_type",
    "day": "day",
    "user": "actor",
    "key": "key_id",
}


def _facts() -> Subquery:
    """The rollups, and the model calls still waiting for their saga type (under "")."""
    daily = usage_daily.c
    waiting = unattributed.c
    return union_all(
        select(
            daily.tenant,
            daily.day,
            daily.kind,
            daily.model,
            daily.saga_type,
            daily.actor,
            daily.key_id,
            *(daily[s] for s in SUMS),
        ),
        select(
            waiting.tenant,
            waiting.day,
            literal(MODEL).label("kind"),
            waiting.model,
            literal("").label("saga_type"),
            waiting.actor,
            waiting.key_id,
            *(waiting[s] for s in SUMS),
        ),
    ).subquery("facts")


class InvalidWindow(ValueError):
    """A report window that cannot hold anything: ``since`` after ``until``."""


def start_of(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def window(since: float | None, until: float | None) -> tuple[date | None, date | None]:
    """The first and last UTC day that ``since`` … ``until`` touches (None: open)."""
    if since is not None and until is not None and since > until:
        raise InvalidWindow(f"since ({since}) is after until ({until})")
    return (
        None if since is None else day_of(since),
        None if until is None else day_of(until),
    )


def bounds(first: date | None, last: date | None) -> tuple[float | None, float | None]:
    """The epoch seconds a report over ``first`` … ``last`` covers, ``until`` exclusive."""
    return (
        None if first is None else start_of(first),
        None if last is None else start_of(last + timedelta(days=1)),
    )


def counts_saga_runs(group_by: Sequence[str]) -> bool:
    return "saga_type" in group_by and "model" not in group_by


async def report(
    engine: AsyncEngine,
    tenant: str | None,
    since: float | None,
    until: float | None,
    group_by: Sequence[str],
) -> list[UsageRow]:
    """Usage of ``tenant`` (every tenant when None) from ``since`` to ``until`` (epoch seconds).

    One row per group that has any usage, ordered by its dimension values. Each row's ``group``
    maps every dimension of ``group_by`` to its value; ``day`` as ``YYYY-MM-DD``.
    """
    dims = list(dict.fromkeys(group_by))
    unknown = [d for d in dims if d not in _COLUMNS]
    if unknown:
        choices = ", ".join(DIMENSIONS)
        raise ValueError(f"cannot group by {', '.join(unknown)}; choose from {choices}")
    first, last = window(since, until)
    row = _facts().c
    measured = SAGA if counts_saga_runs(dims) else MODEL

    def measure(column: ColumnElement[Any]) -> ColumnElement[Any]:
        return func.coalesce(func.sum(case((row.kind == measured, column), else_=0)), 0)

    keys = [row[_COLUMNS[d]].label(f"g_{d}") for d in dims]
    query = select(
        *keys,
        measure(row.requests).label("requests"),
        measure(row.errors).label("errors"),
        func.coalesce(func.sum(row.prompt_tokens), 0).label("prompt_tokens"),
        func.coalesce(func.sum(row.completion_tokens), 0).label("completion_tokens"),
        func.coalesce(func.sum(row.cost_usd), 0.0).label("cost_usd"),
        measure(row.latency_ms_sum).label("latency_ms_sum"),
        measure(row.latency_count).label("latency_count"),
        func.count().label("facts"),
    )
    if measured == MODEL:
        # Saga rows hold no tokens or cost: leave them out rather than show empty groups.
        query = query.where(row.kind == MODEL)
    if tenant is not None:
        query = query.where(row.tenant == tenant)
    if first is not None:
        query = query.where(row.day >= first)
    if last is not None:
        query = query.where(row.day <= last)
    if keys:
        query = query.group_by(*keys).order_by(*keys)
    async with engine.connect() as conn:
        found = (await conn.execute(query)).all()
    return [
        UsageRow(
            group={d: str(getattr(r, f"g_{d}")) for d in dims},
            requests=int(r.requests),
            errors=int(r.errors),
            prompt_tokens=int(r.prompt_tokens),
            completion_tokens=int(r.completion_tokens),
            cost_usd=float(r.cost_usd),
            latency_ms_avg=float(r.latency_ms_sum) / int(r.latency_count)
            if r.latency_count
            else 0.0,
        )
        for r in found
        if r.facts
    ]
