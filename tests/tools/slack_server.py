"""A local server speaking the part of Slack's Web API the message tools use.

Like Slack it answers HTTP 200 with ``{"ok": false, "error": ...}`` for refusals, reads the
bearer token, takes ``chat.postMessage`` as JSON and ``conversations.history`` as a query.
"""

from __future__ import annotations

import threading
from typing import Any

from tests.tools.local_http import JsonHandler

TOKEN = "xoxb-test-token"
CHANNEL = "C0SOMA1"


class SlackState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: dict[str, list[dict[str, Any]]] = {CHANNEL: []}
        self.requests: list[dict[str, Any]] = []
        self.clock = 1_732_528_800


def handler_for(state: SlackState) -> type[JsonHandler]:
    class Slack(JsonHandler):
        def do_GET(self) -> None:
            self.handle_api("GET")

        def do_POST(self) -> None:
            self.handle_api("POST")

        def handle_api(self, method: str) -> None:
            self.read_request()
            with state.lock:
                state.requests.append(
                    {
                        "method": method,
                        "path": self.path_only,
                        "query": self.query,
                        "body": self.body,
                        "headers": dict(self.headers),
                    }
                )
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self.send_json(200, {"ok": False, "error": "invalid_auth"})
                if self.path_only == "/chat.postMessage" and method == "POST":
                    return self.post_message()
                if self.path_only == "/conversations.history":
                    return self.history()
                self.send_json(404, {"ok": False, "error": "unknown_method"})

        def post_message(self) -> None:
            body = self.body
            if body is None:
                return self.send_json(200, {"ok": False, "error": "invalid_arguments"})
            channel = body.get("channel")
            if channel not in state.messages:
                return self.send_json(200, {"ok": False, "error": "channel_not_found"})
            if not body.get("text"):
                return self.send_json(200, {"ok": False, "error": "no_text"})
            state.clock += 1
            message = {
                "type": "message",
                "user": "U0BOT",
                "text": body["text"],
                "ts": f"{state.clock}.000100",
            }
            if "thread_ts" in body:
                message["thread_ts"] = body["thread_ts"]
            state.messages[channel].append(message)
            posted = {"ok": True, "channel": channel, "ts": message["ts"], "message": message}
            self.send_json(200, posted)

        def history(self) -> None:
            channel = self.query.get("channel")
            if channel not in state.messages:
                return self.send_json(200, {"ok": False, "error": "channel_not_found"})
            limit = int(self.query.get("limit", 100))
            newest_first = list(reversed(state.messages[channel]))
            self.send_json(
                200,
                {
                    "ok": True,
                    "messages": newest_first[:limit],
                    "has_more": len(newest_first) > limit,
                    "pin_count": 0,
                    "response_metadata": {"next_cursor": ""},
                },
            )

    return Slack
