"""Which definitions exist, by type and version: new instances start on the latest version,
running ones finish on the version they started with.

Besides the definitions this project ships, a service author's package can add its own under the
``soma.sagas`` entry point group (a ``Definition`` or a list of them)::

    [project.entry-points."soma.sagas"]
    billing = "billing.sagas:DEFINITIONS"

The runner loads them at start, and a runner that already runs looks again when it is asked for
a saga type it does not know, so a package installed later is found without a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from bus.errors import NotFound
from sagas.definition import Definition
from schemas.extensions import installed_state

GROUP = "soma.sagas"

log = logging.getLogger("soma.sagas.registry")


def installed_definitions(
    points: Callable[[], Iterable[EntryPoint]] | None = None,
) -> list[Definition[Any]]:
    """Every definition the installed packages name under ``soma.sagas``.

    A package whose entry point does not load is logged and left out; the others load.
    """
    found: list[Definition[Any]] = []
    for point in points() if points is not None else entry_points(group=GROUP):
        try:
            value: Any = point.load()
            items = [value] if isinstance(value, Definition) else list(value)
            for item in items:
                if not isinstance(item, Definition):
                    raise TypeError(f"{item!r} is not a sagas.definition.Definition")
        except Exception as exc:
            log.warning(
                "soma.sagas entry point %s not loaded: %s: %s", point.name, type(exc).__name__, exc
            )
            continue
        found.extend(items)
    return found


class Registry:
    def __init__(
        self,
        definitions: Iterable[Definition[Any]],
        discover: Callable[[], Iterable[Definition[Any]]] | None = None,
    ) -> None:
        self._by_version: dict[tuple[str, int], Definition[Any]] = {}
        self._latest: dict[str, Definition[Any]] = {}
        self._discover = discover
        self._scanned: tuple[int, ...] | None = None
        for d in definitions:
            self.add(d)

    def add(self, d: Definition[Any]) -> None:
        if d.first is None:
            raise ValueError(f"saga {d.saga_type} v{d.version} has no @start step")
        known = self._by_version.get((d.saga_type, d.version))
        if known is not None and known is not d:
            raise ValueError(
                f"saga {d.saga_type} v{d.version} is defined twice "
                f"({known.steps[known.first or ''].__module__} and "
                f"{d.steps[d.first].__module__}); give the new one another type or version"
            )
        self._by_version[(d.saga_type, d.version)] = d
        if d.saga_type not in self._latest or d.version > self._latest[d.saga_type].version:
            self._latest[d.saga_type] = d

    def _look_again(self) -> None:
        """On a miss, add what packages installed since the last look define."""
        if self._discover is None or installed_state() == self._scanned:
            return
        self._scanned = installed_state()
        for d in self._discover():
            if (d.saga_type, d.version) not in self._by_version:
                try:
                    self.add(d)
                except ValueError as exc:
                    log.warning("saga definition not added: %s", exc)

    def latest(self, saga_type: str) -> Definition[Any]:
        if saga_type not in self._latest:
            self._look_again()
        try:
            return self._latest[saga_type]
        except KeyError:
            known = ", ".join(sorted(self._latest)) or "none"
            raise NotFound(f"unknown saga type {saga_type!r} (known: {known})") from None

    def get(self, saga_type: str, version: int) -> Definition[Any]:
        if (saga_type, version) not in self._by_version:
            self._look_again()
        try:
            return self._by_version[(saga_type, version)]
        except KeyError:
            raise RuntimeError(
                f"saga {saga_type} v{version} is not registered in this runner; keep old versions "
                "registered until their instances finish"
            ) from None

    def types(self) -> list[str]:
        return sorted(self._latest)
