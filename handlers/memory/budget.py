"""Fitting recalled memories into a prompt's size budget."""

from __future__ import annotations

import msgspec

from schemas.memory import MemoryItem

ELLIPSIS = "…"
# A cut item shorter than this carries too little to be worth its place in a prompt.
MIN_CUT_CHARS = 40


def fit_to_budget(items: list[MemoryItem], max_chars: int) -> list[MemoryItem]:
    """The leading items, in rank order, whose texts fit in ``max_chars`` joined by newlines.

    Items are taken whole while they fit. The first one that does not is cut at a word boundary
    (marked with an ellipsis) when at least ``MIN_CUT_CHARS`` remain, and ends the list: skipping
    it for a smaller, less relevant item would reorder what the ranking decided.
    """
    chosen: list[MemoryItem] = []
    used = 0
    for item in items:
        separator = 1 if chosen else 0
        room = max_chars - used - separator
        if len(item.text) <= room:
            chosen.append(item)
            used += separator + len(item.text)
            continue
        if room >= MIN_CUT_CHARS:
            chosen.append(msgspec.structs.replace(item, text=_cut(item.text, room)))
        break
    return chosen


def _cut(text: str, room: int) -> str:
    head = text[: room - len(ELLIPSIS)]
    space = head.rfind(" ")
    if space >= len(head) // 2:
        head = head[:space]
    return head.rstrip() + ELLIPSIS
