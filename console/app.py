"""The console's composition root: ``create_app(settings)`` builds the FastAPI app — the page,
its JSON and server-sent-event API under ``/console/api`` — and ``serve(settings)`` runs it
(``soma run console``).

Errors have the API's shape, ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Annotated, Any

import httpx
import uvicorn
from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from nats.aio.client import Client as NATS
from pydantic import BaseModel, Field

from bus.connection import connect
from bus.errors import RequestTimeout
from bus.request import Requester
from console import bus_views, live, story
from console.access import AccessError, Operator, Sessions
from console.config import ConsoleConfig
from console.messages import Filters
from kernel.settings import Settings

log = logging.getLogger("soma.console")

# What the console passes through to the gateway, with the operator's own credential: the
# API's authorization decides, exactly as for any other client.
GATEWAY_PATHS = ("v1/usage", "v1/admin/tenants", "v1/admin/users", "v1/admin/keys", "v1/tasks")
STORY_LOOKBACK = timedelta(days=1)
# The credential, as the browser sends it on every call (no cookie: nothing to forge across sites).
Auth = Annotated[str | None, Header()]


@dataclass
class Console:
    config: ConsoleConfig
    nc: NATS
    requester: Requester
    gateway: httpx.AsyncClient
    sessions: Sessions

    @property
    def js(self) -> Any:
        return self.nc.jetstream()


def _error(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    kind = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}.get(
        status, "invalid_request_error" if status < 500 else "api_error"
    )
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": code}},
        status_code=status,
    )


def _since(text: str | None, default: datetime | None) -> datetime | None:
    if not text:
        return default
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise AccessError(
            400, f"since {text!r}: expected an ISO time such as 2026-11-30T10:00:00Z", "bad_since"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


class SignalBody(BaseModel):
    tenant: str | None = None
    name: str = Field(min_length=1, max_length=100)
    payload: dict[str, Any] = {}


class ReplayAll(BaseModel):
    tenant: str | None = None
    service: str | None = None
    text: str | None = None


def create_app(settings: Settings, config: ConsoleConfig | None = None) -> FastAPI:
    config = config or ConsoleConfig.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nc = await connect(settings.nats_url, "soma-console")
        requester = Requester(nc, nc.jetstream())
        await requester.start()
        client = httpx.AsyncClient(base_url=config.gateway_url, timeout=30.0)
        app.state.console = Console(
            config, nc, requester, client, Sessions(client, config.session_cache)
        )
        try:
            yield
        finally:
            await requester.close()
            await client.aclose()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.drain(), 5.0)

    app = FastAPI(title="Soma console", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(AccessError)
    async def _refused(_: Request, exc: AccessError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.code)

    @app.exception_handler(RequestTimeout)
    async def _timeout(_: Request, exc: RequestTimeout) -> JSONResponse:
        return _error(503, f"{exc}", "unavailable")

    @app.exception_handler(bus_views.NotAnswered)
    async def _unanswered(_: Request, exc: bus_views.NotAnswered) -> JSONResponse:
        return _error(503, f"{exc}", "unavailable")

    def console_of(request: Request) -> Console:
        console: Console = request.app.state.console
        return console

    async def operator_of(request: Request, authorization: str | None) -> Operator:
        return await console_of(request).sessions.operator(authorization)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/console/")

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        ok = bool(console_of(request).nc.is_connected)
        return JSONResponse({"nats": ok}, status_code=200 if ok else 503)

    @app.get("/console/api/session")
    async def session(request: Request, authorization: Auth = None) -> dict[str, Any]:
        """Who is signed in; 401 or 403 (a member's key) tell the page to stay on sign-in."""
        return (await operator_of(request, authorization)).public()

    @app.get("/console/api/events")
    async def events(
        request: Request,
        authorization: Auth = None,
        streams: Annotated[str, Query(max_length=20)] = "evt,cmd,dlq",
        tenant: Annotated[str | None, Query(max_length=100)] = None,
        service: Annotated[str, Query(max_length=100)] = "",
        type: Annotated[str, Query(max_length=200)] = "",
        correlation: Annotated[str, Query(max_length=200)] = "",
        text: Annotated[str, Query(max_length=500)] = "",
        since: Annotated[str | None, Query(max_length=40)] = None,
    ) -> StreamingResponse:
        operator = await operator_of(request, authorization)
        scope = operator.tenant_scope(tenant)
        kinds: list[str] = [k for k in ("evt", "cmd", "dlq") if k in streams.split(",")]
        if not kinds:
            raise AccessError(400, "streams: choose among evt, cmd, dlq", "bad_streams")
        filters = Filters(service=service, type=type, correlation=correlation, text=text)
        body = live.events(
            console_of(request).js,
            kinds,
            scope,
            _since(since, None),
            filters,
            request.is_disconnected,
        )
        return StreamingResponse(
            body,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.get("/console/api/story/{correlation}")
    async def request_story(
        correlation: str,
        request: Request,
        authorization: Auth = None,
        tenant: Annotated[str | None, Query(max_length=100)] = None,
        since: Annotated[str | None, Query(max_length=40)] = None,
    ) -> Any:
        operator = await operator_of(request, authorization)
        scope = operator.tenant_scope(tenant)
        start = _since(since, datetime.now(UTC) - STORY_LOOKBACK)
        assert start is not None
        steps = await story.collect(console_of(request).js, correlation, scope, start)
        if not steps:
            return _error(
                404,
                f"No command or event with correlation id {correlation!r} since "
                f"{start.isoformat(timespec='seconds')}; check the id (a chat completion's is "
                "its id without 'chatcmpl-') or reach further back with since.",
                "not_found",
                "correlation",
            )
        return {"correlation_id": correlation, "steps": steps}

    @app.get("/console/api/sagas")
    async def sagas(
        request: Request,
        authorization: Auth = None,
        tenant: Annotated[str | None, Query(max_length=100)] = None,
        type: Annotated[str | None, Query(max_length=100)] = None,
        state: Annotated[str | None, Query(max_length=40)] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        before: Annotated[str | None, Query(max_length=200)] = None,
    ) -> Any:
        operator = await operator_of(request, authorization)
        scope = operator.tenant_scope(tenant) or operator.tenant
        return await bus_views.list_sagas(
            console_of(request).requester,
            scope,
            operator.user,
            type or None,
            state or None,
            limit,
            before or None,
        )

    @app.get("/console/api/sagas/{saga_id}")
    async def saga(
        saga_id: str,
        request: Request,
        authorization: Auth = None,
        tenant: Annotated[str | None, Query(max_length=100)] = None,
    ) -> Any:
        operator = await operator_of(request, authorization)
        scope = operator.tenant_scope(tenant) or operator.tenant
        found = await bus_views.get_saga(
            console_of(request).requester, scope, operator.user, saga_id
        )
        if found is None:
            return _error(404, f"No saga {saga_id!r} in tenant {scope!r}.", "not_found")
        return found

    @app.get("/console/api/dead-letters")
    async def dead_letters(
        request: Request,
        authorization: Auth = None,
        tenant: Annotated[str | None, Query(max_length=100)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> Any:
        operator = await operator_of(request, authorization)
        scope = operator.tenant_scope(tenant)
        return {"data": await bus_views.dead_letters(console_of(request).js, scope, limit)}

    async def _own_letter(request: Request, operator: Operator, seq: int) -> Any:
        letter = await bus_views.dead_letter(console_of(request).js, seq)
        if letter is None or (
            not operator.sees_all_tenants and bus_views.letter_tenant(letter) != operator.tenant
        ):
            raise AccessError(404, f"No dead letter {seq} (replayed or purged?).", "not_found")
        return letter

    @app.post("/console/api/dead-letters/{seq}/replay")
    async def replay_one(seq: int, request: Request, authorization: Auth = None) -> Any:
        operator = await operator_of(request, authorization)
        await _own_letter(request, operator, seq)
        outcome = await bus_views.replay(console_of(request).js, seq)
        log.info(
            "dead letter %s replayed by %s/%s: %s", seq, operator.tenant, operator.user, outcome
        )
        return outcome

    @app.post("/console/api/dead-letters/replay")
    async def replay_all(body: ReplayAll, request: Request, authorization: Auth = None) -> Any:
        """Every dead letter the filters select (the tenant's own unless operator)."""
        operator = await operator_of(request, authorization)
        scope = operator.tenant_scope(body.tenant)
        letters = await bus_views.dead_letters(console_of(request).js, scope, 500)
        outcomes = []
        for letter in letters:
            if body.service and letter["service"] != body.service:
                continue
            if body.text and body.text.lower() not in str(letter).lower():
                continue
            outcomes.append(await bus_views.replay(console_of(request).js, letter["seq"]))
        return {"data": outcomes}

    @app.get("/console/api/streams")
    async def streams(request: Request, authorization: Auth = None) -> Any:
        operator = await operator_of(request, authorization)
        console_of(request).sessions.require_operator(operator, "The streams' state")
        return {"data": await bus_views.streams(console_of(request).nc), "at": datetime.now(UTC)}

    @app.api_route("/console/api/gateway/{path:path}", methods=["GET", "POST", "DELETE"])
    async def through_gateway(path: str, request: Request, authorization: Auth = None) -> Response:
        """The API's own routes for tasks, usage, keys and tenants, called with the signed-in
        credential: what the API refuses, the console refuses."""
        operator = await operator_of(request, authorization)
        segments = path.split("/")
        if any(s in ("", ".", "..") for s in segments) or not any(
            path == p or path.startswith(p + "/") for p in GATEWAY_PATHS
        ):
            raise AccessError(
                404, f"The console does not pass {path!r} to the gateway.", "not_found"
            )
        answer = await console_of(request).gateway.request(
            request.method,
            "/" + path,
            params=list(request.query_params.multi_items()),
            content=await request.body(),
            headers={
                "Authorization": f"Bearer {operator.credential}",
                "Content-Type": request.headers.get("content-type", "application/json"),
            },
        )
        return Response(
            answer.content,
            status_code=answer.status_code,
            media_type=answer.headers.get("content-type", "application/json"),
        )

    @app.middleware("http")
    async def same_origin_only(request: Request, call_next: Any) -> Response:
        """The page loads nothing from elsewhere and may not be framed: what it shows comes
        from the bus, written by anyone who can publish, so nothing in it may run or load."""
        response: Response = await call_next(request)
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
            "base-uri 'none'; form-action 'self'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    static = resources.files("console") / "static"
    app.mount("/console", StaticFiles(directory=str(static), html=True), name="console")
    return app


async def serve(settings: Settings) -> None:
    """Run the console on its port until SIGINT/SIGTERM or until cancelled."""
    config = ConsoleConfig.from_settings(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, config),
            host=config.host,
            port=config.port,
            log_level="info",
            log_config=None,
            server_header=False,
            timeout_graceful_shutdown=5,
        )
    )
    log.info(
        "console on http://%s:%s/console/ (gateway %s)",
        config.host,
        config.port,
        config.gateway_url,
    )
    running = asyncio.create_task(server.serve())
    try:
        await asyncio.shield(running)
    except asyncio.CancelledError:
        server.should_exit = True
        await running
        raise
