"""A service author's own messages: declared in their package, registered in the catalogue.

Soma's messages are the table in ``schemas.catalogue``. A service author does not edit it: their
package declares its msgspec Structs, lists them with ``command`` and ``event``, and names that
list under the ``soma.messages`` entry point group in its ``pyproject.toml``::

    # billing/messages.py
    MESSAGES = [
        command("billing", "charge", BillingCharge),
        event("billing", "charged", BillingCharged),
    ]

    # pyproject.toml
    [project.entry-points."soma.messages"]
    billing = "billing.messages:MESSAGES"

Every process and the CLI load that group (``discover``), so the gateway, the saga runner,
``soma publish``, ``soma tail``, the dead letters and the schema export all know the messages
once the package is installed — and a process that already runs finds a package installed after
it started the first time it meets one of its subjects. A script may call ``register`` instead;
then only that process knows them.

Each registered service also gets its ``<service>.failed`` event, which the runtime publishes
when its handler refuses a command.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import msgspec

from schemas.catalogue import CATALOGUE, MessageType, add
from schemas.common import CommandFailed

GROUP = "soma.messages"

log = logging.getLogger("soma.schemas")

_loaded: set[str] = set()  # entry points already registered, by "name = value"
problems: dict[str, str] = {}  # entry points that could not be loaded, and why
_scanned: tuple[int, ...] | None = None  # ``installed_state()`` at the last scan


def _message(kind: str, service: str, token: str, type_: type, version: int) -> MessageType:
    if not (isinstance(type_, type) and issubclass(type_, msgspec.Struct)):
        raise TypeError(f"{service}.{token}: {type_!r} is not a msgspec.Struct")
    for part, what in ((service, "service"), (token, "name")):
        if not part or not all(c.isalnum() or c == "_" for c in part):
            raise ValueError(
                f"{what} {part!r}: use letters, digits and '_' only (it is a subject token)"
            )
    doc = (type_.__doc__ or "").strip().splitlines()
    return MessageType(
        f"{service}.{token}",
        type_,
        kind,  # type: ignore[arg-type]
        service,
        token,
        version,
        doc[0] if doc else "",
    )


def command(service: str, verb: str, type_: type, *, version: int = 1) -> MessageType:
    """A command on ``soma.cmd.<tenant>.<service>.<verb>``, handled by ``service``."""
    return _message("cmd", service, verb, type_, version)


def event(service: str, name: str, type_: type, *, version: int = 1) -> MessageType:
    """An event on ``soma.evt.<tenant>.<service>.<name>``, published by ``service``."""
    return _message("evt", service, name, type_, version)


def register(entries: Iterable[MessageType]) -> list[MessageType]:
    """Add ``entries`` (and each new service's ``<service>.failed``) to the catalogue.

    Registering the same entries again changes nothing; a conflict raises
    ``schemas.catalogue.CatalogueConflict`` and registers none of them.
    """
    entries = list(entries)
    for entry in entries:
        if not isinstance(entry, MessageType):
            raise TypeError(
                f"{entry!r} is not a MessageType: list your messages with "
                "schemas.extensions.command(...) and event(...)"
            )
    failed = [
        MessageType(f"{s}.failed", CommandFailed, "evt", s, "failed", 1, "A command failed.")
        for s in sorted({e.service for e in entries})
        if f"{s}.failed" not in CATALOGUE
    ]
    add([*entries, *failed])
    return entries


def _entries_of(point: EntryPoint) -> list[MessageType]:
    value: Any = point.load()
    if callable(value) and not isinstance(value, MessageType):
        value = value()
    if isinstance(value, MessageType):
        return [value]
    return list(value)


def discover(points: Callable[[], Iterable[EntryPoint]] | None = None) -> list[MessageType]:
    """Register every ``soma.messages`` entry point not loaded yet; returns what was added.

    A package whose entry point fails to load is logged and kept in ``problems`` (``soma
    schemas`` shows them); the others are registered all the same.
    """
    global _scanned
    _scanned = installed_state()
    found = points() if points is not None else entry_points(group=GROUP)
    added: list[MessageType] = []
    for point in found:
        key = f"{point.name} = {point.value}"
        if key in _loaded:
            continue
        try:
            added.extend(register(_entries_of(point)))
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if problems.get(key) != reason:
                log.warning("soma.messages entry point %s not registered: %s", key, reason)
            problems[key] = reason
            continue
        problems.pop(key, None)
        _loaded.add(key)
    return added


def installed_state() -> tuple[int, ...]:
    """The modification times of the import path's folders: it changes when a package is
    installed into (or removed from) any of them, and costs a few ``stat`` calls to read."""
    state = []
    for folder in sys.path:
        try:
            state.append(os.stat(folder or ".").st_mtime_ns)
        except OSError:
            state.append(0)
    return tuple(state)


def discover_on_miss() -> bool:
    """``discover`` for a lookup that missed, when a package was installed since the last scan.

    An unknown subject arriving in a flood costs a few ``stat`` calls each, not a scan each;
    a package installed a moment ago is found by the very next miss.
    """
    if installed_state() == _scanned:
        return False
    return bool(discover())
