"""Literal strings a regular expression's every match must contain: a cheap test that lets a
scan be skipped.

Python's ``re`` walks a 2 KB text in tens of microseconds per pattern, while ``str.__contains__``
finds a literal in a fraction of that. A rule set holds dozens of patterns and a clean text
matches none of them, so asking first "does the text contain any of the words this pattern
cannot match without?" removes almost all regex scans. The analysis is conservative: wherever it
cannot be sure (classes, optional parts, back-references), it requires nothing, and the pattern
simply always runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from re import _constants as sre  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

Requirement = tuple[tuple[str, ...], ...]  # all of the groups, any string of each group

MIN_LENGTH = 3
MAX_GROUPS = 2


def requirement(pattern: re.Pattern[str], *, folded: bool) -> Requirement:
    """Groups of strings such that every match contains one string of each group.

    ``folded``: the pattern will search casefolded text, so literals are casefolded too;
    otherwise case-insensitive parts of the pattern require nothing.

    Only groups whose strings are at least ``MIN_LENGTH`` long are kept (a short literal is in
    almost every text and costs a scan for nothing); the fewest-strings groups come first, so a
    clean text is turned away after the cheapest checks.
    """
    try:
        parsed = sre_parse.parse(pattern.pattern, pattern.flags)
    except Exception:  # the private parser changed shape: require nothing, stay correct
        return ()
    caseless = bool(pattern.flags & re.IGNORECASE)
    groups = [group for group in _sequence(list(parsed), folded, caseless) if _rarity(group)]
    groups.sort(key=lambda group: (-_rarity(group), len(group)))
    return tuple(tuple(sorted(group)) for group in groups[:MAX_GROUPS])


def _rarity(group: frozenset[str]) -> int:
    """How unlikely the group is to occur in an ordinary text, judged by its commonest-looking
    string: longer is rarer, and a sign prose seldom uses (``<|``, ``]``) counts for more.
    0 means too common to be worth a check."""
    weights = [len(text) + (3 if len(text) > 1 and not text.isalnum() else 0) for text in group]
    return min(weights) if min(weights) >= MIN_LENGTH else 0


def _sequence(items: list[tuple[Any, Any]], folded: bool, caseless: bool) -> list[frozenset[str]]:
    groups: list[frozenset[str]] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            text = "".join(run)
            groups.append(frozenset({text.casefold() if folded else text}))
            run.clear()

    for op, arg in items:
        if op is sre.LITERAL and (folded or not caseless):
            run.append(chr(arg))
            continue
        flush()
        if op is sre.SUBPATTERN:
            _group, add, remove, body = arg
            inner = (caseless or bool(add & re.IGNORECASE)) and not remove & re.IGNORECASE
            groups.extend(_sequence(list(body), folded, inner))
        elif op is sre.ATOMIC_GROUP:
            groups.extend(_sequence(list(arg), folded, caseless))
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
            low, _high, body = arg
            if low >= 1:
                groups.extend(_sequence(list(body), folded, caseless))
        elif op is sre.BRANCH:
            alternatives = [_best(_sequence(list(alt), folded, caseless)) for alt in arg[1]]
            if all(alt is not None for alt in alternatives):
                groups.append(frozenset().union(*alternatives))  # type: ignore[arg-type]
    flush()
    return groups


def _best(groups: list[frozenset[str]]) -> frozenset[str] | None:
    """The group to stand for a branch alternative: the rarest, then the fewest strings."""
    if not groups:
        return None
    return max(groups, key=lambda group: (_rarity(group), -len(group)))


def screen(required: Requirement) -> Callable[[str], bool] | None:
    """A test that is False only when ``text`` cannot match; None when nothing is required."""
    if not required:
        return None

    def may_match(text: str) -> bool:
        return all(any(literal in text for literal in group) for group in required)

    return may_match
