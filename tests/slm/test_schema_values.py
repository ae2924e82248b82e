"""Tool arguments the local model builds from a JSON schema are valid for that schema."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from handlers.slm.providers.schema_values import expressions, value_for

SCHEMAS: dict[str, dict[str, Any]] = {
    "nested objects and arrays": {
        "type": "object",
        "properties": {
            "filters": {
                "type": "object",
                "properties": {
                    "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2}
                },
                "required": ["tags"],
            },
            "dry_run": {"type": "boolean"},
        },
        "required": ["filters", "dry_run"],
    },
    "numeric bounds": {
        "type": "object",
        "properties": {
            "ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "count": {"type": "integer", "minimum": 7, "multipleOf": 5},
            "offset": {"type": "integer", "maximum": -3},
        },
        "required": ["ratio", "count", "offset"],
    },
    "refs, nullable types and anyOf": {
        "type": "object",
        "$defs": {"unit": {"type": "string", "enum": ["metric", "imperial"]}},
        "properties": {
            "unit": {"$ref": "#/$defs/unit"},
            "note": {"type": ["string", "null"], "maxLength": 5},
            "id": {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 1}]},
        },
        "required": ["unit", "note", "id"],
    },
    "string lengths, consts and formats": {
        "type": "object",
        "properties": {
            "code": {"type": "string", "minLength": 40},
            "version": {"const": 2},
            "link": {"type": "string", "format": "uri"},
            "when": {"type": "string", "format": "date-time"},
        },
        "required": ["code", "version", "link", "when"],
    },
    "allOf": {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
            {"properties": {"b": {"type": "string"}}, "required": ["b"]},
        ]
    },
}


@pytest.mark.parametrize("name", SCHEMAS)
def test_generated_values_satisfy_the_schema(name):
    schema = SCHEMAS[name]

    value = value_for(schema, "fetch https://example.org/tides please, in imperial")

    jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())


def test_optional_properties_are_left_out():
    schema = {
        "type": "object",
        "properties": {"q": {"type": "string"}, "page": {"type": "integer"}},
        "required": ["q"],
    }

    assert value_for(schema, "tides") == {"q": "tides"}


def test_a_url_property_takes_the_url_from_the_prompt():
    schema = {"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]}

    assert value_for(schema, "Summarise https://example.org/a?b=1.") == {
        "url": "https://example.org/a?b=1"
    }


def test_an_enum_prefers_the_value_the_prompt_mentions():
    schema = {"enum": ["celsius", "fahrenheit"]}

    assert value_for(schema, "Oslo in fahrenheit please") == "fahrenheit"


def test_the_longest_arithmetic_expression_is_found():
    assert expressions("first 2+2, then what is (3.5 * 4) / 7 - 1?") == ["(3.5 * 4) / 7 - 1", "2+2"]


def test_plain_numbers_are_not_taken_for_expressions():
    assert expressions("call me at 5 or in 2024") == []
