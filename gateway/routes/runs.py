"""Multi-agent runs: ``agent_run`` sagas created from a run definition, inspected step by step,
passed or stopped at their gates, and cancelled.

A definition comes as JSON or YAML (``Content-Type: application/yaml``) and is checked before
anything starts: an unknown agent, a cycle or a missing input is a 400 naming the place. The run
acts with the caller's role, whatever the body says. Another tenant's run is not found: every
query carries the caller's tenant. A gate signal is sent only while the run waits at a gate, and
is signed with the caller's user: approving or rejecting is recorded as theirs.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
import yaml
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from gateway.auth import Principal
from gateway.context import Gateway, caller, gateway_of
from gateway.errors import ApiError, not_found
from gateway.openai_bodies import ERRORS
from gateway.tool_names import run_input as with_tool_specs
from schemas.envelope import new_id
from schemas.runs import AgentRunInput
from schemas.sagas import (
    SagaCancel,
    SagaInfo,
    SagaList,
    SagaListed,
    SagaQueried,
    SagaQuery,
    SagaSignal,
    SagaStart,
    SagaStarted,
)

router = APIRouter(tags=["runs"])

SAGA_TYPE = "agent_run"
ENDED = frozenset(
    {"completed", "failed", "compensated", "compensation_failed", "cancelled", "terminated"}
)
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_AT = re.compile(r" - at `\$\.?(.*)`$")
_PLACE = re.compile(r"^([A-Za-z_]+(?:\[\d+\])?(?:\.[A-Za-z_]+(?:\[\d+\])?)*): ")

EXAMPLE = {
    "goal": "A short brief on durable execution engines",
    "agents": [
        {"name": "researcher", "role": "You find facts and sources.", "tools": ["http_fetch"]},
        {"name": "writer", "role": "You write clear prose for engineers."},
        {"name": "editor", "role": "You merge drafts into one brief."},
    ],
    "steps": [
        {"id": "research", "agent": "researcher", "task": "Collect the main facts"},
        {"id": "overview", "agent": "writer", "task": "Draft the overview", "needs": ["research"]},
        {
            "id": "tradeoffs",
            "agent": "writer",
            "task": "Draft the trade-offs",
            "needs": ["research"],
        },
        {
            "id": "edit",
            "agent": "editor",
            "task": "Edit both drafts into one brief",
            "needs": ["overview", "tradeoffs"],
            "gate": True,
        },
    ],
    "budget": {"max_tokens": 200000},
}


DEFINITION = (
    "A run definition: `goal`; `agents` (each a `name`, its `role`, `model`, `tools` — registry "
    "tool names or glob patterns, see `GET /v1/tools` — and `memory`); `steps` (each an `id`, "
    "its `agent`, the `task`, the steps it `needs`, `gate` to wait for approval); `mode` "
    "(`sequential`, `parallel`, `dag`), `report_step`, `budget`. An unknown agent, a cycle or "
    "a tool the registry lacks is refused, naming the place."
)


class RunStepView(BaseModel):
    id: str
    agent: str
    state: str
    task_id: str | None = None
    output: str | None = None
    error: str | None = None
    usage: dict[str, int] = {}
    cost_usd: float = 0.0
    approved_by: str | None = None


class RunView(BaseModel):
    id: str
    object: Literal["run"] = "run"
    state: str
    goal: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    waiting_for: list[str] = []
    gate: str | None = Field(default=None, description="The step waiting for approval, if any.")
    steps: list[RunStepView] | None = None
    report: str | None = None
    usage: dict[str, int] | None = None
    cost_usd: float | None = None
    error: str | None = None
    definition: dict[str, Any] | None = None


class RunList(BaseModel):
    object: Literal["list"] = "list"
    data: list[RunView]
    next_cursor: str | None = None


class GateDecision(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"approved": True, "comment": "The drafts look right"}]},
    )
    approved: bool = Field(description="true lets the gated step start; false ends the run.")
    comment: str = Field(
        default="", max_length=2000, description="Kept with the decision, as is its author."
    )


class Cancel(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"reason": "No longer needed"}]}
    )
    reason: str = Field(
        default="", max_length=1000, description="Why, kept with the cancelled instance."
    )


class Accepted(BaseModel):
    id: str
    object: Literal["run"] = "run"
    accepted: bool = True
    state: str


async def _definition(request: Request) -> dict[str, Any]:
    """The body as a mapping, read as YAML or JSON by its content type."""
    raw = await request.body()
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    try:
        if kind in YAML_TYPES:
            value = yaml.safe_load(raw.decode("utf-8"))
        else:
            value = msgspec.json.decode(raw)
    except (yaml.YAMLError, msgspec.DecodeError, UnicodeDecodeError) as exc:
        what = "YAML" if kind in YAML_TYPES else "JSON"
        raise ApiError(400, f"The body is not valid {what}: {exc}.") from exc
    if not isinstance(value, dict):
        raise ApiError(
            400, "The body must be a run definition (a mapping with goal, agents, steps)."
        )
    return value


def checked(raw: dict[str, Any]) -> AgentRunInput:
    """The definition, or a 400 that names the place and what to change."""
    try:
        return msgspec.convert(raw, AgentRunInput)
    except msgspec.ValidationError as exc:
        text = str(exc)
        at = _AT.search(text)
        place = at.group(1) if at else None
        if place is None:
            named = _PLACE.match(text)
            place = named.group(1) if named else None
        message = _AT.sub("", text)
        raise ApiError(400, f"Invalid run definition: {message}.", param=place) from exc


def _view(info: SagaInfo) -> RunView:
    data = info.data or {}
    definition = info.input
    steps = data.get("steps")
    if steps is None and info.data is not None:
        steps = {
            s["id"]: {"id": s["id"], "agent": s["agent"], "state": "pending"}
            for s in definition.get("steps", [])
        }
    result = info.result or {}
    return RunView(
        id=info.saga_id,
        state=info.state,
        goal=str(definition.get("goal", "")),
        created_at=info.created_at,
        updated_at=info.updated_at,
        waiting_for=info.waiting_for,
        gate=data.get("gate"),
        steps=[RunStepView(**s) for s in steps.values()] if steps is not None else None,
        report=result.get("report"),
        usage=result.get("usage") or data.get("usage"),
        cost_usd=result.get("cost_usd", data.get("cost_usd")),
        error=info.error,
        definition=definition if info.data is not None else None,
    )


async def _find(gateway: Gateway, principal: Principal, run_id: str) -> SagaInfo:
    answer = await gateway.dispatch.call(
        SagaQuery(saga_id=run_id, include_history=True),
        SagaQueried,
        tenant=principal.tenant,
        actor=principal.user,
    )
    if answer.saga is None or answer.saga.saga_type != SAGA_TYPE:
        raise not_found(f"No run with id '{run_id}'.", param="run_id")
    return answer.saga


def _running(run: SagaInfo) -> None:
    if run.state in ENDED:
        raise ApiError(
            409, f"Run '{run.saga_id}' has already ended ({run.state}).", code="conflict"
        )


@router.post(
    "/v1/runs",
    response_model=RunView,
    status_code=202,
    responses=ERRORS,
    summary="Start a multi-agent run from a definition (JSON or YAML)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"type": "object", "description": DEFINITION},
                    "example": EXAMPLE,
                },
                "application/yaml": {
                    "schema": {"type": "string", "description": DEFINITION},
                    "example": yaml.safe_dump(EXAMPLE, sort_keys=False),
                },
            },
        }
    },
)
async def create_run(
    request: Request,
    principal: Annotated[Principal, Depends(caller("tasks"))],
    run_id: Annotated[str | None, Query(alias="id", max_length=64)] = None,
) -> RunView:
    gateway = gateway_of(request)
    if run_id is not None and not _ID.match(run_id):
        raise ApiError(400, "The id may hold letters, digits, '-' and '_' only.", param="id")
    raw = await _definition(request)
    # The run acts with the caller's role and key, whatever the definition says.
    raw = {**raw, "role": principal.role or None, "key_id": principal.key_id}
    checked({**raw, "platform_tools": []})  # the definition's shape first, its tools after
    raw = await with_tool_specs(gateway.dispatch, principal, raw)
    checked(raw)
    run_id = run_id or new_id()
    await gateway.dispatch.call(
        SagaStart(saga_type=SAGA_TYPE, saga_id=run_id, input=raw),
        SagaStarted,
        tenant=principal.tenant,
        actor=principal.user,
        correlation_id=run_id,
    )
    return _view(await _find(gateway, principal, run_id))


@router.get("/v1/runs", response_model=RunList, responses=ERRORS, summary="List runs")
async def list_runs(
    request: Request,
    principal: Annotated[Principal, Depends(caller("tasks"))],
    state: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    before: Annotated[str | None, Query(max_length=200)] = None,
) -> RunList:
    listed = await gateway_of(request).dispatch.call(
        SagaList(saga_type=SAGA_TYPE, state=state, limit=limit, before=before),
        SagaListed,
        tenant=principal.tenant,
        actor=principal.user,
    )
    return RunList(data=[_view(s) for s in listed.sagas], next_cursor=listed.next_cursor)


@router.get(
    "/v1/runs/{run_id}",
    response_model=RunView,
    responses=ERRORS,
    summary="Get a run with each step's state and output",
)
async def get_run(
    run_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(caller("tasks"))],
) -> RunView:
    return _view(await _find(gateway_of(request), principal, run_id))


@router.post(
    "/v1/runs/{run_id}/signal",
    response_model=Accepted,
    status_code=202,
    responses=ERRORS,
    summary="Approve or reject the step a run waits for at its gate",
)
async def signal_run(
    run_id: str,
    body: GateDecision,
    request: Request,
    principal: Annotated[Principal, Depends(caller("tasks"))],
) -> Accepted:
    gateway = gateway_of(request)
    run = await _find(gateway, principal, run_id)
    _running(run)
    if "signal:gate" not in run.waiting_for:
        raise ApiError(
            409,
            f"Run '{run_id}' is not waiting at a gate; GET /v1/runs/{run_id} shows what it "
            "waits for.",
            code="conflict",
        )
    payload = {"approved": body.approved, "by": principal.user, "comment": body.comment}
    await gateway.dispatch.send(
        SagaSignal(saga_id=run_id, name="gate", payload=payload),
        tenant=principal.tenant,
        actor=principal.user,
        correlation_id=run_id,
    )
    return Accepted(id=run_id, state=run.state)


@router.post(
    "/v1/runs/{run_id}/cancel",
    response_model=Accepted,
    status_code=202,
    responses=ERRORS,
    summary="Cancel a run: its running steps are cancelled, finished ones undone in reverse",
)
async def cancel_run(
    run_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(caller("tasks"))],
    body: Cancel | None = None,
) -> Accepted:
    gateway = gateway_of(request)
    run = await _find(gateway, principal, run_id)
    _running(run)
    await gateway.dispatch.send(
        SagaCancel(saga_id=run_id, reason=body.reason if body else ""),
        tenant=principal.tenant,
        actor=principal.user,
        correlation_id=run_id,
    )
    return Accepted(id=run_id, state=run.state)
