"""Every request body in the OpenAPI document (what ``/docs`` shows) comes with an example that
its own schema accepts, and every field of it says what it is for: the examples cannot rot."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from gateway.app import create_app
from kernel.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"
# A row of the README's body table: | `METHOD /path` | `{example}` … |
_ROW = re.compile(r"^\| `([A-Z]+) (/[^`]+)` \| `(\{.*?\})`")


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    app = create_app(Settings(SOMA_DATA_DIR=tmp_path_factory.mktemp("openapi")))
    return app.openapi()


def _bodies(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(operation, content type, media object) of every request body."""
    found = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            body = operation.get("requestBody")
            for kind, media in (body or {}).get("content", {}).items():
                found.append((f"{method.upper()} {path}", kind, media))
    return found


def _json_bodies(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The JSON schema of every request body, by ``METHOD /path`` with parameters as ``{}``."""
    return {
        re.sub(r"\{[^}]*\}", "{}", operation): media["schema"]
        for operation, kind, media in _bodies(document)
        if kind == "application/json"
    }


def _readme_rows() -> dict[str, Any]:
    text = README.read_text()
    section = text.split("### Request bodies", 1)[1].split("\n### ", 1)[0]
    rows = {}
    for line in section.splitlines():
        found = _ROW.match(line)
        if found:
            method, path, example = found.groups()
            rows[f"{method} {re.sub(r'{[^}]*}', '{}', path)}"] = json.loads(example)
    return rows


def _resolved(document: dict[str, Any], schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The schema behind a body: the one referenced, or each one of an ``anyOf`` (a body that
    may be left out is ``anyOf: [X, null]``)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return [document["components"]["schemas"][name]]
    if "anyOf" in schema:
        return [s for part in schema["anyOf"] for s in _resolved(document, part)]
    return [schema] if schema.get("type") != "null" else []


def _examples(document: dict[str, Any], media: dict[str, Any]) -> list[Any]:
    """The examples a reader of the document sees for a body, wherever they are declared."""
    found: list[Any] = []
    if "example" in media:
        found.append(media["example"])
    found.extend(e["value"] for e in media.get("examples", {}).values())
    for schema in _resolved(document, media.get("schema", {})):
        found.extend(schema.get("examples", []))
        if "example" in schema:
            found.append(schema["example"])
    return found


def test_every_request_body_has_an_example(document: dict[str, Any]) -> None:
    missing = [
        f"{operation} ({kind})"
        for operation, kind, media in _bodies(document)
        if not _examples(document, media)
    ]

    assert missing == [], f"request bodies without an example: {missing}"


def test_every_example_is_accepted_by_its_own_schema(document: dict[str, Any]) -> None:
    wrong = []
    for operation, kind, media in _bodies(document):
        schema = {**media.get("schema", {}), "components": document["components"]}
        validator = Draft202012Validator(schema)
        for example in _examples(document, media):
            for error in validator.iter_errors(example):
                wrong.append(f"{operation} ({kind}): {error.message} at {list(error.path)}")

    assert wrong == [], "\n".join(wrong)


def test_every_field_of_a_request_body_is_described(document: dict[str, Any]) -> None:
    undescribed = [
        f"{operation}: {name}"
        for operation, _, media in _bodies(document)
        for schema in _resolved(document, media.get("schema", {}))
        for name, field in schema.get("properties", {}).items()
        if not field.get("description")
    ]

    assert undescribed == [], f"request body fields without a description: {undescribed}"


def test_the_interactive_docs_and_the_document_are_served_where_the_readme_says() -> None:
    app = create_app(Settings())

    assert (app.docs_url, app.openapi_url) == ("/docs", "/openapi.json")


def test_the_readme_shows_every_request_body_with_an_example_its_schema_accepts(
    document: dict[str, Any],
) -> None:
    schemas = _json_bodies(document)
    rows = _readme_rows()

    assert sorted(rows) == sorted(schemas)
    for operation, example in rows.items():
        schema = {**schemas[operation], "components": document["components"]}
        errors = [e.message for e in Draft202012Validator(schema).iter_errors(example)]
        assert errors == [], f"{operation}: {errors}"
