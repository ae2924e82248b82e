"""The contract every vector store of memory keeps, whatever engine is behind it.

Memory talks to one ``VectorIndex``; which engine implements it is decided once, from settings
(``vectors.open_index``): a Qdrant server when ``QDRANT_URL`` is set, the in-process edge shard
otherwise. A ``Scope`` is the engine-neutral form of a filter, so the filter's meaning is decided
in one place (``vectors.scope``) and each engine only spells it in its own types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

MetadataValue = str | int | bool


@dataclass(frozen=True)
class Equals:
    """The payload field ``key`` (a dotted path for nested fields) holds exactly ``value``."""

    key: str
    value: MetadataValue


@dataclass(frozen=True)
class HasIds:
    """The point's id is one of ``ids``."""

    ids: tuple[str, ...]


Condition = Equals | HasIds


@dataclass(frozen=True)
class Scope:
    """Conditions that must all hold; built only by ``vectors.scope``, tenant first."""

    must: tuple[Condition, ...]


@dataclass(frozen=True)
class Hit:
    payload: dict[str, Any]
    score: float


class VectorIndex(Protocol):
    """One collection of points: a vector and a JSON payload under a UUID string id."""

    async def upsert(self, id: str, vector: list[float], payload: dict[str, Any]) -> None:
        """Write the point, replacing any point with the same id; durable when it returns."""
        ...

    async def query(
        self, vector: list[float], where: Scope, limit: int, min_score: float | None = None
    ) -> list[Hit]:
        """The ``limit`` points in ``where`` most similar (cosine) to ``vector``, best first."""
        ...

    async def payloads(self, where: Scope, limit: int) -> list[dict[str, Any]]:
        """Payloads of up to ``limit`` points in ``where``, in no promised order."""
        ...

    async def count(self, where: Scope) -> int:
        """Exactly how many points are in ``where``."""
        ...

    async def delete(self, where: Scope) -> None:
        """Remove every point in ``where``; durable when it returns."""
        ...

    async def close(self) -> None:
        """Let go of the engine; writes already returned stay stored."""
        ...
