"""A candidate shape, measured and not shipped: a whole full turn in one process.

    soma run bench.fused:build      # in place of policy, memory and slm, behind a pass-through
                                    # gateway (SOMA_CHAT_PIPELINE=passthrough)

``bench/gateway.py`` shows a full turn's shape costs more than 5 ms before any work is done (its
floor: the chain of bus hops and saga runner transitions). DESIGN.md ("The chat path") names the
shape that would go under it: one command to one process that checks the prompt, recalls,
asks the model and checks the answer in process, publishing each decision to SOMA_EVT as it
goes. In the product that process would break the layering (a handler never imports another),
so it is not built there. This builds it here, out of the policy, memory and slm services
themselves, unchanged: their own startup hooks and their own route functions, called in
process, so the figure is that shape's with every piece of their work done.

The turn: the prompt check and the recall at once; the model, with the recalled memories
before the conversation (as ``chat_turn`` puts them); the answer check; the answer; the memory
write after it. Each decision is published with the id the handler's own reply would have, under
the turn's correlation id, and the command is acknowledged once they are all stored.

A prototype's limits: no tool rounds, no redaction of the prompt, no streaming, no saga state:
a process killed mid-turn leaves the command to be redelivered and the turn run again (the
policy charge and the memory write are idempotent by their ids; the model would be asked
again). Those are what a product version must add, with its recovery argument.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from bus.consume import reply_id
from bus.publish import publish
from bus.service import Connected, Handler, Service
from handlers.memory import service as memory_service
from handlers.policy import service as policy_service
from handlers.slm import service as slm_service
from kernel.settings import Settings
from schemas.catalogue import of_type
from schemas.chat import memory_context
from schemas.envelope import Envelope
from schemas.memory import MemoryRecall, MemoryRecalled, MemoryStore
from schemas.policy import PolicyEvaluate, PolicyEvaluated
from schemas.slm import ChatMessage, SlmComplete, SlmCompleted


def build(settings: Settings, *, publish_answer: bool = False) -> Service:
    """The turn as the slm service's ``slm.complete``. ``publish_answer``: the turn publishes
    the model's answer (``slm.completed``, the reply id the command's own reply would have) as
    soon as it has it and waits for it with the decisions, for a caller that runs the turn
    without the bus runtime publishing its reply (``bench/nohop.py``)."""
    parts = [
        policy_service.build(settings),
        memory_service.build(settings),
        slm_service.build(settings),
    ]
    policy, memory, slm = parts
    check = policy.routes[PolicyEvaluate]
    recall = memory.routes[MemoryRecall]
    store = memory.routes[MemoryStore]
    model = slm.routes[SlmComplete]
    serving: list[Connected] = []
    writes: set[asyncio.Task[Any]] = set()

    async def start(bus: Connected) -> None:
        serving.append(bus)
        for part in parts:
            for hook in part.startup:
                await hook(bus)

    async def stop() -> None:
        if writes:
            await asyncio.wait(writes, timeout=10)
        for part in parts:
            for hook in part.shutdown:
                await hook()

    async def step(
        command: msgspec.Struct, name: str, handler: Handler, turn: Envelope
    ) -> tuple[Any, asyncio.Task[Any]]:
        """``handler``'s answer to ``command``, and the task publishing it as its event."""
        asked = turn.reply(of_type(type(command)).name, f"{turn.message_id}.{name}")
        answer = await handler(command, asked)
        told = asked.reply(of_type(type(answer)).name, reply_id(asked.message_id))
        return answer, asyncio.ensure_future(publish(serving[0], answer, told))

    async def complete(cmd: SlmComplete, env: Envelope) -> SlmCompleted:
        text = next((m.content for m in reversed(cmd.messages) if m.role == "user"), "") or ""
        (verdict, told_verdict), (recalled, told_recall) = await asyncio.gather(
            step(
                PolicyEvaluate(
                    stage="prompt",
                    text=text,
                    key_id=cmd.key_id,
                    tokens_requested=cmd.max_tokens or 0,
                ),
                "prompt",
                check,
                env,
            ),
            step(MemoryRecall(query=text, user=cmd.user, top_k=5), "recall", recall, env),
        )
        told = [told_verdict, told_recall]
        if verdict.decision == "deny":
            await asyncio.gather(*told)
            return refusal(cmd, verdict)
        answer = await model(with_memories(cmd, recalled), env)
        if publish_answer:
            reply = env.reply(of_type(SlmCompleted).name, reply_id(env.message_id))
            told.append(asyncio.ensure_future(publish(serving[0], answer, reply)))
        checked, told_check = await step(
            PolicyEvaluate(stage="answer", text=answer.message.content or ""), "answer", check, env
        )
        told.append(told_check)
        await asyncio.gather(*told)
        if checked.decision == "deny":
            return refusal(cmd, checked)
        write = MemoryStore(
            turn_id=env.correlation_id,
            text=f"user: {text}\nassistant: {answer.message.content or ''}",
            user=cmd.user,
            metadata={"model": cmd.model},
        )
        task = asyncio.ensure_future(remember(write, env))
        writes.add(task)
        task.add_done_callback(writes.discard)
        return answer

    async def remember(write: MemoryStore, env: Envelope) -> None:
        _, told = await step(write, "store", store, env)
        await told

    # The model list and the rest of slm's routes as slm serves them; a completion is the turn.
    return Service(
        name="slm",
        routes={**slm.routes, SlmComplete: complete},
        startup=[start],
        shutdown=[stop],
    )


def with_memories(cmd: SlmComplete, recalled: MemoryRecalled) -> SlmComplete:
    """The model's request with the recalled memories before the conversation, as the saga's."""
    context = memory_context(recalled)
    if context is None:
        return cmd
    told = ChatMessage(role="system", content=context)
    return msgspec.structs.replace(cmd, messages=[told, *cmd.messages])


def refusal(cmd: SlmComplete, verdict: PolicyEvaluated) -> SlmCompleted:
    text = "This request was refused by policy: " + ("; ".join(verdict.reasons) or "deny")
    return SlmCompleted(
        model=cmd.model,
        provider="policy",
        message=ChatMessage(role="assistant", content=text),
        finish_reason="content_filter",
        key_id=cmd.key_id,
    )
