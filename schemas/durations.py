"""Durations and moments as people write them, read the same by the gateway, the handlers and
the CLI: ``90s``, ``30m``, ``12h``, ``7d``, ``2w``; a moment as unix seconds, a duration ago or
ahead, or ISO 8601.

Declared beside the messages because a budget's ``budget_duration`` travels as this text: the
identity handler validates it, and the gateway turns it into a window without asking anyone.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
FORMS = "a number and a unit: 90s, 30m, 12h, 7d, 2w"


class BadDuration(ValueError):
    """Text that is not a duration (or a moment) in the forms this module names."""


def duration_seconds(text: str) -> float:
    """``7d`` -> 604800.0; a positive duration or ``BadDuration`` naming the forms."""
    found = DURATION.match(text.strip()) if isinstance(text, str) else None
    if found is None:
        raise BadDuration(f"{text!r} is not a duration: use {FORMS}")
    seconds = float(found.group(1)) * UNITS[found.group(2)]
    if seconds <= 0:
        raise BadDuration(f"{text!r} is not a duration: it must be longer than zero")
    return seconds


def budget_window(start: float, duration: str | None, now: float) -> tuple[float, float | None]:
    """The window of a budget counted from ``start`` in steps of ``duration`` that holds
    ``now``: its start and its end (None: a budget without a duration never resets)."""
    if not duration:
        return start, None
    try:
        length = duration_seconds(duration)
    except BadDuration:
        return start, None
    if now < start:
        return start, start + length
    index = math.floor((now - start) / length)
    return start + index * length, start + (index + 1) * length


def moment(text: str, now: float, *, ahead: bool = False) -> float:
    """Unix seconds from unix seconds (``1764400000``), a duration (``7d``: that long ago, or
    ahead when ``ahead``) or ISO 8601 (``2026-11-25``, ``2026-11-25T10:00:00Z``; UTC unless it
    names a zone)."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    if DURATION.match(text):
        seconds = duration_seconds(text)
        return now + seconds if ahead else now - seconds
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadDuration(
            f"{text!r} is not a time: use unix seconds, a duration ({FORMS}) or ISO 8601 "
            "(2026-11-25 or 2026-11-25T10:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
