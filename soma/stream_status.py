"""What the streams hold and how far behind each consumer is — the operator's first look.

Read through the JetStream API directly: its JSON carries fields the client library's typed
objects drop (the number of distinct subjects, first and last message times).
"""

from __future__ import annotations

import json
from typing import Any

from nats.aio.client import Client


class StatusError(RuntimeError):
    pass


async def _api(nc: Client, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    reply = await nc.request(subject, json.dumps(body or {}).encode(), timeout=5)
    data: dict[str, Any] = json.loads(reply.data)
    if "error" in data:
        error = data["error"]
        raise StatusError(f"{subject}: {error.get('description', error)}")
    return data


async def _paged(nc: Client, subject: str, key: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    while True:
        page = await _api(nc, subject, {"offset": len(items)})
        batch = page.get(key) or []
        items.extend(batch)
        if not batch or len(items) >= page.get("total", 0):
            return items


def _consumer(raw: dict[str, Any]) -> dict[str, Any]:
    config = raw.get("config", {})
    filters = config.get("filter_subjects") or (
        [config["filter_subject"]] if config.get("filter_subject") else []
    )
    return {
        "name": raw.get("name"),
        "durable": bool(config.get("durable_name")),
        "filter": filters,
        "pending": raw.get("num_pending", 0),
        "ack_pending": raw.get("num_ack_pending", 0),
        "redelivered": raw.get("num_redelivered", 0),
        "waiting": raw.get("num_waiting", 0),
        "delivered_seq": (raw.get("delivered") or {}).get("stream_seq", 0),
        "ack_floor_seq": (raw.get("ack_floor") or {}).get("stream_seq", 0),
    }


async def collect(nc: Client) -> list[dict[str, Any]]:
    """Every stream with its state and its consumers, by name."""
    streams = await _paged(nc, "$JS.API.STREAM.LIST", "streams")
    out = []
    for raw in sorted(streams, key=lambda s: s["config"]["name"]):
        name = raw["config"]["name"]
        state = raw.get("state", {})
        consumers = await _paged(nc, f"$JS.API.CONSUMER.LIST.{name}", "consumers")
        out.append(
            {
                "name": name,
                "subjects": raw["config"].get("subjects", []),
                "messages": state.get("messages", 0),
                "bytes": state.get("bytes", 0),
                "first_seq": state.get("first_seq", 0),
                "last_seq": state.get("last_seq", 0),
                "first_time": state.get("first_ts"),
                "last_time": state.get("last_ts"),
                "num_subjects": state.get("num_subjects", 0),
                "consumers": sorted(
                    (_consumer(c) for c in consumers), key=lambda c: str(c["name"])
                ),
            }
        )
    return out


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


async def info(nc: Client, name: str) -> dict[str, Any]:
    """One stream as ``nats stream info`` shows it: its configuration, state and consumers."""
    try:
        raw = await _api(nc, f"$JS.API.STREAM.INFO.{name}")
    except StatusError as exc:
        if "not found" in str(exc):
            raise StatusError(f"no stream {name}; `soma streams` lists them") from None
        raise
    config, state = raw.get("config", {}), raw.get("state", {})
    consumers = await _paged(nc, f"$JS.API.CONSUMER.LIST.{name}", "consumers")
    return {
        "name": name,
        "description": config.get("description", ""),
        "subjects": config.get("subjects", []),
        "retention": config.get("retention"),
        "storage": config.get("storage"),
        "replicas": config.get("num_replicas", 1),
        "max_age_seconds": (config.get("max_age") or 0) / 1e9,
        "max_bytes": config.get("max_bytes", -1),
        "max_msgs": config.get("max_msgs", -1),
        "max_msgs_per_subject": config.get("max_msgs_per_subject", -1),
        "duplicate_window_seconds": (config.get("duplicate_window") or 0) / 1e9,
        "discard": config.get("discard"),
        "messages": state.get("messages", 0),
        "bytes": state.get("bytes", 0),
        "first_seq": state.get("first_seq", 0),
        "last_seq": state.get("last_seq", 0),
        "first_time": state.get("first_ts"),
        "last_time": state.get("last_ts"),
        "num_subjects": state.get("num_subjects", 0),
        "deleted": state.get("num_deleted", 0),
        "cluster": raw.get("cluster"),
        "consumers": sorted((_consumer(c) for c in consumers), key=lambda c: str(c["name"])),
    }


async def consumer_info(nc: Client, stream: str, name: str) -> dict[str, Any]:
    """One consumer as ``nats consumer info`` shows it: its settings and where it stands."""
    try:
        raw = await _api(nc, f"$JS.API.CONSUMER.INFO.{stream}.{name}")
    except StatusError as exc:
        if "not found" in str(exc):
            raise StatusError(
                f"no consumer {name} on stream {stream}; `soma streams info {stream}` lists them"
            ) from None
        raise
    config = raw.get("config", {})
    return {
        "stream": stream,
        **_consumer(raw),
        "deliver_policy": config.get("deliver_policy"),
        "ack_policy": config.get("ack_policy"),
        "ack_wait_seconds": (config.get("ack_wait") or 0) / 1e9,
        "max_deliver": config.get("max_deliver", -1),
        "max_ack_pending": config.get("max_ack_pending", -1),
        "backoff_seconds": [b / 1e9 for b in config.get("backoff") or []],
        "created": raw.get("created"),
    }
