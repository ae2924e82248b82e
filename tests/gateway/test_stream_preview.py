"""What a stream sends of a turn: the deltas while none is missing, then what of the result they
did not carry — so the caller's text is the answer, whichever deltas it saw."""

from __future__ import annotations

import json

from gateway.streaming import OpenAIChunks, Preview
from schemas.chat import ChatTurnResult
from schemas.slm import ChatMessage, SlmDelta

ANSWER = "Sagas keep their state in SQL."


def preview() -> Preview:
    return Preview(OpenAIChunks("turn-1", "m-1", include_usage=False), set())


def text_of(chunks: list[bytes]) -> str:
    pieces = []
    for chunk in chunks:
        line = chunk.decode().strip().removeprefix("data: ")
        if line.startswith("{"):
            choices = json.loads(line)["choices"]
            pieces += [c["delta"].get("content") or "" for c in choices]
    return "".join(pieces)


def result(text: str = ANSWER) -> ChatTurnResult:
    return ChatTurnResult(
        message=ChatMessage(role="assistant", content=text), finish_reason="stop", model="m-1"
    )


def deltas(text: str, size: int = 5) -> list[SlmDelta]:
    parts = [text[i : i + size] for i in range(0, len(text), size)]
    return [SlmDelta(index=i, content=part) for i, part in enumerate(parts)]


def test_every_delta_in_order_is_the_answer_and_nothing_is_added() -> None:
    p = preview()
    sent = [c for d in deltas(ANSWER) for c in p.take(d)]
    assert text_of(sent + p.ending(result())) == ANSWER


def test_a_stream_that_joins_a_model_call_already_streaming_sends_the_answer_whole() -> None:
    p = preview()
    late = deltas(ANSWER)[3:]  # a retried request subscribed after the first three
    sent = [c for d in late for c in p.take(d)]
    assert text_of(sent) == ""
    assert text_of(p.ending(result())) == ANSWER


def test_a_delta_lost_in_the_middle_is_made_good_from_the_result() -> None:
    p = preview()
    some = deltas(ANSWER)
    sent = [c for d in some[:2] + some[3:] for c in p.take(d)]
    assert text_of(sent + p.ending(result())) == ANSWER


def test_a_new_model_round_after_a_finished_one_streams_from_its_first_delta() -> None:
    p = preview()
    first = [*deltas("Let me look that up."), SlmDelta(index=4, done=True)]
    sent = [c for d in first + deltas(ANSWER) for c in p.take(d)]
    assert text_of(sent + p.ending(result())) == "Let me look that up." + ANSWER
