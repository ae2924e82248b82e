"""The definitions a runner ships: every version that may still have instances stays listed."""

from __future__ import annotations

from sagas.definitions import ALL
from sagas.registry import Registry


def test_new_chat_turns_start_on_version_2() -> None:
    assert Registry(ALL).latest("chat_turn").version == 2


def test_a_chat_turn_started_on_version_1_finds_every_step_it_may_be_waiting_in() -> None:
    v1 = Registry(ALL).get("chat_turn", 1)
    assert v1.first == "check_prompt"
    # The steps a version 1 instance can be parked at when the runner is upgraded.
    for step in (
        "prompt_checked",
        "ask_model",
        "model_answered",
        "tool_done",
        "answer_checked",
        "store_turn",
        "reply",
    ):
        assert step in v1.steps
    assert v1.durability != "group"


def test_new_agent_tasks_start_on_version_2_and_version_1_stays_registered() -> None:
    registry = Registry(ALL)
    assert registry.latest("agent_task").version == 2
    v1 = registry.get("agent_task", 1)
    for step in ("planned", "worked", "tool_checked", "noted", "reviewed", "reported"):
        assert step in v1.steps
