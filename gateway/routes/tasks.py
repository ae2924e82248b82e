"""Agent tasks: long-running ``agent_task`` sagas started, inspected, signalled and cancelled.

Another tenant's task is not found: every query carries the caller's tenant and the saga store
answers only within it. Signals and cancellations are sent after such a query, so they too reach
only the caller's own tasks.

A start with an ``Idempotency-Key`` names its task by the request's stable id (unless the caller
names it) and uses the same start message id on every retry, with ``id_conflict="use_existing"``:
a retry after a gateway crash finds the task the first attempt started instead of a second one.
"""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any, Literal

import msgspec
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from bus.publish import envelope_for, publish
from gateway.auth import Principal
from gateway.context import Gateway, caller, gateway_of
from gateway.dispatch import Refused, refusal_error
from gateway.errors import ApiError, not_found, unavailable
from gateway.idempotency import attempt_of
from gateway.openai_bodies import ERRORS
from gateway.tool_names import task_input as with_tool_specs
from schemas.common import CommandFailed
from schemas.envelope import new_id
from schemas.sagas import (
    ENDED,
    IdConflict,
    SagaCancel,
    SagaInfo,
    SagaList,
    SagaListed,
    SagaQueried,
    SagaQuery,
    SagaSignal,
    SagaStart,
    SagaStarted,
    SagaState,
)
from schemas.tasks import AGENT_TASK_SIGNALS, AgentTaskInput

router = APIRouter(tags=["tasks"])

SAGA_TYPE = "agent_task"
# What starting a task awaits: the saga's start, or the refusal of its start command.
STARTED = ("sagas.started", "sagas.failed")
_ID = r"^[A-Za-z0-9_-]{1,64}$"


class TaskCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "input": {
                        "goal": "Summarise this week's incidents",
                        "max_steps": 3,
                        "tools": ["calculator", "current_time"],
                        "require_approval": True,
                    },
                    "id": "weekly-incidents",
                }
            ]
        },
    )
    input: dict[str, Any] = Field(
        description="The agent_task saga's input: `goal` (required), `model`, `max_steps`, "
        "`tools`, `require_approval`, `approval_timeout`, `user`, `budget`, `on_refusal`. "
        "`tools` takes registry tool names (`GET /v1/tools`: the task runs them) as well as "
        "full specs `{name, description, parameters}` of your own (the model may call them; "
        "the task does not run them); an unknown name is a 404 naming the known ones.",
    )
    id: str | None = Field(
        default=None, pattern=_ID, description="Your own id; starting it twice is refused."
    )


class TaskStep(BaseModel):
    at: float
    kind: str
    detail: str = ""


class Task(BaseModel):
    id: str
    object: Literal["task"] = "task"
    type: str
    state: str
    version: int = 1
    created_at: float = 0.0
    updated_at: float = 0.0
    input: dict[str, Any] = {}
    result: dict[str, Any] | None = None
    error: str | None = None
    waiting_for: list[str] = []
    history: list[TaskStep] | None = None


class TaskList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Task]
    next_cursor: str | None = None


class Signal(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"name": "approve", "payload": {"approved": True, "comment": "Ship it"}}]
        },
    )
    name: str = Field(
        min_length=1,
        max_length=100,
        description=f"The signal: {', '.join(AGENT_TASK_SIGNALS)} (with `require_approval`).",
    )
    payload: dict[str, Any] = Field(
        default={}, description="`approve` takes `approved` (true or false) and `comment`."
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
    object: Literal["task"] = "task"
    accepted: bool = True
    state: str


_AT = re.compile(r" - at `\$\.?(.*)`$")
_MISSING = re.compile(r"missing required field `([^`]+)`")


def _checked_input(raw: dict[str, Any]) -> None:
    """Refuse an input the saga would refuse, with the field named, before anything starts."""
    try:
        msgspec.convert(raw, AgentTaskInput)
    except msgspec.ValidationError as exc:
        text = str(exc)
        at = _AT.search(text)
        path = ["input", *([at.group(1)] if at and at.group(1) else [])]
        missing = _MISSING.search(text)
        if missing:
            path.append(missing.group(1))
        param = ".".join(path).replace(".[", "[")
        raise ApiError(400, f"Invalid task input: {_AT.sub('', text)}.", param=param) from exc


def _task(info: SagaInfo, with_history: bool = False) -> Task:
    return Task(
        id=info.saga_id,
        type=info.saga_type,
        state=info.state,
        version=info.version,
        created_at=info.created_at,
        updated_at=info.updated_at,
        input=info.input,
        result=info.result,
        error=info.error,
        waiting_for=info.waiting_for,
        history=[TaskStep(at=s.at, kind=s.kind, detail=s.detail) for s in info.history]
        if with_history
        else None,
    )


async def _find(gateway: Gateway, principal: Principal, task_id: str, history: bool) -> SagaInfo:
    answer = await gateway.dispatch.call(
        SagaQuery(saga_id=task_id, include_history=history),
        SagaQueried,
        tenant=principal.tenant,
        actor=principal.user,
    )
    if answer.saga is None or answer.saga.saga_type != SAGA_TYPE:
        raise not_found(f"No task with id '{task_id}'.", param="task_id")
    return answer.saga


@router.post(
    "/v1/tasks", response_model=Task, status_code=202, responses=ERRORS, summary="Start a task"
)
async def create_task(
    body: TaskCreate,
    request: Request,
    principal: Annotated[Principal, Depends(caller("tasks"))],
) -> Task:
    gateway = gateway_of(request)
    raw = await with_tool_specs(gateway.dispatch, principal, body.input)
    _checked_input(raw)
    # The task acts with the caller's role, whatever the input says; the tools and memory
    # processes hold each of its calls to that role (and to the caller's own memories). Its
    # model calls count against the caller's key, as a chat turn's do.
    task_input = {**raw, "role": principal.role or None, "key_id": principal.key_id}
    attempt = attempt_of(request.scope)
    if attempt is None:
        task_id = body.id or new_id()
        started = await gateway.dispatch.call(
            SagaStart(saga_type=SAGA_TYPE, saga_id=task_id, input=task_input),
            SagaStarted,
            tenant=principal.tenant,
            actor=principal.user,
            correlation_id=task_id,
        )
    else:
        task_id = body.id or attempt.request_id
        started = await _start_once(gateway, principal, task_id, task_input, attempt.request_id)
    # The stored instance, for its real timestamps and state (it may have moved on already).
    answer = await gateway.dispatch.call(
        SagaQuery(saga_id=started.saga_id),
        SagaQueried,
        tenant=principal.tenant,
        actor=principal.user,
    )
    if answer.saga is not None:
        return _task(answer.saga)
    return Task(
        id=started.saga_id,
        type=started.saga_type,
        state=SagaState.RUNNING,
        version=started.version,
        input=body.input,
    )


async def _start_once(
    gateway: Gateway, principal: Principal, task_id: str, raw: dict[str, Any], request_id: str
) -> SagaStarted:
    """Start the task, or find the one an earlier attempt of this request started.

    The start's message id is the same on every attempt: the server drops a re-publish within
    its dedup window (no reply comes then, so the saga is looked up), the saga runner's inbox
    answers a later one with ``sagas.started``.
    """
    dispatch = gateway.dispatch
    command = SagaStart(
        saga_type=SAGA_TYPE, saga_id=task_id, input=raw, id_conflict=IdConflict.USE_EXISTING
    )
    env = envelope_for(
        command,
        tenant=principal.tenant,
        actor=principal.user,
        correlation_id=task_id,
        message_id=f"{request_id}.start",
    )
    async with dispatch.requester.watching(task_id, STARTED) as events:
        try:
            published = await publish(dispatch.bus, command, env)
        except Exception as exc:
            raise unavailable("The message bus is not reachable.") from exc
        if published.duplicate:
            answer = await dispatch.call(
                SagaQuery(saga_id=task_id),
                SagaQueried,
                tenant=principal.tenant,
                actor=principal.user,
            )
            if answer.saga is not None:
                info = answer.saga
                return SagaStarted(
                    saga_id=info.saga_id, saga_type=info.saga_type, version=info.version
                )
        try:
            async with asyncio.timeout(dispatch.timeout):
                while True:
                    reply = await events.get()
                    if isinstance(reply.payload, SagaStarted):
                        return reply.payload
                    if (
                        isinstance(reply.payload, CommandFailed)
                        and reply.envelope.causation_id == env.message_id
                    ):
                        raise refusal_error(Refused(reply.payload))
        except TimeoutError:
            raise unavailable() from None


@router.get("/v1/tasks", response_model=TaskList, responses=ERRORS, summary="List tasks")
async def list_tasks(
    request: Request,
    principal: Annotated[Principal, Depends(caller("tasks"))],
    state: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    before: Annotated[str | None, Query(max_length=200)] = None,
) -> TaskList:
    if state is not None and state not in set(SagaState):
        raise ApiError(
            400,
            f"No task state '{state}'; choose from {', '.join(SagaState)}.",
            code="invalid_value",
            param="state",
        )
    listed = await gateway_of(request).dispatch.call(
        SagaList(saga_type=SAGA_TYPE, state=state, limit=limit, before=before),
        SagaListed,
        tenant=principal.tenant,
        actor=principal.user,
    )
    return TaskList(data=[_task(s) for s in listed.sagas], next_cursor=listed.next_cursor)


@router.get("/v1/tasks/{task_id}", response_model=Task, responses=ERRORS, summary="Get a task")
async def get_task(
    task_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(caller("tasks"))],
    history: bool = False,
) -> Task:
    return _task(await _find(gateway_of(request), principal, task_id, history), history)


@router.post(
    "/v1/tasks/{task_id}/signal",
    response_model=Accepted,
    status_code=202,
    responses=ERRORS,
    summary="Send a signal (e.g. an approval) to a task",
)
async def signal_task(
    task_id: str,
    body: Signal,
    request: Request,
    principal: Annotated[Principal, Depends(caller("tasks"))],
) -> Accepted:
    gateway = gateway_of(request)
    if body.name not in AGENT_TASK_SIGNALS:
        raise ApiError(
            400,
            f"A task takes no signal '{body.name}'; choose from {', '.join(AGENT_TASK_SIGNALS)}.",
            code="invalid_value",
            param="name",
        )
    task = await _find(gateway, principal, task_id, False)
    if task.state in ENDED:
        raise ApiError(409, f"Task '{task_id}' has already ended ({task.state}).", code="conflict")
    await gateway.dispatch.send(
        SagaSignal(saga_id=task_id, name=body.name, payload=body.payload),
        tenant=principal.tenant,
        actor=principal.user,
        correlation_id=task_id,
    )
    return Accepted(id=task_id, state=task.state)


@router.post(
    "/v1/tasks/{task_id}/cancel",
    response_model=Accepted,
    status_code=202,
    responses=ERRORS,
    summary="Cancel a task; its compensations run in reverse",
)
async def cancel_task(
    task_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(caller("tasks"))],
    body: Cancel | None = None,
) -> Accepted:
    gateway = gateway_of(request)
    task = await _find(gateway, principal, task_id, False)
    if task.state in ENDED:
        raise ApiError(409, f"Task '{task_id}' has already ended ({task.state}).", code="conflict")
    await gateway.dispatch.send(
        SagaCancel(saga_id=task_id, reason=body.reason if body else ""),
        tenant=principal.tenant,
        actor=principal.user,
        correlation_id=task_id,
    )
    return Accepted(id=task_id, state=task.state)
