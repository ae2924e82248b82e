"""Sagas: start, signal, cancel, terminate and retry long-running work; hear how it ended.

The states and the start policies are declared here once; the engine, the gateway, analytics and
the CLI all read these values.

Asking about sagas: one instance's state, or a filtered page of instances.

Scoped by the envelope's tenant: a saga of another tenant is not found (``saga`` is None).
"""

from enum import StrEnum
from typing import Any

from schemas.base import Message
from schemas.common import FailureCode


class SagaState(StrEnum):
    RUNNING = "running"
    CANCELLING = "cancelling"  # compensations are running
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"  # cancelled with nothing to compensate
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"
    # Ended by an operator at once: no compensation ran, so its effects stay as they were.
    TERMINATED = "terminated"


ENDED = frozenset(
    {
        SagaState.COMPLETED,
        SagaState.FAILED,
        SagaState.CANCELLED,
        SagaState.COMPENSATED,
        SagaState.COMPENSATION_FAILED,
        SagaState.TERMINATED,
    }
)
# Ends that count as errors in usage reports. ``terminated`` is not one: like ``cancelled``, it
# is an operator's decision, not something that went wrong in the system.
FAILED = frozenset({SagaState.FAILED, SagaState.COMPENSATION_FAILED})
# Ends after which ``allow_duplicate_failed_only`` lets the id start again.
UNSUCCESSFUL = frozenset(
    {
        SagaState.FAILED,
        SagaState.CANCELLED,
        SagaState.COMPENSATED,
        SagaState.COMPENSATION_FAILED,
        SagaState.TERMINATED,
    }
)


class Waiting(StrEnum):
    """What a running instance waits for: the ``kind`` of its stored waiting state."""

    CALL = "call"  # a command's reply
    RETRY = "retry"  # the backoff before a command is sent again
    ALL = "all"  # the replies of several commands sent at once
    SLEEP = "sleep"  # a timer
    SIGNAL = "signal"  # a named signal
    CHILD = "child"  # a child saga's end
    CHILDREN = "children"  # the ends of several child sagas
    CONTINUE = "continue"  # nothing: the next step runs at once


class Part(StrEnum):
    """Where one command of an ``ALL`` wait stands."""

    CALL = "call"
    RETRY = "retry"
    DONE = "done"


class IdReuse(StrEnum):
    """May a start reuse the id of an ended saga (Temporal's workflow id reuse policy)."""

    REJECT_DUPLICATE = "reject_duplicate"
    ALLOW_DUPLICATE_FAILED_ONLY = "allow_duplicate_failed_only"
    ALLOW_DUPLICATE = "allow_duplicate"


class IdConflict(StrEnum):
    """What a start does when a saga with its id is still running."""

    FAIL = "fail"
    USE_EXISTING = "use_existing"


class SagaStart(Message):
    saga_type: str
    saga_id: str | None = None
    input: dict[str, Any] = {}
    id_reuse: IdReuse = IdReuse.REJECT_DUPLICATE
    id_conflict: IdConflict = IdConflict.FAIL


class SagaSignal(Message):
    saga_id: str
    name: str
    payload: dict[str, Any] = {}


class SagaCancel(Message):
    saga_id: str
    reason: str = ""


class SagaTerminate(Message):
    """End a running (or cancelling) saga at once, without compensations; its running child
    sagas are terminated too. An ended saga is refused (``conflict``)."""

    saga_id: str
    reason: str = ""


class SagaRetry(Message):
    """Run a ``failed`` saga again from where it failed: the call that failed is sent again
    (attempts counted from one), or the step that raised runs again on the data it had. Any
    other state is refused (``conflict``)."""

    saga_id: str
    reason: str = ""


class SagaRetried(Message):
    """A failed saga runs again, as run ``run``, from ``step``."""

    saga_id: str
    saga_type: str
    run: int
    step: str | None = None


class SagaStarted(Message):
    saga_id: str
    saga_type: str
    version: int


class SagaFinished(Message):
    """A saga reached an end state: completed, failed, cancelled, compensated,
    compensation_failed or terminated."""

    saga_id: str
    saga_type: str
    state: SagaState
    result: dict[str, Any] | None = None
    error: str | None = None
    parent_id: str | None = None
    # Why it failed, when a command's refusal failed it (its ``CommandFailed.code``).
    error_code: FailureCode | None = None


class SagaReplied(Message):
    """A saga answered whoever awaits it (``result``) and goes on with work after the answer;
    its ``sagas.finished`` follows when that work is done."""

    saga_id: str
    saga_type: str
    result: dict[str, Any] | None = None


class SagaStep(Message):
    """One entry of an instance's history: a transition, signal, timer or failure."""

    at: float
    kind: str
    detail: str = ""


class SagaInfo(Message):
    saga_id: str
    saga_type: str
    state: str
    version: int = 1
    created_at: float = 0.0
    updated_at: float = 0.0
    input: dict[str, Any] = {}
    result: dict[str, Any] | None = None
    error: str | None = None
    error_code: FailureCode | None = None
    waiting_for: list[str] = []
    history: list[SagaStep] = []
    parent_id: str | None = None
    # With ``include_history`` only: the working data its steps keep, and the ids of the
    # child sagas it started (oldest first), so an operator sees where a saga is and why.
    data: dict[str, Any] | None = None
    children: list[str] = []


class SagaQuery(Message):
    saga_id: str
    include_history: bool = False


class SagaQueried(Message):
    saga: SagaInfo | None = None


class SagaList(Message):
    """Newest first; ``before`` is the ``next_cursor`` of the previous page. ``query`` is a
    list filter (``sagas/list_query.py``), e.g. ``state = "failed" AND input.goal != ""``."""

    saga_type: str | None = None
    state: str | None = None
    query: str | None = None
    limit: int = 20
    before: str | None = None


class SagaListed(Message):
    sagas: list[SagaInfo] = []
    next_cursor: str | None = None
