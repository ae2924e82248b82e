"""An operator's subject and JSON turned into a typed message, or a reason it cannot be one.

The catalogue is the only authority: the subject names the message type, and the body must
decode into that type exactly as a handler would decode it, so nothing an operator publishes
by hand can reach a handler only to become a dead letter.
"""

from __future__ import annotations

from typing import Any

import msgspec

from schemas import extensions
from schemas.catalogue import CATALOGUE, MessageType, UnknownMessage, by_subject


class InvalidMessage(ValueError):
    """The subject is not in the catalogue or the body does not fit its type."""


def publishable_subjects() -> list[str]:
    """Subject patterns an operator may publish to, ``<tenant>`` standing for the tenant token."""
    extensions.discover()
    return [
        f"soma.{e.kind}.<tenant>.{e.service}.{e.token}"
        for e in CATALOGUE.values()
        if e.kind in ("cmd", "evt")
    ]


def parse(subject: str, body: str | bytes) -> tuple[MessageType, str, Any]:
    """``(entry, tenant, message)`` for a concrete subject and its JSON body."""
    try:
        entry = by_subject(subject)
    except UnknownMessage as exc:
        listing = "\n  ".join(publishable_subjects())
        raise InvalidMessage(f"{exc}\nvalid subjects:\n  {listing}") from None
    if entry.kind not in ("cmd", "evt"):
        raise InvalidMessage(
            f"{subject} carries {entry.name}, an ephemeral core-NATS message that no stream "
            "keeps; publish a command or an event instead"
        )
    tenant = subject.split(".")[2]
    if tenant in ("*", ">"):
        raise InvalidMessage(f"{subject}: the tenant token must be a concrete tenant, not {tenant}")
    try:
        message = entry.decode(body.encode() if isinstance(body, str) else body)
    except msgspec.ValidationError as exc:
        fields = ", ".join(
            f"{f.name}: {_type_name(f.type)}{' (required)' if f.required else ''}"
            for f in msgspec.structs.fields(entry.type)
        )
        raise InvalidMessage(
            f"the body is not a valid {entry.name}: {exc}\n{entry.type.__name__} fields: {fields}"
        ) from None
    except msgspec.DecodeError as exc:
        raise InvalidMessage(f"the body is not valid JSON: {exc}") from None
    return entry, tenant, message


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")
