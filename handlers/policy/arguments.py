"""A tool call's arguments as one canonical JSON text, with the place of every value in it.

A tool call is judged on the canonical JSON of its arguments (keys sorted, no spaces), so spans
and the redacted text refer to one well-defined string that the caller can decode back into
arguments. Detectors run on each decoded value, not on the JSON itself — an escape such as
``\\n`` in front of an e-mail address would otherwise become part of the match — and their
spans are mapped back into the JSON here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Leaf:
    """One string or number value: its decoded text and where that text sits in the JSON."""

    path: Path
    text: str
    start: int
    # JSON offset (from ``start``) of each character and of the end, when escapes move them.
    offsets: tuple[int, ...] | None

    def position(self, index: int) -> int:
        return self.start + (self.offsets[index] if self.offsets is not None else index)


@dataclass(frozen=True)
class Document:
    json: str
    leaves: tuple[Leaf, ...]
    keys: tuple[str, ...]


def encode(arguments: Any) -> Document:
    pieces: list[str] = []
    leaves: list[Leaf] = []
    keys: list[str] = []
    _encode(arguments, (), pieces, [0], leaves, keys)
    return Document("".join(pieces), tuple(leaves), tuple(keys))


def canonical_json(value: Any) -> str:
    return encode(value).json


def _literal(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _encode(
    value: Any,
    path: Path,
    pieces: list[str],
    length: list[int],
    leaves: list[Leaf],
    keys: list[str],
) -> None:
    def put(text: str) -> None:
        pieces.append(text)
        length[0] += len(text)

    if isinstance(value, dict):
        put("{")
        for number, key in enumerate(sorted(value, key=str)):
            if number:
                put(",")
            keys.append(str(key))
            put(_literal(str(key)) + ":")
            _encode(value[key], (*path, str(key)), pieces, length, leaves, keys)
        put("}")
    elif isinstance(value, list | tuple):
        put("[")
        for index, item in enumerate(value):
            if index:
                put(",")
            _encode(item, (*path, index), pieces, length, leaves, keys)
        put("]")
    elif isinstance(value, str):
        literal = _literal(value)
        offsets = None if len(literal) == len(value) + 2 else _escape_offsets(value)
        leaves.append(Leaf(path, value, length[0] + 1, offsets))
        put(literal)
    elif isinstance(value, bool) or value is None:
        put(_literal(value))
    else:
        literal = _literal(value)
        leaves.append(Leaf(path, literal, length[0], None))
        put(literal)


def _escape_offsets(text: str) -> tuple[int, ...]:
    offsets = [0]
    for char in text:
        offsets.append(offsets[-1] + len(_literal(char)) - 2)
    return tuple(offsets)


def replace_values(arguments: Any, replacements: dict[Path, str]) -> Any:
    """A copy of ``arguments`` with the values at the given paths replaced (by strings)."""
    return _replace(arguments, (), replacements)


def _replace(value: Any, path: Path, replacements: dict[Path, str]) -> Any:
    if path in replacements:
        return replacements[path]
    if isinstance(value, dict):
        return {key: _replace(item, (*path, str(key)), replacements) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_replace(item, (*path, index), replacements) for index, item in enumerate(value)]
    return value
