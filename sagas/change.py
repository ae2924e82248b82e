"""The values a transition reads and decides: the instance it starts from, and one ``Change``.

A transition (sagas/transitions.py) is a plain function of the definition, an ``Instance``, its
trigger and the time; it returns a ``Change`` and does no I/O. The engine (sagas/engine.py) loads
the instance, calls the transition, and writes the ``Change`` in one transaction: the row's new
values, its history, its outbox and the children it starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from schemas.sagas import SagaState


class Instance(msgspec.Struct, frozen=True, kw_only=True):
    """One saga instance, as its row in ``saga_instances`` holds it (sagas/tables.py).

    ``data``, ``waiting`` and ``input`` are the stored JSON; ``waiting["kind"]`` is a
    ``schemas.sagas.Waiting``. ``seq`` numbers the transitions: a loaded instance carries the
    number of the transition about to be applied to it."""

    id: str
    type: str
    version: int
    run: int
    tenant: str
    correlation_id: str
    actor: str
    parent_id: str | None
    state: SagaState
    step: str | None
    input: dict[str, Any]
    data: dict[str, Any]
    waiting: dict[str, Any] | None
    wake_at: float | None
    result: Any
    error: str | None
    error_code: str | None  # a schemas.common.FailureCode, as stored
    seq: int
    rev: int
    created_at: float
    updated_at: float
    finished_at: float | None

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Instance:
        """The instance of a stored row."""
        return cls(**{**row, "state": _STATES[row["state"]]})

    def to_row(self) -> dict[str, Any]:
        return msgspec.structs.asdict(self)


_STATES = {str(state): state for state in SagaState}


class Entry(msgspec.Struct, frozen=True):
    """One row of an instance's history (``saga_history``)."""

    saga_id: str
    run: int
    seq: int
    step: str | None
    event: str
    detail: dict[str, Any] | None
    at: float
    duration_ms: float | None = None

    def to_row(self) -> dict[str, Any]:
        return msgspec.structs.asdict(self)


class Outgoing(msgspec.Struct, frozen=True):
    """A command or event to publish (a ``saga_outbox`` row): ``id`` is its ``Nats-Msg-Id``."""

    id: str
    saga_id: str
    subject: str
    headers: dict[str, str]
    body: bytes
    created_at: float
    published_at: float | None = None

    def to_row(self) -> dict[str, Any]:
        return msgspec.structs.asdict(self)


@dataclass
class Change:
    """What one transition decides: the instance as it leaves it, and what goes with that.

    ``row`` is the new state and ``written`` names its columns the transition set (the engine
    updates those, with ``seq``); ``outbox`` holds the commands and events to publish after the
    commit, in the order sent; ``children`` are instances to insert beside it, and ``wake_now``
    the ids to go on with at once after the commit (a step mode ``Continue``, a child's start).
    """

    row: Instance
    written: set[str] = field(default_factory=set)
    history: list[Entry] = field(default_factory=list)
    outbox: list[Outgoing] = field(default_factory=list)
    children: list[Instance] = field(default_factory=list)
    wake_now: list[str] = field(default_factory=list)
    inline: int = 0  # steps run inline by this transition (group mode)
    # The last step this transition ran: its name, the data and the reply it was given (where
    # a retry starts again if that step fails the saga; sagas/operations.py).
    before: tuple[str, dict[str, Any], Any] | None = None

    def set(self, **values: Any) -> None:
        self.row = msgspec.structs.replace(self.row, **values)
        self.written.update(values)

    def values(self) -> dict[str, Any]:
        """The columns to update: those the transition set, and its number."""
        row = self.row
        return {name: getattr(row, name) for name in (*self.written, "seq")}
