"""A chat completion as a ``chat_turn`` saga: the request turned into its input, the saga started
with its id as correlation id, and its end (``sagas.finished``) turned into an answer or an error.

A request with an ``Idempotency-Key`` uses the request's stable id as saga id (``resumable``), so
its retry — on this gateway or on another one after a crash — never starts a second turn: the
start (same message id, ``id_conflict="use_existing"``) attaches to the running saga, and a saga
that has already ended is answered from the saga query, since its ``sagas.finished`` went by.

The turn's answer is its ``sagas.replied`` event, sent as soon as the answer is final; the saga
goes on to store the turn in memory and ends (``sagas.finished``) after that. A turn that ends
without replying (a refusal, a failure) is answered by its ``sagas.finished``. A retry finds the
answer in the saga's ``result`` as soon as it replied, ended or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgspec

from bus.publish import envelope_for, publish
from bus.request import Reply
from gateway.auth import Principal
from gateway.dispatch import Dispatch, Refused, current_request_id
from gateway.errors import ApiError, model_not_found, unavailable
from gateway.images import image_part
from gateway.openai_bodies import ChatCompletionRequest
from schemas.catalogue import of_type
from schemas.chat import ChatTurnInput, ChatTurnResult
from schemas.common import CommandFailed, FailureCode
from schemas.sagas import (
    ENDED,
    IdConflict,
    SagaCancel,
    SagaFinished,
    SagaQueried,
    SagaQuery,
    SagaReplied,
    SagaStart,
    SagaState,
)
from schemas.slm import ChatMessage, ImagePart, ToolCall, ToolSpec

log = logging.getLogger("soma.gateway.chat")

SAGA_TYPE = "chat_turn"


def _content(content: Any, index: int) -> tuple[str | None, list[ImagePart] | None]:
    """A message's text, and the images among its parts (``image_url``: https or data)."""
    if content is None or isinstance(content, str):
        return content, None
    texts: list[str] = []
    images: list[ImagePart] = []
    for j, part in enumerate(content):
        if part.type == "text" and part.text is not None:
            texts.append(part.text)
        elif part.type == "image_url" and part.image_url is not None:
            param = f"messages[{index}].content[{j}].image_url.url"
            images.append(image_part(part.image_url.url or "", param, part.image_url.detail))
        else:
            raise ApiError(
                400,
                f"Content parts of type '{part.type}' are not supported; send text parts "
                "and image_url parts.",
                param=f"messages[{index}].content",
                code="unsupported_content",
            )
    return "".join(texts), images or None


def _messages(body: ChatCompletionRequest) -> list[ChatMessage]:
    out = []
    for i, m in enumerate(body.messages):
        if m.role == "tool" and not m.tool_call_id:
            raise ApiError(
                400,
                "Messages with role 'tool' must have a 'tool_call_id'.",
                param=f"messages[{i}].tool_call_id",
                code="missing_required_parameter",
            )
        calls = None
        if m.tool_calls:
            if m.role != "assistant":
                raise ApiError(
                    400,
                    "Only assistant messages may carry 'tool_calls'.",
                    param=f"messages[{i}].tool_calls",
                )
            calls = [
                ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
                for c in m.tool_calls
            ]
        text, images = _content(m.content, i)
        if images and m.role != "user":
            raise ApiError(
                400,
                "Only user messages may carry images.",
                param=f"messages[{i}].content",
                code="unsupported_content",
            )
        out.append(
            ChatMessage(
                role="system" if m.role == "developer" else m.role,
                content=text,
                images=images,
                name=m.name,
                tool_call_id=m.tool_call_id,
                tool_calls=calls,
            )
        )
    return out


def turn_input(
    body: ChatCompletionRequest, principal: Principal, *, passthrough: bool = False
) -> ChatTurnInput:
    tools = [
        ToolSpec(
            name=t.function.name,
            description=t.function.description or "",
            parameters=t.function.parameters or {},
        )
        for t in body.tools or []
    ]
    choice = body.tool_choice
    if choice is not None and not isinstance(choice, str):
        if choice.function.name not in {t.name for t in tools}:
            raise ApiError(
                400,
                f"tool_choice names '{choice.function.name}', which is not in 'tools'.",
                param="tool_choice",
            )
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    if stop is not None and len(stop) > 4:
        raise ApiError(400, "'stop' takes at most 4 sequences.", param="stop")
    if body.n is not None and body.n > 1:
        raise ApiError(
            400,
            f"'n' is {body.n}, but one choice per request is served: send n=1 (or leave it "
            "out) and make a request per answer you want.",
            param="n",
            code="unsupported_value",
        )
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(400, "'top_logprobs' needs 'logprobs': true.", param="top_logprobs")
    return ChatTurnInput(
        model=body.model,
        messages=_messages(body),
        tools=tools,
        tool_choice=choice if choice is None or isinstance(choice, str) else choice.model_dump(),
        parallel_tool_calls=body.parallel_tool_calls if tools else None,
        logprobs=body.logprobs,
        top_logprobs=body.top_logprobs,
        temperature=body.temperature,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        stop=stop,
        seed=body.seed,
        response_format=body.response_format.model_dump(exclude_none=True)
        if body.response_format
        else None,
        user=body.user,
        session=body.session,
        stream=bool(body.stream),
        role=principal.role or "user",
        key_id=principal.key_id,
        use_memory=body.use_memory and not passthrough,
        use_policy=not passthrough,
    )


def resumable(saga_id: str) -> bool:
    """True when ``saga_id`` is the current idempotent request's own: an earlier attempt may
    have started it already."""
    return saga_id == current_request_id()


async def start(
    dispatch: Dispatch,
    principal: Principal,
    turn: ChatTurnInput,
    saga_id: str,
    events: asyncio.Queue[Reply] | None = None,
) -> None:
    """Publish the saga start; the caller already watches ``saga_id`` (``events``) so no event
    is missed. A resumable saga that an earlier attempt already finished is answered into
    ``events`` from the saga query."""
    again = resumable(saga_id)
    command = SagaStart(
        saga_type=SAGA_TYPE,
        saga_id=saga_id,
        input=msgspec.to_builtins(turn),
        id_conflict=IdConflict.USE_EXISTING if again else IdConflict.FAIL,
    )
    env = envelope_for(
        command,
        tenant=principal.tenant,
        actor=principal.user,
        correlation_id=saga_id,
        message_id=f"{saga_id}.start" if again else None,
    )
    try:
        await publish(dispatch.bus, command, env)
    except Exception as exc:
        log.warning("starting chat turn %s failed: %s", saga_id, exc)
        raise unavailable("The message bus is not reachable.") from exc
    if again and events is not None:
        ended = await finished(dispatch, principal, saga_id)
        if ended is not None:
            events.put_nowait(ended)


async def finished(dispatch: Dispatch, principal: Principal, saga_id: str) -> Reply | None:
    """The end of a saga that has already ended, as the event that told of it; else None.

    Asked after the start is published and while its events are watched: a saga not ended at
    this query sends its ``sagas.finished`` later, so one of the two always answers.
    """
    try:
        answer = await dispatch.ask(
            SagaQuery(saga_id=saga_id),
            SagaQueried,
            tenant=principal.tenant,
            actor=principal.user,
            correlation_id=f"{saga_id}.query",
        )
    except (ApiError, Refused) as exc:
        log.warning("asking for chat turn %s failed: %s", saga_id, exc)
        return None
    saga = answer.saga
    if saga is None:
        return None
    if saga.state not in ENDED:
        if saga.result is None:
            return None
        replied = SagaReplied(saga_id=saga.saga_id, saga_type=saga.saga_type, result=saga.result)
        env = envelope_for(replied, tenant=principal.tenant, correlation_id=saga_id)
        return Reply(env, of_type(SagaReplied).name, replied)
    event = SagaFinished(
        saga_id=saga.saga_id,
        saga_type=saga.saga_type,
        state=SagaState(saga.state),
        result=saga.result,
        error=saga.error,
        error_code=saga.error_code,
    )
    env = envelope_for(event, tenant=principal.tenant, correlation_id=saga_id)
    return Reply(env, of_type(SagaFinished).name, event)


async def cancel(dispatch: Dispatch, principal: Principal, saga_id: str, reason: str) -> None:
    command = SagaCancel(saga_id=saga_id, reason=reason)
    env = envelope_for(
        command, tenant=principal.tenant, actor=principal.user, correlation_id=saga_id
    )
    with contextlib.suppress(Exception):
        await publish(dispatch.bus, command, env)


def is_end(reply: Reply, saga_id: str) -> bool:
    """The saga's answer or its own end, or the refusal of its start; other services'
    ``failed`` events of the same correlation are steps the saga handles itself (retries,
    fallbacks)."""
    if isinstance(reply.payload, SagaFinished | SagaReplied):
        return reply.payload.saga_id == saga_id
    return isinstance(reply.payload, CommandFailed) and reply.payload.command == "sagas.start"


def failure_error(code: FailureCode | None, text: str, model: str) -> ApiError:
    """What a client sees of a turn that failed, by the failure's code (never its text)."""
    if code == FailureCode.NOT_FOUND:
        return model_not_found(model)
    if code == FailureCode.INVALID:
        return ApiError(400, text or "The request was refused.", code="invalid_value")
    return ApiError(
        502,
        "The model backend failed to complete the request.",
        type="server_error",
        code="upstream_error",
    )


def outcome(reply: Reply, model: str) -> ChatTurnResult:
    """The turn's result, or the ``ApiError`` its end stands for."""
    payload = reply.payload
    if isinstance(payload, CommandFailed):
        log.warning("chat turn refused: %s", payload.error)
        raise failure_error(payload.code, payload.error, model)
    if isinstance(payload, SagaReplied):
        payload = SagaFinished(
            saga_id=payload.saga_id,
            saga_type=payload.saga_type,
            state=SagaState.COMPLETED,
            result=payload.result,
        )
    assert isinstance(payload, SagaFinished)
    if payload.state != SagaState.COMPLETED or payload.result is None:
        log.warning("chat turn %s ended %s: %s", payload.saga_id, payload.state, payload.error)
        raise failure_error(payload.error_code, payload.error or payload.state, model)
    try:
        return msgspec.convert(payload.result, ChatTurnResult)
    except msgspec.ValidationError as exc:
        log.error("chat turn %s result does not match ChatTurnResult: %s", payload.saga_id, exc)
        raise failure_error(None, "malformed result", model) from exc


CONSTITUTION_HEADER = "Soma-Constitution"


def named(result: ChatTurnResult) -> ChatTurnResult:
    """The result naming its constitution: the saga's word, or its last policy verdict's."""
    constitution = result.constitution or (result.policy and result.policy.constitution)
    if not constitution or constitution == result.constitution:
        return result
    return msgspec.structs.replace(result, constitution=constitution)


def constitution_headers(result: ChatTurnResult) -> dict[str, str]:
    return {CONSTITUTION_HEADER: result.constitution} if result.constitution else {}


def policy_denial(result: ChatTurnResult) -> ApiError | None:
    if result.finish_reason != "content_filter" or result.policy is None:
        return None
    reasons = "; ".join(result.policy.reasons) or "the content policy"
    return ApiError(
        400,
        f"The request was refused by policy: {reasons}.",
        code="content_filter",
        param="messages",
        headers=constitution_headers(result),
    )


# What a gateway follows of a chat turn: its answer and its end (or its start's refusal). Not
# its policy decisions: the saga's result names the constitution its checks were judged under,
# and each decision a gateway followed cost it a read and a decode in the middle of the turn.
EVENTS = (
    of_type(SagaReplied).name,
    of_type(SagaFinished).name,
    "sagas.failed",
)
