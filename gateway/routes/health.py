"""``/healthz`` (the process answers), ``/readyz`` (NATS and the database answer), ``/metrics``."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.context import gateway_of

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok", "service": "gateway"}


@router.get("/readyz", summary="Readiness: NATS and the database answer")
async def readyz(request: Request) -> JSONResponse:
    results: dict[str, bool] = {}
    for name, probe in gateway_of(request).ready_checks.items():
        try:
            results[name] = bool(await asyncio.wait_for(probe(), 2))
        except Exception:
            results[name] = False
    ok = all(results.values())
    return JSONResponse(
        {"status": "ready" if ok else "not ready", "checks": results},
        status_code=200 if ok else 503,
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
