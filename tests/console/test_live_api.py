"""The live view's event stream as a client reads it: replay from a time, and the filters."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.console.conftest import System


def _messages(system: System, key: str, params: dict[str, str], wanted: int) -> list[Any]:
    """Read the server-sent events until ``wanted`` messages came (or the stream went quiet)."""
    found: list[Any] = []
    with httpx.stream(
        "GET",
        f"{system.console}/console/api/events",
        params=params,
        headers={"Authorization": f"Bearer {key}"},
        timeout=httpx.Timeout(30, read=15),
    ) as response:
        assert response.status_code == 200
        event = ""
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "message":
                found.append(json.loads(line[5:]))
                if len(found) >= wanted:
                    break
    return found


def test_replay_from_a_time_delivers_what_was_stored_since(system: System) -> None:
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    found = _messages(
        system, system.operator_key, {"since": since, "streams": "evt", "type": "sagas.finished"}, 1
    )
    assert found and all(m["schema"] == "sagas.finished" for m in found)
    assert found[0]["envelope"]["correlation_id"]


def test_the_text_filter_keeps_only_messages_that_contain_it(system: System) -> None:
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    found = _messages(
        system,
        system.admin_key,
        {"since": since, "streams": "cmd", "text": "warm up", "service": "policy"},
        1,
    )
    assert found
    assert all(m["service"] == "policy" and "warm up" in json.dumps(m) for m in found)


def test_a_since_that_is_no_time_is_a_400_that_says_what_would_do(system: System) -> None:
    answer = httpx.get(
        f"{system.console}/console/api/events",
        params={"since": "yesterday-ish"},
        headers={"Authorization": f"Bearer {system.admin_key}"},
        timeout=30,
    )
    assert answer.status_code == 400
    assert "ISO time" in answer.json()["error"]["message"]
