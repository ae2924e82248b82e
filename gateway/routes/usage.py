"""``GET /v1/usage``: the tenant's tokens, cost and latency from the analytics service."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from gateway.auth import Principal
from gateway.context import caller, gateway_of
from gateway.openai_bodies import ERRORS
from schemas.analytics import AnalyticsReport, AnalyticsReported, GroupBy

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
    since: Annotated[float | None, Query(ge=0)] = None,
    until: Annotated[float | None, Query(ge=0)] = None,
    group_by: Annotated[list[GroupBy] | None, Query()] = None,
) -> UsageReport:
    report = await gateway_of(request).dispatch.call(
        AnalyticsReport(since=since, until=until, group_by=group_by or ["model"]),
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
