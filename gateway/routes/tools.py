"""Tools: list the registry, and invoke one directly — after the same policy check a model's
tool call gets, so a direct call is no way around the tenant's allow-lists. The tools process
checks the allow-list again for the caller's role; its refusal is a 403 here too."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from gateway.auth import Principal
from gateway.context import caller, gateway_of
from gateway.dispatch import Dispatch, derived_id
from gateway.errors import ApiError, not_found
from gateway.openai_bodies import ERRORS
from schemas.envelope import new_id
from schemas.policy import PolicyEvaluate, PolicyEvaluated
from schemas.tools import ToolInvoke, ToolResult, ToolsList, ToolsListed

router = APIRouter(tags=["tools"])


class ToolOut(BaseModel):
    name: str
    object: Literal["tool"] = "tool"
    description: str
    input_schema: dict[str, Any]


class ToolListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[ToolOut]


class Invocation(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"arguments": {"expression": "6 * 7"}, "call_id": "calc-1"}]
        },
    )
    arguments: dict[str, Any] = Field(
        default={}, description="The tool's arguments, as its `input_schema` (GET /v1/tools)."
    )
    call_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.:-]{1,128}$",
        description="Makes a retried call run once.",
    )


class InvocationResult(BaseModel):
    call_id: str
    object: Literal["tool.result"] = "tool.result"
    name: str
    ok: bool
    output: Any = None
    error: str | None = None
    duration_ms: float = 0.0


def _refused(name: str, reasons: str) -> ApiError:
    return ApiError(
        403,
        f"Calling '{name}' is refused by policy: {reasons or 'the tenant policy'}.",
        type="permission_error",
        code="policy_denied",
    )


def _unknown(name: str) -> ApiError:
    return not_found(
        f"No tool named '{name}'. GET /v1/tools lists the tools you may call.",
        code="tool_not_found",
        param="name",
    )


async def _exists(dispatch: Dispatch, principal: Principal, name: str) -> bool:
    """Whether the registry holds ``name`` at all (asked only when a call was refused, so a
    refusal of a tool that does not exist is a 404, not a 403)."""
    listed = await dispatch.call(
        ToolsList(role=None), ToolsListed, tenant=principal.tenant, actor=principal.user
    )
    return any(t.name == name for t in listed.tools)


@router.get("/v1/tools", response_model=ToolListOut, responses=ERRORS, summary="List tools")
async def list_tools(
    request: Request, principal: Annotated[Principal, Depends(caller("tools"))]
) -> ToolListOut:
    listed = await gateway_of(request).dispatch.call(
        ToolsList(role=principal.role or None),
        ToolsListed,
        tenant=principal.tenant,
        actor=principal.user,
    )
    return ToolListOut(
        data=[
            ToolOut(name=t.name, description=t.description, input_schema=t.input_schema)
            for t in listed.tools
        ]
    )


@router.post(
    "/v1/tools/{name}/invoke",
    response_model=InvocationResult,
    responses=ERRORS,
    summary="Invoke a tool",
)
async def invoke_tool(
    name: str,
    body: Invocation,
    request: Request,
    principal: Annotated[Principal, Depends(caller("tools"))],
) -> InvocationResult:
    gateway = gateway_of(request)
    dispatch = gateway.dispatch
    verdict = await dispatch.call(
        PolicyEvaluate(
            stage="tool_call",
            role=principal.role or "user",
            key_id=principal.key_id,
            tool_name=name,
            tool_arguments=body.arguments,
        ),
        PolicyEvaluated,
        tenant=principal.tenant,
        actor=principal.user,
    )
    if verdict.decision == "deny":
        if not await _exists(dispatch, principal, name):
            raise _unknown(name)
        raise _refused(name, "; ".join(verdict.reasons))
    result = await dispatch.call(
        ToolInvoke(
            call_id=body.call_id or derived_id("tools.invoke") or new_id(),
            name=name,
            arguments=body.arguments,
            role=principal.role or None,
            user=principal.user,
        ),
        ToolResult,
        tenant=principal.tenant,
        actor=principal.user,
        timeout=gateway.config.tool_timeout,
    )
    if result.code == "unknown_tool":
        raise _unknown(name)
    if result.refused_by is not None:
        raise _refused(name, result.error or result.refused_by)
    return InvocationResult(
        call_id=result.call_id,
        name=result.name,
        ok=result.ok,
        output=result.output,
        error=result.error,
        duration_ms=result.duration_ms,
    )
