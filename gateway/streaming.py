"""A streamed chat turn: token deltas from ``soma.stream.<turn id>`` as SSE, in OpenAI's chunks
or in another API's events (``StreamFormat``: Anthropic's in ``gateway.anthropic_stream``).

The delta subscription and the event waiter are both in place before the turn is started, so
nothing is missed. Deltas are a preview; the turn's end is the truth: if deltas were lost (core
NATS does not redeliver) the rest of the final answer is sent before the last chunk, and a
caller's tool call missing from the deltas is sent from the result. Deltas are numbered from 0 per
model call: once one is missing — a retried request that joins a model call already streaming,
a delta lost — the rest of that call's text is not forwarded piecemeal but sent from the result,
so the caller never gets a fragment that is not the start of its answer. The same stream serves both
pipelines (``gateway.turns``): a saga's turn and a pass-through one end with the same result.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Protocol

import msgspec
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from bus.request import Reply
from gateway import chat_turns
from gateway.answers import DONE, Chunks
from gateway.auth import Principal
from gateway.dispatch import Dispatch
from gateway.errors import ApiError, unavailable
from gateway.limits import RateLimiter
from gateway.turns import Turn
from schemas.chat import ChatTurnInput, ChatTurnResult
from schemas.slm import SlmDelta, ToolCall

log = logging.getLogger("soma.gateway.stream")

_decode_delta = msgspec.json.Decoder(SlmDelta).decode


def _error_event(error: ApiError) -> bytes:
    body = json.dumps(error.body(), separators=(",", ":")).encode()
    return b"event: error\ndata: " + body + b"\n\n"


class StreamFormat(Protocol):
    """The SSE bytes of one streamed turn in one API's wire format."""

    def opening(self) -> list[bytes]:
        """What goes out before the first delta."""
        ...

    def text(self, piece: str) -> list[bytes]: ...

    def tool_call(self, index: int, call: ToolCall) -> list[bytes]:
        """The caller's ``index``-th tool call, whole."""
        ...

    def ending(self, result: ChatTurnResult) -> list[bytes]:
        """The last events, once every piece of text and every call has been sent."""
        ...

    def error(self, error: ApiError) -> bytes: ...

    def keepalive(self) -> bytes: ...


class OpenAIChunks:
    """``chat.completion.chunk`` lines ending in ``data: [DONE]``."""

    def __init__(self, turn_id: str, model: str, *, include_usage: bool) -> None:
        self._out = Chunks(turn_id, model, include_usage=include_usage)
        self._include_usage = include_usage

    def opening(self) -> list[bytes]:
        return [self._out.delta({"role": "assistant", "content": ""})]

    def text(self, piece: str) -> list[bytes]:
        return [self._out.delta({"content": piece})]

    def tool_call(self, index: int, call: ToolCall) -> list[bytes]:
        return [self._out.tool_call(index, call)]

    def ending(self, result: ChatTurnResult) -> list[bytes]:
        # Token deltas carry no log probabilities; the last chunk carries the answer's.
        out = [
            self._out.delta({}, result.finish_reason, result.constitution, logprobs=result.logprobs)
        ]
        if self._include_usage:
            out.append(self._out.usage(result))
        out.append(DONE)
        return out

    def error(self, error: ApiError) -> bytes:
        return _error_event(error)

    def keepalive(self) -> bytes:
        return b": keep-alive\n\n"


class Preview:
    """What a stream sends of a turn: deltas while they come in order, then whatever of the
    result they did not carry. Kept apart from the I/O so the rule can be read (and tested)
    on its own."""

    def __init__(self, out: StreamFormat, caller_tools: set[str]) -> None:
        self._out = out
        self._caller_tools = caller_tools
        self._sent_calls: list[str] = []
        self._round_text = ""
        self._round_closed = False
        self._any_text = False
        self._next_index = 0  # the index the round's next delta must have to be forwarded
        self._in_step = True  # no delta of this round is missing so far

    def take(self, delta: SlmDelta) -> list[bytes]:
        """Chunks for one delta; remembers the text of the latest model round."""
        out = []
        if self._round_closed:
            self._round_text, self._round_closed = "", False
            self._next_index, self._in_step = 0, True
        if delta.index != self._next_index:
            self._in_step = False  # one was missed: the result supplies the rest
        self._next_index = delta.index + 1
        if delta.content and self._in_step:
            self._round_text += delta.content
            self._any_text = True
            out.extend(self._out.text(delta.content))
        call = delta.tool_call
        if call and call.name in self._caller_tools and call.id not in self._sent_calls:
            out.extend(self._out.tool_call(len(self._sent_calls), call))
            self._sent_calls.append(call.id)
        if delta.done:
            self._round_closed = True
        return out

    def ending(self, result: ChatTurnResult) -> list[bytes]:
        out = []
        final = result.message.content or ""
        if not self._any_text:
            if final:
                out.extend(self._out.text(final))
        elif final.startswith(self._round_text) and len(final) > len(self._round_text):
            out.extend(self._out.text(final[len(self._round_text) :]))
        for call in result.message.tool_calls or []:
            if call.id not in self._sent_calls:
                out.extend(self._out.tool_call(len(self._sent_calls), call))
                self._sent_calls.append(call.id)
        out.extend(self._out.ending(result))
        return out


class ChatStream:
    def __init__(
        self,
        dispatch: Dispatch,
        limiter: RateLimiter,
        principal: Principal,
        turn: ChatTurnInput,
        run: Turn,
        *,
        out: StreamFormat,
        timeout: float,
        keepalive: float,
    ) -> None:
        self._dispatch = dispatch
        self._limiter = limiter
        self._principal = principal
        self._turn = turn
        self._run = run
        self._timeout = timeout
        self._keepalive = keepalive
        self._deltas: asyncio.Queue[SlmDelta] = asyncio.Queue()
        self._events: asyncio.Queue[Reply] | None = None
        self._watch: contextlib.AbstractAsyncContextManager[asyncio.Queue[Reply]] | None = None
        self._sub: Subscription | None = None
        self._closed = False
        self._out = out
        self._preview = Preview(out, {t.name for t in turn.tools})

    async def open(self) -> None:
        """Listen, then start the turn; an error here is still an ordinary HTTP error."""
        subject = f"soma.stream.{self._run.id}"
        try:
            self._sub = await self._dispatch.nc.subscribe(subject, cb=self._on_delta)
        except Exception as exc:
            raise unavailable("The message bus is not reachable.") from exc
        self._watch = self._dispatch.requester.watching(self._run.id, self._run.events)
        self._events = await self._watch.__aenter__()
        try:
            await self._run.start(self._events)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        if self._watch is not None:
            await self._watch.__aexit__(None, None, None)

    async def _on_delta(self, msg: Msg) -> None:
        try:
            self._deltas.put_nowait(_decode_delta(msg.data))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("undecodable delta on %s: %s", msg.subject, exc)

    async def chunks(self) -> AsyncIterator[bytes]:
        assert self._events is not None
        events = self._events
        for piece in self._out.opening():
            yield piece

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        delta_task: asyncio.Task[SlmDelta] = asyncio.ensure_future(self._deltas.get())
        event_task: asyncio.Task[Reply] = asyncio.ensure_future(events.get())
        try:
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    await self._run.cancel("stream timed out")
                    yield self._out.error(
                        ApiError(
                            504,
                            "The chat turn did not finish in time.",
                            type="server_error",
                            code="timeout",
                        )
                    )
                    return
                done, _ = await asyncio.wait(
                    {delta_task, event_task},
                    timeout=min(self._keepalive, left),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:
                    yield self._out.keepalive()
                    continue
                if delta_task in done:
                    for piece in self._preview.take(delta_task.result()):
                        yield piece
                    delta_task = asyncio.ensure_future(self._deltas.get())
                if event_task not in done:
                    continue
                reply = event_task.result()
                event_task = asyncio.ensure_future(events.get())
                if not self._run.is_end(reply):
                    continue
                # Deltas already here come first: the one a pending get holds, then the queue.
                await asyncio.sleep(0)
                if delta_task.done():
                    for piece in self._preview.take(delta_task.result()):
                        yield piece
                while not self._deltas.empty():
                    for piece in self._preview.take(self._deltas.get_nowait()):
                        yield piece
                try:
                    result = chat_turns.named(self._run.outcome(reply))
                except ApiError as error:
                    yield self._out.error(error)
                    return
                for piece in self._preview.ending(result):
                    yield piece
                await self._limiter.record_tokens(
                    self._principal,
                    result.usage.prompt_tokens + result.usage.completion_tokens,
                )
                return
        finally:
            delta_task.cancel()
            event_task.cancel()
            await self.close()


class SseResponse(StreamingResponse):
    """Closes the stream's subscriptions however the response ends (a client gone included)."""

    def __init__(self, stream: ChatStream) -> None:
        super().__init__(
            stream.chunks(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._stream.close()
