"""Asking about sagas: one instance's state, or a filtered page of instances.

Scoped by the envelope's tenant: a saga of another tenant is not found (``saga`` is None).
"""

from typing import Any

from schemas.base import Message
from schemas.common import FailureCode


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
    """Newest first; ``before`` is the ``next_cursor`` of the previous page."""

    saga_type: str | None = None
    state: str | None = None
    limit: int = 20
    before: str | None = None


class SagaListed(Message):
    sagas: list[SagaInfo] = []
    next_cursor: str | None = None
