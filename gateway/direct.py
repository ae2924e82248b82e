"""Direct chat turns (``SOMA_CHAT_PIPELINE=direct``): the full turn's commands sent by the gateway
that holds the request, with no saga between them.

    check the prompt (policy) and recall memories, at once ─deny→ answer with content_filter
      → ask the model ─tool calls→ answer with them (they are the caller's)
      → check the answer (policy) → store the turn (memory) → answer

The same checks, recall, model call and memory write as the ``chat_turn`` saga, by the same
commands to the same processes, and the same trail in SOMA_EVT under the turn's id: each
process publishes its own decision there, and the gateway the turn's end
(``gateway.turn_finished``, where a saga's turn has ``sagas.finished``), by which analytics counts
it as a ``chat_turn`` run. What is left out is the saga runner, which stood
between every two of them: four transitions of a turn's chain, each a delivery to the runner,
a step and a publish (``bench/gateway.py``'s hop table).

Recovery. Each command's message id is derived from the turn id (``<turn>.prompt``,
``.recall``, ``.slm``, ``.answer``, ``.store``), and every handler acts once per message id, so
a command delivered again after a handler is killed has its effect once: the token charge, the
model call's usage, the memory write. A stored command is delivered until it is answered,
whichever handler process is killed. The turn's progress itself is held only by the gateway
that holds the caller's connection: if that gateway is killed, the caller's connection goes
with it, the commands already stored still run to their effects, and no memory write is sent
for an answer the caller never had (the write is stored before the answer is sent); the turn's
end, which this gateway would have published, comes from the saga runner once the turn's
deadline passes (sagas/turns.py). A request
with an ``Idempotency-Key`` asks for a turn that outlives its gateway, so it runs as the
``chat_turn`` saga, which a retry on any gateway attaches to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
from msgspec.structs import replace

from bus import tracing
from bus.publish import envelope_for, publish
from bus.request import Reply
from gateway import chat_turns, passthrough
from gateway.auth import Principal
from gateway.dispatch import Dispatch
from gateway.errors import ApiError, unavailable
from schemas.base import Usage
from schemas.catalogue import of_type
from schemas.chat import (
    ChatTurnFinished,
    ChatTurnInput,
    ChatTurnResult,
    last_user_text,
    memory_context,
    refusal,
    with_last_user_text,
)
from schemas.common import CommandFailed, FailureCode
from schemas.envelope import Envelope, turn_end_id, turn_step_id
from schemas.memory import MemoryRecall, MemoryRecalled, MemoryStore
from schemas.policy import PolicyEvaluate, PolicyEvaluated
from schemas.slm import ChatMessage, SlmComplete, SlmCompleted

log = logging.getLogger("soma.gateway.direct")

# The events a direct turn awaits: each command's answer, or its refusal.
CHAIN = (
    of_type(PolicyEvaluated).name,
    of_type(MemoryRecalled).name,
    of_type(SlmCompleted).name,
    "policy.failed",
    "memory.failed",
    "slm.failed",
)
# The end a direct turn puts in its caller's queue: not a bus event, the gateway's own word.
END = "gateway.turn_ended"
# How long after it was sent a recall is awaited (the saga's own bound): past it, the turn
# goes on without memories, as after a failed recall.
RECALL_TIMEOUT = 10.0
# The chains under way: the event loop keeps only weak references to tasks, and a chain goes on
# after a caller that went away has dropped its turn.
_chains: set[asyncio.Task[None]] = set()


class Failed(Exception):
    """A command of the turn was refused (its ``<service>.failed`` event)."""

    def __init__(self, failure: CommandFailed) -> None:
        super().__init__(failure.error)
        self.failure = failure


@dataclass
class DirectTurn:
    """One direct turn, as ``gateway.streaming`` and ``turns.complete`` drive a turn."""

    dispatch: Dispatch
    principal: Principal
    turn: ChatTurnInput
    id: str
    # The longest the turn's chain runs: a caller that went away does not leave it waiting on.
    timeout: float = 300.0
    # The caller's queue is given only the end; the chain follows its own events.
    events: tuple[str, ...] = ()
    _asked: dict[str, asyncio.Future[Any]] = field(default_factory=dict, init=False)
    # The answer that came last: the cause of the next command (its causation id).
    _latest: str | None = field(default=None, init=False)
    _sent: float = field(default=0.0, init=False)  # when the first commands went out
    _started: float = field(default=0.0, init=False)  # the same, as wall-clock time
    _task: asyncio.Task[None] | None = field(default=None, init=False)

    async def start(self, events: asyncio.Queue[Reply]) -> None:
        """Send the first commands; a bus that cannot take them is the caller's 503 now."""
        # The request's log lines name the turn, as a saga turn's do (its publish binds it in
        # the request's own task; these publishes run in tasks of their own).
        tracing.bind(self.id, self.principal.tenant)
        watch = self.dispatch.requester.watching(self.id, CHAIN)
        answers = await watch.__aenter__()
        self._sent = asyncio.get_running_loop().time()
        self._started = time.time()
        try:
            first = await asyncio.gather(
                *(_nothing() if c is None else self._send(c, s) for c, s in self._first_commands())
            )
        except BaseException:
            await watch.__aexit__(None, None, None)
            raise
        self._task = asyncio.ensure_future(self._run(watch, answers, first, events))
        _chains.add(self._task)
        self._task.add_done_callback(_chains.discard)

    def is_end(self, reply: Reply) -> bool:
        return reply.schema == END

    def outcome(self, reply: Reply) -> ChatTurnResult:
        if isinstance(reply.payload, ApiError):
            raise reply.payload
        result: ChatTurnResult = reply.payload
        return result

    async def cancel(self, reason: str) -> None:
        """Stop waiting: commands already sent still run to their effects."""
        log.info("direct turn %s abandoned: %s", self.id, reason)
        if self._task is not None:
            self._task.cancel()

    async def _send(
        self, command: msgspec.Struct, step: str, awaited: bool = True
    ) -> asyncio.Future[Any] | None:
        """Publish ``command`` as this turn's ``step``; with ``awaited``, the future of its
        answer (which may come before the publish's own acknowledgement)."""
        message_id = turn_step_id(self.id, step)
        answer = None
        if awaited:
            answer = self._asked[message_id] = asyncio.get_running_loop().create_future()
        try:
            await self._publish(command, message_id)
        except Exception as exc:
            raise unavailable("The message bus is not reachable.") from exc
        return answer

    async def _publish(self, message: msgspec.Struct, message_id: str) -> None:
        """Publish ``message`` of this turn, caused by the answer that came last."""
        env = envelope_for(
            message,
            tenant=self.principal.tenant,
            actor=self.principal.user,
            correlation_id=self.id,
            causation_id=self._latest,
            message_id=message_id,
        )
        try:
            await publish(self.dispatch.bus, message, env)
        except Exception as exc:
            log.warning("publishing %s of turn %s failed: %s", env.schema, self.id, exc)
            raise

    async def _ask(self, command: msgspec.Struct, step: str) -> Any:
        """``command``'s answer, or ``Failed`` for its refusal."""
        answer = await self._send(command, step)
        assert answer is not None
        return await self._answer(answer)

    def _first_commands(self) -> list[tuple[msgspec.Struct | None, str]]:
        """The prompt check and the recall, each None when the turn does without it."""
        turn = self.turn
        text = last_user_text(turn.messages)
        check = recall = None
        if turn.use_policy:
            check = PolicyEvaluate(
                stage="prompt",
                text=text,
                role=turn.role,
                key_id=turn.key_id,
                tokens_requested=turn.max_tokens or 0,
            )
        if turn.use_memory and text:
            recall = MemoryRecall(
                query=text, user=turn.user, session=turn.session, top_k=5, caller_role=turn.role
            )
        return [(check, "prompt"), (recall, "recall")]

    async def _run(
        self,
        watch: contextlib.AbstractAsyncContextManager[asyncio.Queue[Reply]],
        answers: asyncio.Queue[Reply],
        first: list[asyncio.Future[Any] | None],
        events: asyncio.Queue[Reply],
    ) -> None:
        reader = asyncio.ensure_future(self._read(answers))
        payload: ChatTurnResult | ApiError
        code: FailureCode | None = None  # what failed the turn, when a refusal did
        try:
            async with asyncio.timeout(self.timeout):
                payload = await self._chain(first)
        except TimeoutError:
            payload = ApiError(
                504, "The chat turn did not finish in time.", type="server_error", code="timeout"
            )
        except ApiError as error:
            payload = error
        except Failed as failed:
            log.warning("direct turn %s failed: %s", self.id, failed.failure.error)
            code = failed.failure.code
            payload = chat_turns.failure_error(
                failed.failure.code, failed.failure.error, self.turn.model
            )
        except Exception:  # the caller still gets an end, not a wait until its timeout
            log.exception("direct turn %s broke off", self.id)
            payload = ApiError(500, "The chat turn failed.", type="server_error")
        finally:
            reader.cancel()
            await watch.__aexit__(None, None, None)
        env = Envelope(
            message_id=f"{self.id}.end",
            correlation_id=self.id,
            tenant=self.principal.tenant,
            actor=self.principal.user,
            schema=END,
        )
        events.put_nowait(Reply(env, END, payload))
        # The caller's task writes its answer first: the end's encoding and publish are not
        # on the turn's path.
        await asyncio.sleep(0)
        await self._finish(payload, code)

    async def _finish(self, payload: ChatTurnResult | ApiError, code: FailureCode | None) -> None:
        """Put the turn's end in its trail (``gateway.turn_finished``), where a saga's turn has
        ``sagas.finished``: analytics counts the run from it. After the caller has its answer,
        which does not wait on it; an end the bus did not take is logged, not the caller's error
        (the turn's commands have had their effects), and the run goes uncounted."""
        end = ChatTurnFinished(
            state="failed" if isinstance(payload, ApiError) else "completed",
            started_at=self._started,
            error=payload.message if isinstance(payload, ApiError) else None,
            error_code=code,
        )
        with contextlib.suppress(Exception):  # logged by _publish
            await self._publish(end, turn_end_id(self.id))

    async def _read(self, answers: asyncio.Queue[Reply]) -> None:
        while True:
            reply = await answers.get()
            asked = self._asked.pop(reply.envelope.causation_id or "", None)
            if asked is not None and not asked.done():
                self._latest = reply.envelope.message_id
                asked.set_result(reply.payload)

    async def _answer(self, asked: asyncio.Future[Any]) -> Any:
        answer = await asked
        if isinstance(answer, CommandFailed):
            raise Failed(answer)
        return answer

    async def _chain(self, first: list[asyncio.Future[Any] | None]) -> ChatTurnResult:
        turn = self.turn
        check, recall = first
        messages = list(turn.messages)
        constitution: str | None = None
        if check is not None:
            prompt: PolicyEvaluated = await self._answer(check)
            constitution = prompt.constitution or None
            if prompt.decision == "deny":
                return refusal(turn.model, prompt, Usage(), 0.0, constitution)
            if prompt.decision == "redact" and prompt.redacted_text is not None:
                messages = with_last_user_text(messages, prompt.redacted_text)
        recalled: MemoryRecalled | None = None
        if recall is not None:
            # A memory outage degrades the answer, it does not fail it.
            try:
                async with asyncio.timeout_at(self._sent + RECALL_TIMEOUT):
                    recalled = await self._answer(recall)
            except Failed as failed:
                log.warning("recall of turn %s failed: %s", self.id, failed.failure.error)
            except TimeoutError:
                log.warning("recall of turn %s not answered: answering without memories", self.id)
        context = memory_context(recalled) if recalled is not None else None
        if context:
            messages = [ChatMessage(role="system", content=context), *messages]
        ask: SlmComplete = replace(passthrough.command(turn, self.id), messages=messages)
        done: SlmCompleted = await self._ask(ask, "slm")
        if done.message.tool_calls:
            # The caller's tools run at the caller: hand the calls back, as OpenAI does.
            return replace(passthrough.result_of(done), constitution=constitution)
        answer = done.message
        if turn.use_policy:
            checked: PolicyEvaluated = await self._ask(
                PolicyEvaluate(stage="answer", text=answer.content or "", role=turn.role),
                "answer",
            )
            constitution = checked.constitution or constitution
            if checked.decision == "deny":
                return refusal(turn.model, checked, done.usage, done.cost_usd, constitution)
            if checked.decision == "redact" and checked.redacted_text is not None:
                answer = replace(answer, content=checked.redacted_text)
        if turn.use_memory:
            store = MemoryStore(
                turn_id=self.id,
                text=f"user: {last_user_text(messages)}\nassistant: {answer.content or ''}",
                user=turn.user or self.principal.user,
                session=turn.session,
                metadata={"model": turn.model},
                caller_role=turn.role,
            )
            # Stored before the caller has the answer; its own answer is not awaited.
            await self._send(store, "store", awaited=False)
        return replace(passthrough.result_of(done), message=answer, constitution=constitution)


async def _nothing() -> None:
    return None
