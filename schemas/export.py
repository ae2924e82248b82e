"""JSON Schema for every message and an AsyncAPI 3 document for the bus, from the catalogue."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from schemas import extensions
from schemas.catalogue import CATALOGUE, STREAMS
from schemas.envelope import (
    ACTOR,
    CAUSATION_ID,
    CORRELATION_ID,
    MSG_ID,
    SCHEMA,
    SCHEMA_VERSION,
    TENANT,
    TIMESTAMP,
    TRACEPARENT,
)

_HEADERS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [MSG_ID, CORRELATION_ID, TENANT, SCHEMA],
    "properties": {
        MSG_ID: {"type": "string", "description": "message id; JetStream dedup key"},
        CORRELATION_ID: {"type": "string"},
        CAUSATION_ID: {"type": "string"},
        TENANT: {"type": "string"},
        ACTOR: {"type": "string"},
        SCHEMA: {"type": "string", "description": "catalogue name, e.g. policy.evaluate"},
        SCHEMA_VERSION: {"type": "string"},
        TIMESTAMP: {"type": "string", "description": "unix seconds"},
        TRACEPARENT: {"type": "string", "description": "W3C trace context"},
    },
}


def json_schemas() -> dict[str, dict[str, Any]]:
    extensions.discover()  # service authors' installed messages are part of the bus too
    out = {}
    for name, entry in CATALOGUE.items():
        (schema,), components = msgspec.json.schema_components([entry.type])
        out[name] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": name,
            "description": entry.description,
            "x-soma-version": entry.version,
            **schema,
            "$defs": components,
        }
    return out


def asyncapi() -> dict[str, Any]:
    extensions.discover()
    types = [e.type for e in CATALOGUE.values()]
    _, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for name, entry in CATALOGUE.items():
        key = name.replace(".", "_")
        messages[key] = {
            "name": name,
            "title": name,
            "summary": entry.description,
            "headers": _HEADERS_SCHEMA,
            "payload": {"$ref": f"#/components/schemas/{entry.type.__name__}"},
        }
        channel_params: dict[str, Any] = (
            {"correlation": {}} if entry.kind == "stream" else {"tenant": {}}
        )
        address = (
            "soma.stream.{correlation}"
            if entry.kind == "stream"
            else f"soma.{entry.kind}.{{tenant}}.{entry.service}.{entry.token}"
        )
        channels[key] = {
            "address": address,
            "parameters": channel_params,
            "messages": {key: {"$ref": f"#/components/messages/{key}"}},
            "x-soma-stream": entry.stream,
            "x-soma-owner": entry.service,
        }
        operations[key] = {
            "action": "receive" if entry.kind == "cmd" else "send",
            "channel": {"$ref": f"#/channels/{key}"},
            "summary": f"{entry.service} {'consumes' if entry.kind == 'cmd' else 'emits'} {name}",
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Soma Agent Hub bus",
            "version": "1.0.0",
            "description": "Commands, events and token streams on NATS JetStream. "
            f"Streams: {', '.join(f'{k}={v}' for k, v in STREAMS.items())}.",
        },
        "defaultContentType": "application/json",
        "servers": {"nats": {"host": "localhost:4222", "protocol": "nats"}},
        "channels": channels,
        "operations": operations,
        "components": {"schemas": components, "messages": messages},
    }


def write(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = out_dir / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2) + "\n")
        written.append(path)
    path = out_dir / "asyncapi.json"
    path.write_text(json.dumps(asyncapi(), indent=2) + "\n")
    written.append(path)
    return written
