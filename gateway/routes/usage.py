"""``GET /v1/usage``: the tenant's tokens, cost and latency from the analytics service."""

from __future__ import annotations

import time
from typing import Annotated, Literal, get_args

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from gateway.auth import Principal
from gateway.context import caller, gateway_of
from gateway.errors import ApiError
from gateway.openai_bodies import ERRORS
from schemas.analytics import AnalyticsReport, AnalyticsReported, GroupBy
from schemas.durations import BadDuration, moment

DIMENSIONS: tuple[str, ...] = get_args(GroupBy)
TIME_HELP = (
    "Unix seconds (1764460800), a duration ago (12h, 7d) or ISO 8601 (2026-11-25, "
    "2026-11-25T10:00:00Z; UTC unless it names a zone)."
)


def dimensions(given: list[str] | None) -> list[GroupBy]:
    """``group_by`` repeated (``?group_by=model&group_by=day``), comma-separated
    (``?group_by=model,day``) or both; an unknown name is a 400 naming the allowed ones."""
    names = list(
        dict.fromkeys(
            name.strip()
            for value in given or ["model"]
            for name in value.split(",")
            if name.strip()
        )
    )
    unknown = [n for n in names if n not in DIMENSIONS]
    if unknown:
        raise ApiError(
            400,
            f"Cannot group by {', '.join(unknown)}; choose from {', '.join(DIMENSIONS)}.",
            code="invalid_value",
            param="group_by",
        )
    return names or ["model"]  # type: ignore[return-value]


def when(name: str, value: str | None, now: float) -> float | None:
    if value is None or not value.strip():
        return None
    try:
        at = moment(value, now)
    except BadDuration as exc:
        raise ApiError(400, f"{name}: {exc}.", code="invalid_value", param=name) from None
    if at < 0:
        raise ApiError(400, f"{name} is before 1970.", code="invalid_value", param=name)
    return at


router = APIRouter(tags=["usage"])


class UsageRowOut(BaseModel):
    group: dict[str, str]
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float
    latency_ms_avg: float


class UsageReport(BaseModel):
    object: Literal["usage.report"] = "usage.report"
    since: float | None
    until: float | None
    data: list[UsageRowOut]


@router.get("/v1/usage", response_model=UsageReport, responses=ERRORS, summary="Usage report")
async def usage_report(
    request: Request,
    principal: Annotated[Principal, Depends(caller("usage"))],
    since: Annotated[str | None, Query(description=TIME_HELP)] = None,
    until: Annotated[str | None, Query(description=TIME_HELP)] = None,
    group_by: Annotated[
        list[str] | None,
        Query(description=f"Repeated or comma-separated: {', '.join(DIMENSIONS)}."),
    ] = None,
) -> UsageReport:
    now = time.time()
    report = await gateway_of(request).dispatch.call(
        AnalyticsReport(
            since=when("since", since, now),
            until=when("until", until, now),
            group_by=dimensions(group_by),
        ),
        AnalyticsReported,
        tenant=principal.tenant,
        actor=principal.user,
    )
    return UsageReport(
        since=report.since,
        until=report.until,
        data=[
            UsageRowOut(
                group=r.group,
                requests=r.requests,
                errors=r.errors,
                prompt_tokens=r.prompt_tokens,
                completion_tokens=r.completion_tokens,
                total_tokens=r.prompt_tokens + r.completion_tokens,
                cost_usd=r.cost_usd,
                latency_ms_avg=r.latency_ms_avg,
            )
            for r in report.rows
        ],
    )
