"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens``: Anthropic's Messages API, on the
same chat turn as ``/v1/chat/completions`` (``gateway.anthropic_turns`` translates), with
Anthropic's error shape (``gateway.anthropic_errors``) and SSE events
(``gateway.anthropic_stream``). ``anthropic-version`` is accepted and not needed: there is one
version of these shapes here.
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from gateway import anthropic_turns, chat_turns
from gateway.anthropic_bodies import (
    ERRORS,
    CountTokensRequest,
    MessageOut,
    MessagesRequest,
    TokenCount,
)
from gateway.anthropic_errors import AnthropicRoute
from gateway.anthropic_stream import AnthropicEvents
from gateway.auth import Principal
from gateway.context import caller, gateway_of
from gateway.idempotency import attempt_of
from gateway.images import check_images
from gateway.routes.chat import check_user
from gateway.streaming import ChatStream, SseResponse
from gateway.turns import complete, turn_for
from schemas.envelope import new_id

router = APIRouter(tags=["anthropic"], route_class=AnthropicRoute)

_STREAM_DOC = {
    "description": "A message; with `stream: true`, `text/event-stream` of Anthropic's events "
    "(message_start … message_stop).",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}


@router.post(
    "/v1/messages",
    response_model=MessageOut,
    responses={**ERRORS, 200: _STREAM_DOC},
    summary="Create a message (Anthropic Messages API)",
)
async def create_message(
    body: MessagesRequest,
    request: Request,
    principal: Annotated[Principal, Depends(caller("chat", tokens=True))],
) -> Response:
    check_user(principal, body.metadata.user_id if body.metadata else None, "metadata.user_id")
    gateway = gateway_of(request)
    model = await gateway.models.require(body.model, principal)
    passthrough = gateway.config.chat_pipeline == "passthrough"
    turn = anthropic_turns.turn_input(body, principal, passthrough=passthrough)
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
            out=AnthropicEvents(turn_id, body.model),
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
    answer = anthropic_turns.message_body(result, turn_id, body.model)
    return Response(
        json.dumps(answer),
        media_type="application/json",
        headers=chat_turns.constitution_headers(result),
    )


@router.post(
    "/v1/messages/count_tokens",
    response_model=TokenCount,
    responses=ERRORS,
    summary="Count a message's input tokens (Anthropic Messages API)",
)
async def count_tokens(
    body: CountTokensRequest,
    request: Request,
    principal: Annotated[Principal, Depends(caller("chat"))],
) -> TokenCount:
    await gateway_of(request).models.require(body.model, principal)
    return TokenCount(input_tokens=anthropic_turns.input_tokens(body))
