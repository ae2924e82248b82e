"""The chat turn: one request's lifecycle, from the caller's prompt to the reply.

    check the prompt (policy) and recall memories, at once ─deny→ reply with content_filter
      → ask the model
          ├─ caller's tool calls → reply with tool_calls
          ├─ platform tool calls → policy → tool → ask the model again (bounded)
          └─ answer → check the answer (policy) → reply → store the turn → end

The caller has its answer (``sagas.replied``) as soon as the answer check passes; the memory
write comes after it, and ``sagas.finished`` after that. A chat turn runs in group mode
(sagas/RECOVERY.md): its state is committed in group commits, off the turn's path. A recall
runs on the prompt as the caller sent it, beside its check; its memories are the caller's own
and are dropped unread when the check denies the prompt.

Token deltas of every model call go to ``soma.stream.<correlation id>`` when the caller streams.

Whose turn it is travels with every command: the caller's role (as the gateway authenticated it)
on each policy check, tool call and memory command, and the caller's user on each memory command
and tool call, so the policy, tools and memory processes each hold the turn to the tenant's
grants themselves. Memory is the caller's own — ``user`` of the input, else the user who started
the turn — unless the memory process finds the role granted tenant-wide memory.

A tool spec in the request is the caller's, whatever it is called: a call to it is handed back.
Only ``platform_tools`` (registry tools named by whoever started the turn, never by a request's
``tools``) run inside the turn, and a caller's spec of the same name shadows the platform tool.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from sagas.definition import (
    Action,
    Call,
    CallAll,
    Complete,
    Continue,
    Definition,
    Reply,
    Retry,
    Run,
)
from schemas.base import Usage
from schemas.chat import (
    ChatTurnInput,
    ChatTurnResult,
    last_user_text,
    memory_context,
    refusal,
    verdict_of,
    with_last_user_text,
)
from schemas.common import CommandFailed
from schemas.memory import MemoryRecall, MemoryRecalled, MemoryStore
from schemas.policy import PolicyEvaluate, PolicyEvaluated
from schemas.slm import ChatMessage, SlmComplete, SlmCompleted, ToolCall, ToolSpec
from schemas.tools import ToolInvoke, ToolResult

chat_turn: Definition[ChatTurnInput] = Definition(
    "chat_turn", version=2, input_type=ChatTurnInput, durability="group"
)

Turn = Run[ChatTurnInput]

QUICK = Retry(initial=0.2, max_attempts=3)


def _messages(run: Turn) -> list[ChatMessage]:
    raw = run.data.get("messages")
    if raw is None:
        return list(run.input.messages)
    return msgspec.convert(raw, list[ChatMessage])


def _save_messages(run: Turn, messages: list[ChatMessage]) -> None:
    run.data["messages"] = msgspec.to_builtins(messages)


def _judged(run: Turn, v: PolicyEvaluated) -> None:
    """Remember the constitution a check of this turn was judged under: the result names it."""
    if v.constitution:
        run.data["constitution"] = v.constitution


def _refusal(run: Turn, v: PolicyEvaluated) -> Complete:
    return Complete(
        refusal(
            run.input.model,
            v,
            _usage(run),
            run.data.get("cost_usd", 0.0),
            run.data.get("constitution"),
        )
    )


def _usage(run: Turn) -> Usage:
    u = run.data.get("usage", {})
    return Usage(
        prompt_tokens=u.get("prompt_tokens", 0), completion_tokens=u.get("completion_tokens", 0)
    )


def _platform_tools(run: Turn) -> list[ToolSpec]:
    """The platform tools this turn may run: those no caller tool of the same name shadows."""
    callers = {t.name for t in run.input.tools}
    return [t for t in run.input.platform_tools if t.name not in callers]


def _owner(run: Turn) -> str:
    """Whose memories the turn stores: the named user, else the user who started the turn."""
    return run.input.user or run.actor


def _stream_subject(run: Turn) -> str | None:
    return f"soma.stream.{run.correlation_id}" if run.input.stream else None


@chat_turn.start
def check_prompt(run: Turn) -> Action:
    messages = _messages(run)
    _save_messages(run, messages)
    text = last_user_text(messages)
    calls = []
    if run.input.use_policy:
        calls.append(
            Call(
                PolicyEvaluate(
                    stage="prompt",
                    text=text,
                    role=run.input.role,
                    key_id=run.input.key_id,
                    tokens_requested=run.input.max_tokens or 0,
                ),
                then=prepared,
                timeout=10,
                retry=QUICK,
            )
        )
    if run.input.use_memory and text:
        calls.append(
            Call(
                MemoryRecall(
                    query=text,
                    user=run.input.user,
                    session=run.input.session,
                    top_k=5,
                    caller_role=run.input.role,
                ),
                then=prepared,
                timeout=10,
                retry=QUICK,
                # A memory outage degrades the answer, it does not fail it.
                on_failure=prepared,
            )
        )
    return CallAll(calls, then=prepared)


@chat_turn.step
def prepared(run: Turn, replies: list[Any]) -> Action:
    recalled = None
    for r in replies:
        if isinstance(r, PolicyEvaluated):
            action = prompt_checked(run, r)
            if not isinstance(action, Continue):
                return action
        else:
            recalled = r
    return ask_model(run, recalled)


@chat_turn.step
def prompt_checked(run: Turn, verdict: PolicyEvaluated) -> Action:
    _judged(run, verdict)
    run.data["policy"] = msgspec.to_builtins(verdict_of(verdict))
    if verdict.decision == "deny":
        return _refusal(run, verdict)
    if verdict.decision == "redact" and verdict.redacted_text is not None:
        _save_messages(run, with_last_user_text(_messages(run), verdict.redacted_text))
    return Continue(then=recall)


@chat_turn.step
def recall(run: Turn) -> Action:
    query = last_user_text(_messages(run))
    if not run.input.use_memory or not query:
        return Continue(then=ask_model)
    return Call(
        MemoryRecall(
            query=query,
            user=run.input.user,
            session=run.input.session,
            top_k=5,
            caller_role=run.input.role,
        ),
        then=ask_model,
        timeout=10,
        retry=QUICK,
        on_failure=ask_model,  # a memory outage degrades the answer, it does not fail it
    )


@chat_turn.step
def ask_model(run: Turn, recalled: MemoryRecalled | CommandFailed | None = None) -> Action:
    if isinstance(recalled, MemoryRecalled):
        context = memory_context(recalled)
        if context:
            run.data["memory_context"] = context
    messages = _messages(run)
    if run.data.get("memory_context"):
        messages = [ChatMessage(role="system", content=run.data["memory_context"]), *messages]
    i = run.input
    return Call(
        SlmComplete(
            model=i.model,
            messages=messages,
            tools=[*i.tools, *_platform_tools(run)],
            tool_choice=i.tool_choice if run.data.get("rounds", 0) == 0 else None,
            parallel_tool_calls=i.parallel_tool_calls,
            logprobs=i.logprobs,
            top_logprobs=i.top_logprobs,
            temperature=i.temperature,
            max_tokens=i.max_tokens,
            stop=i.stop,
            seed=i.seed,
            response_format=i.response_format,
            user=i.user,
            stream_subject=_stream_subject(run),
            key_id=i.key_id,
        ),
        then=model_answered,
        timeout=180,
        retry=Retry(initial=0.5, max_attempts=3),
    )


@chat_turn.step
def model_answered(run: Turn, done: SlmCompleted) -> Action:
    usage = run.data.setdefault("usage", {"prompt_tokens": 0, "completion_tokens": 0})
    usage["prompt_tokens"] += done.usage.prompt_tokens
    usage["completion_tokens"] += done.usage.completion_tokens
    run.data["cost_usd"] = run.data.get("cost_usd", 0.0) + done.cost_usd
    run.data["model"] = done.model
    calls = done.message.tool_calls or []
    platform = {t.name for t in _platform_tools(run)}
    if calls and (
        any(c.name not in platform for c in calls)
        or run.data.get("rounds", 0) >= run.input.max_tool_rounds
    ):
        # The caller's tools run at the caller: hand the calls back, as OpenAI does.
        return _reply(run, done.message, "tool_calls")
    if calls:
        messages = _messages(run)
        messages.append(done.message)
        _save_messages(run, messages)
        run.data["pending_calls"] = msgspec.to_builtins(calls)
        run.data["rounds"] = run.data.get("rounds", 0) + 1
        return Continue(then=next_tool)
    run.data["answer"] = msgspec.to_builtins(done.message)
    run.data["finish_reason"] = done.finish_reason
    run.data["stop_sequence"] = done.stop_sequence
    run.data["logprobs"] = done.logprobs
    if not run.input.use_policy:
        return _answered(run)
    return Call(
        PolicyEvaluate(stage="answer", text=done.message.content or "", role=run.input.role),
        then=answer_checked,
        timeout=10,
        retry=QUICK,
    )


def _pending(run: Turn) -> list[ToolCall]:
    return msgspec.convert(run.data.get("pending_calls", []), list[ToolCall])


@chat_turn.step
def next_tool(run: Turn) -> Action:
    pending = _pending(run)
    if not pending:
        return Continue(then=ask_model)
    call = pending[0]
    try:
        arguments = json.loads(call.arguments or "{}")
    except json.JSONDecodeError:
        arguments = {"_unparsed": call.arguments}
    run.data["current_arguments"] = arguments
    return Call(
        PolicyEvaluate(
            stage="tool_call",
            role=run.input.role,
            tool_name=call.name,
            tool_arguments=arguments if isinstance(arguments, dict) else {"value": arguments},
        ),
        then=tool_checked,
        timeout=10,
        retry=QUICK,
    )


def _tool_message(run: Turn, call: ToolCall, content: str) -> Action:
    messages = _messages(run)
    messages.append(ChatMessage(role="tool", tool_call_id=call.id, name=call.name, content=content))
    _save_messages(run, messages)
    run.data["pending_calls"] = run.data["pending_calls"][1:]
    return Continue(then=next_tool)


@chat_turn.step
def tool_checked(run: Turn, verdict: PolicyEvaluated) -> Action:
    _judged(run, verdict)
    call = _pending(run)[0]
    if verdict.decision == "deny":
        run.data.setdefault("refused_tools", []).append(call.name)
        return _tool_message(run, call, "refused by policy: " + "; ".join(verdict.reasons))
    arguments = run.data.get("current_arguments")
    if verdict.decision == "redact" and verdict.redacted_text:
        arguments = json.loads(verdict.redacted_text)  # the arguments with the findings masked
    return Call(
        ToolInvoke(
            call_id=f"{run.saga_id}:{call.id}",
            name=call.name,
            arguments=arguments if isinstance(arguments, dict) else {},
            role=run.input.role,
            user=_owner(run),
        ),
        then=tool_done,
        timeout=120,
        retry=QUICK,
    )


@chat_turn.step
def tool_done(run: Turn, result: ToolResult) -> Action:
    call = _pending(run)[0]
    if result.refused_by is not None:
        run.data.setdefault("refused_tools", []).append(call.name)
        return _tool_message(run, call, result.error or f"refused by policy ({result.refused_by})")
    content = json.dumps(result.output) if result.ok else f"error: {result.error}"
    return _tool_message(run, call, content)


@chat_turn.step
def answer_checked(run: Turn, verdict: PolicyEvaluated) -> Action:
    _judged(run, verdict)
    if verdict.decision == "deny":
        return _refusal(run, verdict)
    if verdict.decision == "redact" and verdict.redacted_text is not None:
        run.data["answer"]["content"] = verdict.redacted_text
    return _answered(run)


def _answered(run: Turn) -> Action:
    """The answer is final: the caller gets it now, the memory write follows."""
    answer = msgspec.convert(run.data["answer"], ChatMessage)
    result = _reply(run, answer, run.data.get("finish_reason", "stop")).result
    if not run.input.use_memory:
        return Complete(result)
    return Reply(result, then=store_turn)


@chat_turn.step
def store_turn(run: Turn) -> Action:
    answer = msgspec.convert(run.data["answer"], ChatMessage)
    if not run.input.use_memory:
        return Continue(then=reply)
    text = f"user: {last_user_text(_messages(run))}\nassistant: {answer.content or ''}"
    return Call(
        MemoryStore(
            turn_id=run.saga_id,
            text=text,
            user=_owner(run),
            session=run.input.session,
            metadata={"model": run.input.model},
            caller_role=run.input.role,
        ),
        then=reply,
        timeout=10,
        retry=QUICK,
        on_failure=reply,  # the answer is ready; a memory outage must not lose it
    )


@chat_turn.step
def reply(run: Turn, stored: Any = None) -> Action:
    answer = msgspec.convert(run.data["answer"], ChatMessage)
    return _reply(run, answer, run.data.get("finish_reason", "stop"))


def _reply(run: Turn, message: ChatMessage, finish_reason: str) -> Complete:
    return Complete(
        ChatTurnResult(
            message=message,
            finish_reason=finish_reason,
            model=run.data.get("model", run.input.model),
            usage=_usage(run),
            cost_usd=run.data.get("cost_usd", 0.0),
            constitution=run.data.get("constitution"),
            stop_sequence=run.data.get("stop_sequence"),
            logprobs=run.data.get("logprobs"),
        )
    )
