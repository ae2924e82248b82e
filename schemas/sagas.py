"""Sagas: start, signal and cancel long-running work; hear how it ended."""

from typing import Any

from schemas.base import Message
from schemas.common import FailureCode


class SagaStart(Message):
    saga_type: str
    saga_id: str | None = None
    input: dict[str, Any] = {}
    id_reuse: str = "reject_duplicate"
    id_conflict: str = "fail"


class SagaSignal(Message):
    saga_id: str
    name: str
    payload: dict[str, Any] = {}


class SagaCancel(Message):
    saga_id: str
    reason: str = ""


class SagaStarted(Message):
    saga_id: str
    saga_type: str
    version: int


class SagaFinished(Message):
    """A saga reached an end state: completed, failed, compensated or compensation_failed."""

    saga_id: str
    saga_type: str
    state: str
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
