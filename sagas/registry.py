"""Which definitions exist, by type and version: new instances start on the latest version,
running ones finish on the version they started with."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bus.errors import NotFound
from sagas.definition import Definition


class Registry:
    def __init__(self, definitions: Iterable[Definition[Any]]) -> None:
        self._by_version: dict[tuple[str, int], Definition[Any]] = {}
        self._latest: dict[str, Definition[Any]] = {}
        for d in definitions:
            if d.first is None:
                raise ValueError(f"saga {d.saga_type} v{d.version} has no @start step")
            self._by_version[(d.saga_type, d.version)] = d
            if d.saga_type not in self._latest or d.version > self._latest[d.saga_type].version:
                self._latest[d.saga_type] = d

    def latest(self, saga_type: str) -> Definition[Any]:
        try:
            return self._latest[saga_type]
        except KeyError:
            known = ", ".join(sorted(self._latest)) or "none"
            raise NotFound(f"unknown saga type {saga_type!r} (known: {known})") from None

    def get(self, saga_type: str, version: int) -> Definition[Any]:
        try:
            return self._by_version[(saga_type, version)]
        except KeyError:
            raise RuntimeError(
                f"saga {saga_type} v{version} is not registered in this runner; keep old versions "
                "registered until their instances finish"
            ) from None

    def types(self) -> list[str]:
        return sorted(self._latest)
