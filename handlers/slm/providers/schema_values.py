"""Values that satisfy a JSON schema, taken from the prompt where a sensible one is there.

The local development model has no language model behind it, so its tool arguments come from
the tool's own schema: required properties only; ``const``, ``enum`` (preferring a value the
prompt mentions) and ``default`` first; otherwise the smallest value in range. A string takes
something from the prompt when it fits: an arithmetic expression for a calculator, a URL or an
email address for such fields, else the prompt text itself. Every candidate is checked with
``jsonschema``; a ``pattern`` no candidate matches is the one case left to best effort.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterator
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

EXPRESSION_WORDS = ("expression", "expr", "formula", "equation", "calculat", "math", "arithmetic")
ARITHMETIC = re.compile(r"[\d\s.()+\-*/%^]+")
OPERATOR_BETWEEN_NUMBERS = re.compile(r"[\d)]\s*(\*\*|[-+*/%^])\s*[\d(.]")
URL = re.compile(r"https?://[^\s<>\"')\]]+")
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
_FORMATS = FormatChecker()


def value_for(schema: Any, prompt: str, context: str = "") -> Any:
    """A value valid for ``schema``; ``context`` is text about the value's purpose (tool name)."""
    return _value(schema, schema, "", prompt, context)


def _value(schema: Any, root: Any, name: str, prompt: str, context: str) -> Any:
    if not isinstance(schema, dict):
        return _string({}, name, prompt, context)
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return _enum(schema["enum"], schema.get("default"), prompt)
    if "default" in schema and _valid(schema["default"], schema):
        return schema["default"]
    if "allOf" in schema:
        merged = _merge([_resolve(part, root) for part in schema["allOf"]])
        rest = {key: value for key, value in schema.items() if key != "allOf"}
        return _value(_merge([rest, merged]), root, name, prompt, context)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            branches = [_resolve(branch, root) for branch in schema[key]]
            chosen = next((b for b in branches if b.get("type") != "null"), branches[0])
            rest = {k: v for k, v in schema.items() if k != key}
            return _value(_merge([rest, chosen]), root, name, prompt, context)
    kind = _type(schema)
    if kind == "object":
        properties = schema.get("properties", {})
        return {
            key: _value(properties.get(key, {}), root, key, prompt, context)
            for key in schema.get("required", [])
        }
    if kind == "array":
        items = schema.get("items", {})
        count = int(schema.get("minItems", 0))
        return [_value(items, root, name, prompt, context) for _ in range(count)]
    if kind in ("integer", "number"):
        return _number(schema, integer=kind == "integer")
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return _string(schema, name, prompt, context)


def _resolve(schema: Any, root: Any) -> dict[str, Any]:
    """Follow local ``$ref``s (``#/$defs/...``); sibling keywords are kept alongside."""
    if not isinstance(schema, dict):
        return {}
    seen = 0
    while isinstance(schema.get("$ref"), str) and schema["$ref"].startswith("#") and seen < 32:
        target: Any = root
        for part in schema["$ref"].lstrip("#").strip("/").split("/"):
            if not part:
                continue
            part = part.replace("~1", "/").replace("~0", "~")
            target = target.get(part, {}) if isinstance(target, dict) else {}
        rest = {key: value for key, value in schema.items() if key != "$ref"}
        schema = {**(target if isinstance(target, dict) else {}), **rest}
        seen += 1
    return schema


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if key == "properties":
                merged["properties"] = {**merged.get("properties", {}), **value}
            elif key == "required":
                merged["required"] = list(dict.fromkeys([*merged.get("required", []), *value]))
            else:
                merged[key] = value
    return merged


def _type(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"] or kind
        kind = kinds[0] if kinds else None
    if isinstance(kind, str):
        return kind
    if "properties" in schema or "required" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return "string"


def _enum(options: list[Any], default: Any, prompt: str) -> Any:
    lowered = prompt.lower()
    for option in options:
        if isinstance(option, str) and option and _mentions(lowered, option.lower()):
            return option
    return default if default in options else options[0]


def _mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text) is not None


def _number(schema: dict[str, Any], *, integer: bool) -> int | float:
    step = 1 if integer else 0.5
    low, high = schema.get("minimum"), schema.get("maximum")
    exclusive_low, exclusive_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if isinstance(exclusive_low, int | float) and not isinstance(exclusive_low, bool):
        low = exclusive_low + step if low is None else max(low, exclusive_low + step)
    if isinstance(exclusive_high, int | float) and not isinstance(exclusive_high, bool):
        high = exclusive_high - step if high is None else min(high, exclusive_high - step)
    value: float = 0
    if low is not None and value < low:
        value = low
    if high is not None and value > high:
        value = high
    multiple = schema.get("multipleOf")
    if isinstance(multiple, int | float) and multiple > 0:
        value = math.ceil(value / multiple) * multiple
    return math.ceil(value) if integer else value


def _string(schema: dict[str, Any], name: str, prompt: str, context: str) -> str:
    found = _candidates(schema, name, prompt, context)
    candidates = [_fit(candidate, schema) for candidate in found]
    for candidate in candidates:
        if _valid(candidate, schema):
            return candidate
    return candidates[0]


def _candidates(schema: dict[str, Any], name: str, prompt: str, context: str) -> Iterator[str]:
    about = f"{name} {schema.get('description', '')} {schema.get('title', '')}".lower()
    fmt = schema.get("format")
    if fmt in ("uri", "url", "iri", "uri-reference") or re.search(r"url|uri|link|href", about):
        yield from (match.group(0).rstrip(".,;:!?") for match in URL.finditer(prompt))
    if fmt == "email" or "email" in about:
        yield from (match.group(0) for match in EMAIL.finditer(prompt))
    if fmt == "date-time":
        yield dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    if fmt == "date":
        yield dt.date.today().isoformat()
    if any(word in f"{about} {context.lower()}" for word in EXPRESSION_WORDS):
        yield from expressions(prompt)
    yield prompt.strip()
    yield ""


def expressions(prompt: str) -> list[str]:
    """Arithmetic expressions written in the prompt, longest first."""
    text = prompt.replace("\u00d7", "*").replace("\u00f7", "/")  # multiplication and division signs
    found = [match.group(0).strip() for match in ARITHMETIC.finditer(text)]
    found = [_balanced(expr) for expr in found if OPERATOR_BETWEEN_NUMBERS.search(expr)]
    return sorted((expr for expr in found if expr), key=len, reverse=True)


def _balanced(expression: str) -> str:
    """Drop parentheses the match picked up from the surrounding sentence."""
    while expression.startswith("(") and expression.count("(") > expression.count(")"):
        expression = expression[1:].strip()
    while expression.endswith(")") and expression.count(")") > expression.count("("):
        expression = expression[:-1].strip()
    return expression


def _fit(candidate: str, schema: dict[str, Any]) -> str:
    longest = schema.get("maxLength")
    if isinstance(longest, int) and len(candidate) > longest:
        candidate = candidate[:longest]
    shortest = schema.get("minLength")
    if isinstance(shortest, int) and len(candidate) < shortest:
        candidate = candidate.ljust(shortest, "x")
    return candidate


def _valid(value: Any, schema: dict[str, Any]) -> bool:
    try:
        return bool(Draft202012Validator(schema, format_checker=_FORMATS).is_valid(value))
    except Exception:
        # A schema jsonschema cannot compile (an unresolvable $ref) cannot veto a value.
        return True
