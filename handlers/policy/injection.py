"""Prompt-injection heuristics that are code rather than patterns: hidden characters, and the
normalisation that keeps pattern rules from being dodged.

Phrase rules ("ignore previous instructions") live in the rule files as patterns; they run on
``normalize(text)``, which undoes the usual disguises: zero-width characters inside a word,
full-width or stylised letters, Cyrillic and Greek look-alikes, and text smuggled in Unicode tag
characters or runs of variation selectors (both invisible, both decoded back to readable text,
so the phrase rules see what a model would).
"""

from __future__ import annotations

import re
import unicodedata

from handlers.policy.pii import Detector, Found

_TAG_RUN = re.compile("[\U000e0000-\U000e007f]+")
# A flag emoji is U+1F3F4, then tag letters or digits, then CANCEL TAG: the one legitimate use.
_FLAG_TAGS = re.compile("[\U000e0030-\U000e0039\U000e0061-\U000e007a]{1,6}\U000e007f")
_SELECTOR_RUN = re.compile("[\ufe00-\ufe0f\U000e0100-\U000e01ef]{2,}")
_ZERO_WIDTH = re.compile("[\u180e\u200b\u200c\u200d\u2060\ufeff]")
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\U000e0000-\U000e007f\U000e0100-\U000e01ef]+"
)
_SKIN_TONES = range(0x1F3FB, 0x1F400)
# Cyrillic and Greek letters drawn like Latin ones, and the dotless i, each mapped to the
# Latin letter it imitates.
_LOOKALIKES = str.maketrans(
    "\u0430\u0435\u0451\u043e\u0440\u0441\u0443\u0445\u0456\u0457\u0458\u0455\u0501\u04bb\u04cf\u051b"
    "\u051d\u043a\u043c\u0442\u0131\u03b1\u03bf\u03b5\u03b9\u03ba\u03bd\u03c1\u03c4\u03c5\u03c7\u03f2",
    "aeeopcyxiijsdhlqwkmtiaoeikvptuxc",
)


def normalize(text: str) -> str:
    """The text as the pattern rules should read it: visible, decomposed disguises undone,
    case folded. Only for matching; spans are always reported on the original text."""
    if text.isascii():
        return text.lower()
    text = _TAG_RUN.sub(_spell_tags, text)
    text = _SELECTOR_RUN.sub(_spell_selectors, text)
    text = _INVISIBLE.sub("", text)
    return unicodedata.normalize("NFKC", text).casefold().translate(_LOOKALIKES)


def _spell_tags(match: re.Match[str]) -> str:
    spelled = "".join(chr(ord(c) - 0xE0000) for c in match.group() if 0xE0020 <= ord(c) <= 0xE007E)
    return f" {spelled} " if spelled else ""


def _spell_selectors(match: re.Match[str]) -> str:
    """Runs of variation selectors can carry one byte each (VS1-16 = 0-15, VS17-256 = 16-255)."""
    data = bytes(
        ord(c) - 0xFE00 if ord(c) <= 0xFE0F else ord(c) - 0xE0100 + 16 for c in match.group()
    )
    spelled = data.decode("utf-8", errors="ignore")
    return f" {spelled} " if spelled.isprintable() and spelled.strip() else ""


def find_zero_width(text: str) -> list[Found]:
    """Zero-width characters, except where writing needs them: a joiner inside an emoji
    sequence, a non-joiner between letters of a non-Latin script, a byte-order mark at the start."""
    if text.isascii():
        return []
    found = []
    for match in _ZERO_WIDTH.finditer(text):
        at = match.start()
        char = text[at]
        if char == "\ufeff" and at == 0:
            continue
        if char == "\u200d" and _joins_emoji(text, at):
            continue
        if char == "\u200c" and _between_script_letters(text, at):
            continue
        found.append((at, at + 1))
    return found


def _is_emoji(char: str) -> bool:
    code = ord(char)
    return code >= 0x1F000 or 0x2600 <= code <= 0x27BF or 0x2B00 <= code <= 0x2BFF


def _joins_emoji(text: str, at: int) -> bool:
    before = at - 1
    while before >= 0 and (text[before] == "\ufe0f" or ord(text[before]) in _SKIN_TONES):
        before -= 1
    after = at + 1
    return before >= 0 and after < len(text) and _is_emoji(text[before]) and _is_emoji(text[after])


def _between_script_letters(text: str, at: int) -> bool:
    if at == 0 or at + 1 >= len(text):
        return False
    before, after = text[at - 1], text[at + 1]
    return not before.isascii() and not after.isascii() and before.isalpha() and after.isalpha()


def find_bidi_controls(text: str) -> list[Found]:
    """Embeddings, overrides and isolates, which can make text read differently than it runs
    ("Trojan Source"); the plain marks (LRM, RLM) are ordinary in right-to-left writing."""
    if text.isascii():
        return []
    return [match.span() for match in _BIDI.finditer(text)]


def find_tag_characters(text: str) -> list[Found]:
    """Runs of Unicode tag characters: invisible, yet read by models as ASCII."""
    if text.isascii():
        return []
    found = []
    for match in _TAG_RUN.finditer(text):
        start = match.start()
        in_flag = start > 0 and text[start - 1] == "\U0001f3f4"
        if in_flag and _FLAG_TAGS.fullmatch(match.group()):
            continue
        found.append(match.span())
    return found


def find_selector_runs(text: str) -> list[Found]:
    """Two or more variation selectors in a row: writing uses one at a time, smuggling many."""
    if text.isascii():
        return []
    return [match.span() for match in _SELECTOR_RUN.finditer(text)]


DETECTORS: dict[str, Detector] = {
    "zero_width": find_zero_width,
    "bidi_control": find_bidi_controls,
    "tag_characters": find_tag_characters,
    "variation_selectors": find_selector_runs,
}
