"""``POST /v1/chat/completions``: OpenAI-compatible, streamed or not, tools included."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from gateway import chat_turns
from gateway.answers import completion_json
from gateway.auth import Principal
from gateway.context import caller, gateway_of
from gateway.errors import ApiError
from gateway.idempotency import attempt_of
from gateway.images import check_images
from gateway.openai_bodies import ERRORS, ChatCompletion, ChatCompletionRequest
from gateway.streaming import ChatStream, OpenAIChunks, SseResponse
from gateway.turns import complete, turn_for
from schemas.envelope import new_id

router = APIRouter(tags=["openai"])

# Roles that act for the tenant's end users and may name one in ``user``; the memory process
# still holds each turn to the tenant's memory grants.
_ACTS_FOR_OTHERS = frozenset({"admin", "service"})


def check_user(principal: Principal, user: str | None, param: str = "user") -> None:
    """A chat turn's memory is its ``user``'s: only the caller's own, unless it acts for others."""
    if user is None or user == principal.user or _ACTS_FOR_OTHERS & set(principal.roles):
        return
    raise ApiError(
        403,
        f"'{param}' must be your own user id: you may not act for another user.",
        type="permission_error",
        param=param,
        code="insufficient_permissions",
    )


_STREAM_DOC = {
    "description": "A completion; with `stream: true`, `text/event-stream` of "
    "`chat.completion.chunk` objects ending with `data: [DONE]`.",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses={**ERRORS, 200: _STREAM_DOC},
    summary="Create a chat completion",
)
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    principal: Annotated[Principal, Depends(caller("chat", tokens=True))],
) -> Response:
    check_user(principal, body.user)
    gateway = gateway_of(request)
    model = await gateway.models.require(body.model, principal)
    passthrough = gateway.config.chat_pipeline == "passthrough"
    turn = chat_turns.turn_input(body, principal, passthrough=passthrough)
    check_images(model, turn.messages)
    # With an Idempotency-Key every retry names the same turn, so none runs it twice.
    attempt = attempt_of(request.scope)
    turn_id = attempt.request_id if attempt is not None else new_id()
    config = gateway.config
    dispatch = gateway.dispatch
    if body.stream:
        stream = ChatStream(
            dispatch,
            gateway.limiter,
            principal,
            turn,
            turn_for(dispatch, principal, turn, turn_id, config.chat_pipeline, config.chat_timeout),
            out=OpenAIChunks(
                turn_id,
                body.model,
                include_usage=bool(body.stream_options and body.stream_options.include_usage),
            ),
            timeout=config.chat_timeout,
            keepalive=config.stream_keepalive,
        )
        await stream.open()
        return SseResponse(stream)
    result = await complete(
        dispatch, principal, turn, turn_id, config.chat_pipeline, config.chat_timeout
    )
    await gateway.limiter.record_tokens(
        principal, result.usage.prompt_tokens + result.usage.completion_tokens
    )
    denial = chat_turns.policy_denial(result)
    if denial is not None:
        raise denial
    return Response(
        completion_json(result, turn_id, body.model),
        media_type="application/json",
        headers=chat_turns.constitution_headers(result),
    )
