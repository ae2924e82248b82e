"""``current_time`` answers in UTC or a named IANA timezone."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from handlers.tools.builtin import current_time
from handlers.tools.invocation import invoke
from handlers.tools.registry import Registry


@pytest.fixture
def registry() -> Registry:
    registry = Registry()
    registry.add(current_time())
    return registry


async def test_defaults_to_utc_now(registry: Registry) -> None:
    before = time.time()
    result = await invoke(registry, "c1", "current_time", {})
    assert result.ok
    assert result.output["timezone"] == "UTC"
    assert result.output["utc_offset"] == "+0000"
    assert before <= result.output["unix"] <= time.time()
    assert datetime.fromisoformat(result.output["iso"]).timestamp() == pytest.approx(
        result.output["unix"]
    )


async def test_named_timezone_gives_its_offset(registry: Registry) -> None:
    result = await invoke(registry, "c1", "current_time", {"timezone": "Asia/Kolkata"})
    assert result.ok
    assert result.output["utc_offset"] == "+0530"
    assert result.output["iso"].endswith("+05:30")


async def test_unknown_timezone_is_an_error_with_a_hint(registry: Registry) -> None:
    result = await invoke(registry, "c1", "current_time", {"timezone": "Mars/Olympus"})
    assert not result.ok
    assert result.error == (
        "unknown timezone 'Mars/Olympus'; use an IANA name such as 'Europe/Paris' or 'UTC'"
    )
