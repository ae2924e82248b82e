"""Detectors of personal data and secrets: each returns the ``(start, end)`` spans it is sure of.

A pattern alone over-matches (any sixteen digits look like a card number), so the detectors that
have a checksum use it: card numbers must pass Luhn, IBANs the ISO 13616 mod-97 check. Every
pattern may only start at a token boundary (a look-behind), so a scan stays linear even on a
long run of word characters, and each detector skips the regex entirely when the one character
its matches must contain is absent.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

Found = tuple[int, int]
Detector = Callable[[str], list[Found]]

# Each pattern opens with a character class and checks what precedes it in a look-behind
# *after* that first character: a leading class lets ``re`` skip ahead to candidate characters,
# a leading look-behind would make it try every position.
_EMAIL = re.compile(
    r"[A-Za-z0-9](?<![\w.%+-][A-Za-z0-9])[A-Za-z0-9._%+-]{0,63}"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
)
# International numbers need the leading +; national ones only the North American layout,
# whose area code and exchange cannot start with 0 or 1 (other national layouts collide with
# dates, versions and order numbers; a tenant adds its own as a pattern rule).
_PHONE = re.compile(
    r"\+(?<![\w+]\+)\d[\d ().-]{6,20}\d(?!\d)"
    r"|[(12-9](?<![\w+.-][(12-9])(?:"
    r"(?<=1)[ .-](?:\([2-9]\d{2}\)[ .-]?|[2-9]\d{2}[ .-])"  # 1 415 555 2671, 1 (415) 555-2671
    r"|(?<=\()[2-9]\d{2}\)[ .-]?"  # (415) 555-2671
    r"|(?<=[2-9])\d{2}[ .-]"  # 415-555-2671
    r")[2-9]\d{2}[ .-]\d{4}(?![\w-])"
)
_CARD = re.compile(r"\d(?<![\d-]\d)(?:[ -]?\d){12,18}(?!\d)")
_IBAN = re.compile(
    r"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z]\d{2}(?: ?[A-Za-z0-9]{4}){2,7}(?: ?[A-Za-z0-9]{1,3})?"
    r"(?![A-Za-z0-9])"
)
_US_SSN = re.compile(
    r"\d(?<![\d-]\d)\d{2}(?<!000)(?<!666)(?<!9\d\d)([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\d-])"
)
_UK_NINO = re.compile(
    r"[A-CEGHJ-PR-TW-Z](?<![A-Za-z0-9].)[A-CEGHJ-NPR-TW-Z](?<!BG|GB|KN|NK|NT|TN|ZZ)"
    r" ?\d{2} ?\d{2} ?\d{2} ?[A-D](?![A-Za-z0-9])"
)
_API_KEY = re.compile(
    r"[srAgxa](?<![\w-].)(?:"
    r"(?<=s)(?P<sk>k-(?:proj-|svcacct-|admin-|ant-(?:api|admin)\d\d-)?[A-Za-z0-9_-]{20,})(?![\w-])"
    r"|(?<=[sr])k_(?:live|test)_[A-Za-z0-9]{16,}(?!\w)"
    r"|(?<=A)(?:KIA|SIA)[A-Z0-9]{16}(?![A-Za-z0-9])"
    r"|(?<=g)h[pousr]_[A-Za-z0-9]{36,255}(?!\w)"
    r"|(?<=g)ithub_pat_[A-Za-z0-9_]{22,255}(?!\w)"
    r"|(?<=x)ox[abposr]-[A-Za-z0-9-]{10,}(?![\w-])"
    r"|(?<=A)Iza[0-9A-Za-z_-]{35}(?![\w-])"
    r"|(?<=g)lpat-[A-Za-z0-9_-]{20,}(?![\w-])"
    r"|(?<=[aA])(?i:ws_secret_access_key)\s*[:=]\s*[\"']?[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])"
    r")"
)
_API_KEY_MARKERS = (
    "sk-", "sk_", "rk_", "AKIA", "ASIA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_",
    "xox", "AIza", "glpat-",
)  # fmt: skip
_PRIVATE_KEY = re.compile(
    r"-----BEGIN[A-Z0-9 ]{0,40} PRIVATE KEY(?: BLOCK)?-----.*?"
    r"(?:-----END[A-Z0-9 ]{0,40} PRIVATE KEY(?: BLOCK)?-----|\Z)",
    re.DOTALL,
)


def _has_digit(text: str) -> bool:
    return any(digit in text for digit in "0123456789")


# Card, telephone and social security numbers all lie inside a run of digits, spaces and
# ( ) . + - holding at least eight digits. One pass finds those runs; the detailed patterns then
# search only them (with a character of context each side for their look-arounds).
_NUMERIC_RUN = re.compile(r"[\d(+][\d ().+-]{7,}")
_MIN_DIGITS = 8


@functools.lru_cache(maxsize=8)  # three detectors ask for the same text in turn
def _numeric_runs(text: str) -> tuple[Found, ...]:
    if not _has_digit(text):
        return ()
    return tuple(
        (max(0, match.start() - 1), min(len(text), match.end() + 1))
        for match in _NUMERIC_RUN.finditer(text)
        if sum(char.isdigit() for char in match.group()) >= _MIN_DIGITS
    )


def _search_runs(pattern: re.Pattern[str], text: str) -> list[re.Match[str]]:
    return [
        match for start, end in _numeric_runs(text) for match in pattern.finditer(text, start, end)
    ]


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum that every payment card number satisfies."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if position % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    """ISO 13616: country letters, two check digits, and the whole number mod 97 equal to 1."""
    iban = candidate.replace(" ", "").upper()
    if not 15 <= len(iban) <= 34 or not iban.isalnum() or not iban.isascii():
        return False
    if not iban[:2].isalpha() or not iban[2:4].isdigit():
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def find_emails(text: str) -> list[Found]:
    if "@" not in text:
        return []
    return [match.span() for match in _EMAIL.finditer(text)]


def find_phones(text: str) -> list[Found]:
    found = []
    for match in _search_runs(_PHONE, text):
        number = match.group()
        # E.164 allows at most 15 digits; fewer than 8 after a + is a sum, not a number.
        if not number.startswith("+") or 8 <= sum(char.isdigit() for char in number) <= 15:
            found.append(match.span())
    return found


def find_cards(text: str) -> list[Found]:
    found = []
    for match in _search_runs(_CARD, text):
        digits = match.group().replace(" ", "").replace("-", "")
        if len(set(digits)) > 1 and luhn_valid(digits):
            found.append(match.span())
    return found


def find_ibans(text: str) -> list[Found]:
    if not _has_digit(text):
        return []
    return [match.span() for match in _IBAN.finditer(text) if iban_valid(match.group())]


def find_us_ssns(text: str) -> list[Found]:
    return [match.span() for match in _search_runs(_US_SSN, text)]


def find_uk_ninos(text: str) -> list[Found]:
    if not _has_digit(text):
        return []
    return [match.span() for match in _UK_NINO.finditer(text)]


def find_api_keys(text: str) -> list[Found]:
    lowered = text.lower()
    if not any(marker in text for marker in _API_KEY_MARKERS) and "secret_access" not in lowered:
        return []
    found = []
    for match in _API_KEY.finditer(text):
        openai_style = match.group("sk")
        # "sk-" also starts ordinary hyphenated words; a real key's random body has digits.
        if openai_style and not any(char.isdigit() for char in openai_style[2:]):
            continue
        found.append(match.span())
    return found


def find_private_keys(text: str) -> list[Found]:
    if "-----BEGIN" not in text:
        return []
    return [match.span() for match in _PRIVATE_KEY.finditer(text)]


def pattern_detector(pattern: re.Pattern[str]) -> Detector:
    """A detector for a tenant's own pattern (an employee number, a contract reference)."""

    def find(text: str) -> list[Found]:
        return [match.span() for match in pattern.finditer(text) if match.end() > match.start()]

    return find


DETECTORS: dict[str, Detector] = {
    "email": find_emails,
    "phone": find_phones,
    "card": find_cards,
    "iban": find_ibans,
    "us_ssn": find_us_ssns,
    "uk_nino": find_uk_ninos,
    "api_key": find_api_keys,
    "private_key": find_private_keys,
}
