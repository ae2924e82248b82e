"""Slack through the Web API: post a message, read a channel's history.

Slack answers HTTP 200 with ``{"ok": false, "error": "..."}`` for most failures, so the ``ok``
field, not the status code, decides; its error codes (``channel_not_found``, ``not_in_channel``)
are passed on verbatim because they tell the model or the operator what to change.
"""

from __future__ import annotations

from typing import Any

import httpx

from handlers.tools.registry import Annotations, Tool, ToolError

TOKEN_SETTING = "SOMA_SLACK_TOKEN"
TOOL_NAMES = ("slack.post_message", "slack.channel_history")
CHANNEL = {"type": "string", "minLength": 1, "maxLength": 80, "description": "channel ID (C0123…)"}


def tools(client: httpx.AsyncClient, base_url: str, token: str) -> list[Tool]:
    base = base_url.rstrip("/")
    auth = {"Authorization": f"Bearer {token}"}

    async def call(method: str, **kwargs: Any) -> dict[str, Any]:
        verb = "POST" if "json" in kwargs else "GET"
        try:
            response = await client.request(verb, f"{base}/{method}", headers=auth, **kwargs)
        except httpx.HTTPError as exc:
            raise ToolError(f"could not reach Slack at {base}: {type(exc).__name__}") from exc
        if response.status_code == 429:
            wait = response.headers.get("retry-after", "a few")
            raise ToolError(f"Slack is rate limiting {method}; retry after {wait} s")
        if response.status_code >= 400:
            raise ToolError(f"Slack answered {response.status_code} to {method}")
        payload: dict[str, Any] = response.json()
        if not payload.get("ok"):
            raise ToolError(f"Slack refused {method}: {payload.get('error', 'unknown error')}")
        return payload

    async def post_message(arguments: dict[str, Any]) -> dict[str, Any]:
        body = {k: arguments[k] for k in ("channel", "text", "thread_ts") if k in arguments}
        posted = await call("chat.postMessage", json=body)
        return {"channel": posted["channel"], "ts": posted["ts"]}

    async def channel_history(arguments: dict[str, Any]) -> dict[str, Any]:
        keys = ("channel", "limit", "oldest", "latest")
        params = {k: arguments[k] for k in keys if k in arguments}
        found = await call("conversations.history", params=params)
        messages = [
            {"ts": m.get("ts"), "user": m.get("user") or m.get("bot_id"), "text": m.get("text", "")}
            for m in found.get("messages", [])
        ]
        return {"messages": messages, "has_more": bool(found.get("has_more"))}

    return [
        Tool(
            name="slack.post_message",
            description="Post a message to a Slack channel (or reply in a thread with thread_ts).",
            input_schema={
                "type": "object",
                "properties": {
                    "channel": CHANNEL,
                    "text": {"type": "string", "minLength": 1, "maxLength": 40000},
                    "thread_ts": {"type": "string", "description": "ts of the parent message"},
                },
                "required": ["channel", "text"],
                "additionalProperties": False,
            },
            output_schema={
                "type": "object",
                "properties": {"channel": {"type": "string"}, "ts": {"type": "string"}},
                "required": ["channel", "ts"],
            },
            annotations=Annotations(read_only=False, destructive=False, idempotent=False),
            run=post_message,
        ),
        Tool(
            name="slack.channel_history",
            description="The most recent messages of a Slack channel, newest first.",
            input_schema={
                "type": "object",
                "properties": {
                    "channel": CHANNEL,
                    "limit": {"type": "integer", "minimum": 1, "maximum": 200, "default": 20},
                    "oldest": {"type": "string", "description": "only messages after this ts"},
                    "latest": {"type": "string", "description": "only messages before this ts"},
                },
                "required": ["channel"],
                "additionalProperties": False,
            },
            output_schema={
                "type": "object",
                "properties": {
                    "messages": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "ts": {"type": "string"},
                                "user": {"type": ["string", "null"]},
                                "text": {"type": "string"},
                            },
                        },
                    },
                    "has_more": {"type": "boolean"},
                },
                "required": ["messages", "has_more"],
            },
            annotations=Annotations(read_only=True, destructive=False, idempotent=True),
            run=channel_history,
        ),
    ]
