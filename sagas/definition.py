"""How a saga is written: steps that read top to bottom, each returning what happens next.

A step is a plain function ``step(run, reply) -> Action``. It does no I/O: it decides. The engine
persists the decision in one transaction (state, history, outbox) and performs it afterwards, so
a crash at any point replays from the last committed step. Retries, timeouts and compensation are
declared on the ``Call`` beside the step that needs them, as in Temporal's samples.

    chat = Definition("chat_turn", version=1, input_type=ChatTurnInput)

    @chat.start
    def check_prompt(run):
        return Call(PolicyEvaluate(...), then=recall, timeout=10, retry=Retry(max_attempts=3))

    @chat.step
    def recall(run, verdict: PolicyEvaluated):
        ...
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, overload

import msgspec

InputT = TypeVar("InputT")


@dataclass(frozen=True)
class Retry:
    """Temporal's retry policy and defaults: 1 s, doubling, capped at 100 s, unlimited attempts."""

    initial: float = 1.0
    coefficient: float = 2.0
    maximum: float | None = None
    max_attempts: int = 0  # 0 = unlimited (bound it with a schedule-to-close timeout)
    non_retryable: tuple[str, ...] = ()

    def delay(self, attempt: int) -> float:
        cap = self.maximum if self.maximum is not None else 100 * self.initial
        return float(min(self.initial * self.coefficient ** max(attempt - 1, 0), cap))

    def allows(self, attempt: int, error: str) -> bool:
        if any(error.startswith(kind) for kind in self.non_retryable):
            return False
        return self.max_attempts == 0 or attempt < self.max_attempts


@dataclass
class Run(Generic[InputT]):
    """What a step sees: the saga's identity, typed input, and its JSON-able working data."""

    saga_id: str
    saga_type: str
    tenant: str
    correlation_id: str
    input: InputT
    # Working data: a dict, or an instance of the definition's ``data_type``.
    data: Any
    actor: str = "system"


StepFn = Callable[..., "Action"]
Then = "StepFn | str"


# The attribute a registered step carries its stored name in.
_NAME = "__saga_step__"


def step_name(then: StepFn | str) -> str:
    """The name a step is stored under: the one it was registered with, else its own."""
    return then if isinstance(then, str) else str(getattr(then, _NAME, then.__name__))


@dataclass
class Call:
    """Send a command and continue at ``then`` with its reply event.

    ``timeout`` is start-to-close per attempt; ``schedule_to_close`` bounds all attempts.
    ``compensate`` is a command that undoes this one; it runs (in reverse order of registration)
    if the saga is cancelled after this step succeeded.
    """

    command: msgspec.Struct
    then: StepFn | str
    timeout: float = 60.0
    schedule_to_close: float | None = None
    retry: Retry = field(default_factory=Retry)
    compensate: msgspec.Struct | None = None
    on_failure: StepFn | str | None = None


@dataclass
class CallAll:
    """Send several commands at once and continue at ``then`` when every one has answered.

    ``then`` gets the replies as a list, in the order of ``calls``; a call that failed for good
    and names an ``on_failure`` contributes its ``CommandFailed`` there instead (a call without
    one fails the saga, as a lone ``Call`` does). Each call keeps its own timeout and retries;
    the ``then`` of each call is ignored. Each call's ``compensate`` joins the saga's
    compensations as that call succeeds, as a lone ``Call``'s does; a cancel meanwhile waits for
    the calls with an undo still in flight (to their answers or their deadlines) before it runs
    the compensations.
    """

    calls: list[Call]
    then: StepFn | str


@dataclass
class Reply:
    """Answer whoever awaits the saga now (a ``sagas.replied`` event with ``result``) and go
    straight on to ``then``: the work after the answer (a memory write) is off the caller's
    path, and ``sagas.finished`` still comes when the saga ends."""

    result: Any
    then: StepFn | str


@dataclass
class Continue:
    """Checkpoint and go straight on to ``then`` (a step with no outside call)."""

    then: StepFn | str
    reply: Any = None


@dataclass
class Sleep:
    """A durable timer: continue at ``then`` after ``seconds``, across restarts."""

    seconds: float
    then: StepFn | str


@dataclass
class WaitSignal:
    """Wait for the signal ``name`` (kept if it came early); ``timeout`` → ``on_timeout``."""

    name: str
    then: StepFn | str
    timeout: float | None = None
    on_timeout: StepFn | str | None = None


@dataclass
class StartChild:
    """Start a child saga and continue at ``then`` with its ``SagaFinished`` outcome.

    ``compensate`` is a command that undoes what the child did: it joins the parent's
    compensations when the child ends with its effects in place (completed, or failed without
    compensating), so cancelling the parent later undoes that child too, in reverse order with
    everything else. Cancelling the parent while the child runs cancels the child and, when it
    has a ``compensate``, waits for its end: a child may complete before its cancel reaches it.
    """

    saga_type: str
    input: msgspec.Struct | dict[str, Any]
    then: StepFn | str
    child_id: str | None = None
    compensate: msgspec.Struct | None = None


@dataclass
class StartChildren:
    """Start several child sagas at once and continue at ``then`` when every one has ended.

    ``then`` gets their ``SagaFinished`` outcomes as a list, in the order of ``children`` (a
    failed child is an outcome too: the step decides). The ``then`` of each child is ignored;
    each child's ``compensate`` joins the parent's compensations as it ends. Cancelling the
    parent meanwhile cancels every child still running, and waits for the end of those with a
    ``compensate`` before it runs the compensations.
    """

    children: list[StartChild]
    then: StepFn | str


@dataclass
class Complete:
    result: Any = None


@dataclass
class Fail:
    """End the saga as failed with ``error``. With ``compensate``, the compensations registered
    so far run first, in reverse, and the saga ends ``compensated`` (or ``failed`` when there
    was nothing to undo)."""

    error: str
    compensate: bool = False


Action = (
    Call
    | CallAll
    | Reply
    | Continue
    | Sleep
    | WaitSignal
    | StartChild
    | StartChildren
    | Complete
    | Fail
)

# How a definition's instances are made durable (see sagas/RECOVERY.md):
#   "step":  one transaction per step, committed before its commands are published (the outbox);
#   "group": hot instances kept in memory, commands published at once with deterministic ids,
#            state committed in group commits, the triggering message acked after its commit.
DURABILITY = ("step", "group")


class Definition(Generic[InputT]):
    """A versioned saga definition: its steps by name, the first one, and its input type."""

    def __init__(
        self,
        saga_type: str,
        *,
        version: int,
        input_type: type[InputT],
        durability: str = "step",
        data_type: type[Any] | None = None,
    ) -> None:
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {', '.join(DURABILITY)}")
        self.saga_type = saga_type
        self.version = version
        self.input_type = input_type
        self.durability = durability
        # Steps see ``run.data`` as this type (a msgspec Struct or dataclass whose fields all
        # have defaults: a new instance starts empty); it is stored as JSON all the same.
        self.data_type = data_type
        self.steps: dict[str, StepFn] = {}
        self.first: str | None = None

    @overload
    def start(self, fn: StepFn) -> StepFn: ...
    @overload
    def start(
        self, *, name: str | None = None, aliases: tuple[str, ...] = ()
    ) -> Callable[[StepFn], StepFn]: ...
    def start(
        self, fn: StepFn | None = None, *, name: str | None = None, aliases: tuple[str, ...] = ()
    ) -> StepFn | Callable[[StepFn], StepFn]:
        """Register the first step (see ``step`` for ``name`` and ``aliases``)."""

        def register(fn: StepFn) -> StepFn:
            self._register(fn, name, aliases)
            self.first = step_name(fn)
            return fn

        return register(fn) if fn is not None else register

    @overload
    def step(self, fn: StepFn) -> StepFn: ...
    @overload
    def step(
        self, *, name: str | None = None, aliases: tuple[str, ...] = ()
    ) -> Callable[[StepFn], StepFn]: ...
    def step(
        self, fn: StepFn | None = None, *, name: str | None = None, aliases: tuple[str, ...] = ()
    ) -> StepFn | Callable[[StepFn], StepFn]:
        """Register a step under ``name`` (default: the function's name).

        Running instances store the name of the step they wait to run. Give ``name`` to keep it
        when the function is renamed, or list the old names in ``aliases``, so an instance that
        stored one of them still finds its step after a deploy.
        """

        def register(fn: StepFn) -> StepFn:
            self._register(fn, name, aliases)
            return fn

        return register(fn) if fn is not None else register

    def _register(self, fn: StepFn, name: str | None, aliases: tuple[str, ...]) -> None:
        key = name or fn.__name__
        for each in (key, *aliases):
            if self.steps.get(each, fn) is not fn:
                raise ValueError(f"{self.saga_type} v{self.version} has two steps named {each!r}")
            self.steps[each] = fn
        setattr(fn, _NAME, key)

    def decode_data(self, raw: dict[str, Any]) -> Any:
        """The working data as its steps see it. Keys starting with ``_`` are the engine's own
        (signals, compensations) and stay out of a typed view."""
        if self.data_type is None:
            return raw
        return msgspec.convert(
            {k: v for k, v in raw.items() if not k.startswith("_")}, self.data_type
        )

    def encode_data(self, data: Any, raw: dict[str, Any]) -> dict[str, Any]:
        """The working data as stored, with the engine's own keys of ``raw`` kept."""
        if self.data_type is None:
            return dict(data)
        own = msgspec.to_builtins(data)
        return {**{k: v for k, v in raw.items() if k.startswith("_")}, **own}

    def decode_input(self, raw: dict[str, Any]) -> InputT:
        if self.input_type is dict:
            # A copy: a step that changed its input in place would change the stored row.
            return copy.deepcopy(raw)  # type: ignore[return-value]
        return msgspec.convert(raw, self.input_type)
