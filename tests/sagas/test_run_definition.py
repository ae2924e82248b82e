"""A run definition is checked as it is decoded: each mistake is refused with its place."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from schemas.runs import AgentRunInput


def run(steps: list[dict[str, Any]], **changes: Any) -> dict[str, Any]:
    return {"goal": "g", "agents": [{"name": "a"}, {"name": "b"}], "steps": steps, **changes}


def step(id: str, **fields: Any) -> dict[str, Any]:
    return {"id": id, "agent": "a", "task": "t", **fields}


def refused(raw: dict[str, Any]) -> str:
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.convert(raw, AgentRunInput)
    return str(caught.value)


def test_a_fan_out_and_join_is_a_valid_plan_reported_by_its_join() -> None:
    plan = msgspec.convert(
        run(
            [
                step("research"),
                step("left", needs=["research"]),
                step("right", needs=["research"]),
                step("edit", needs=["left", "right"]),
            ]
        ),
        AgentRunInput,
    )
    assert plan.report_steps() == ["edit"]
    assert plan.inputs_of(plan.steps[3]) == ["left", "right"]


def test_a_sequential_plan_hands_each_step_the_one_before() -> None:
    plan = msgspec.convert(
        run([step("one"), step("two"), step("three")], mode="sequential"), AgentRunInput
    )
    assert [plan.needs_of(s) for s in plan.steps] == [[], ["one"], ["two"]]
    assert plan.report_steps() == ["three"]


def test_an_unknown_agent_is_refused_with_the_agents_there_are() -> None:
    assert "steps[0].agent: unknown agent 'c' (agents: a, b)" in refused(
        run([step("one", agent="c")])
    )


def test_a_need_of_no_step_is_refused() -> None:
    assert "steps[0].needs[0]: unknown step 'zero'" in refused(run([step("one", needs=["zero"])]))


def test_a_cycle_is_refused_with_its_path() -> None:
    raw = run(
        [step("one", needs=["three"]), step("two", needs=["one"]), step("three", needs=["two"])]
    )
    assert "cycle: one -> three -> two -> one" in refused(raw)


def test_a_sequential_plan_whose_first_step_needs_a_later_one_is_a_cycle() -> None:
    assert "cycle" in refused(run([step("one", needs=["two"]), step("two")], mode="sequential"))


def test_an_input_that_does_not_run_before_its_step_is_missing() -> None:
    message = refused(run([step("one"), step("two", inputs=["one"])]))
    assert "steps[1].inputs[0]: missing input: 'one' does not run before 'two'" in message


def test_an_input_of_no_step_is_missing() -> None:
    assert "steps[0].inputs[0]: missing input: no step 'nope'" in refused(
        run([step("one", inputs=["nope"])])
    )


def test_duplicate_step_ids_are_refused() -> None:
    assert "steps[1]: duplicate step id 'one'" in refused(run([step("one"), step("one")]))


def test_an_unknown_report_step_is_refused() -> None:
    assert "report_step: unknown step 'x'" in refused(run([step("one")], report_step="x"))


def test_an_unknown_field_is_refused_with_its_path() -> None:
    assert "steps[0]" in refused(run([step("one", wait=True)]))
