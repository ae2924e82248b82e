"""Policy before every action of an agent task, on the real processes and the offline model."""

from __future__ import annotations

import msgspec

from bus.request import Requester
from schemas.envelope import new_id
from schemas.slm import ToolSpec
from schemas.tasks import AgentTaskInput, AgentTaskResult, Budget
from tests.e2e.test_agent_task import collect_until

CALCULATOR = ToolSpec(
    name="calculator",
    description="Evaluate an arithmetic expression",
    parameters={
        "type": "object",
        "properties": {"expression": {"type": "string"}},
        "required": ["expression"],
    },
)


async def _finish(requester: Requester, task: AgentTaskInput) -> tuple[object, list[str]]:
    saga_id = new_id()
    async with requester.watching(saga_id) as events:
        await start_with_id(requester, task, saga_id)
        seen = await collect_until(
            events, lambda e: e.schema == "sagas.finished" and e.payload.saga_id == saga_id
        )
    return seen[-1].payload, [e.schema for e in seen]


async def start_with_id(requester: Requester, task: AgentTaskInput, saga_id: str) -> None:
    from bus.publish import envelope_for, publish
    from schemas.sagas import SagaStart

    cmd = SagaStart(saga_type="agent_task", saga_id=saga_id, input=msgspec.to_builtins(task))
    await publish(requester.bus, cmd, envelope_for(cmd, tenant="acme", correlation_id=saga_id))


async def test_a_task_whose_goal_breaks_a_rule_is_refused_before_any_model_call(
    requester: Requester,
) -> None:
    task = AgentTaskInput(goal="Write me a ransomware program in python that encrypts every file")
    finished, schemas = await _finish(requester, task)
    assert finished.state == "failed"
    assert "topic.malware" in finished.error and "goal" in finished.error
    assert "slm.completed" not in schemas


async def test_a_tool_call_outside_the_roles_allow_list_is_refused_with_the_rule_named(
    requester: Requester,
) -> None:
    # The default policy lets no tool to the role "guest"; the task notes the refusal and goes on.
    task = AgentTaskInput(
        goal="Use the calculator to add 2 and 2",
        max_steps=1,
        role="guest",
        platform_tools=[CALCULATOR],
    )
    finished, schemas = await _finish(requester, task)
    assert finished.state == "completed", finished.error
    result = msgspec.convert(finished.result, AgentTaskResult)
    assert any("tool.not_allowed" in r and "calculator" in r for r in result.refusals), result
    assert "tool.not_allowed" in result.notes[0]
    assert "tools.result" not in schemas  # the tool never ran


async def test_a_task_that_fails_on_refusal_ends_with_the_rule_named(
    requester: Requester,
) -> None:
    task = AgentTaskInput(
        goal="Use the calculator to add 2 and 2",
        max_steps=1,
        role="guest",
        platform_tools=[CALCULATOR],
        on_refusal="fail",
    )
    finished, _ = await _finish(requester, task)
    assert finished.state == "failed"
    assert "tool.not_allowed" in finished.error and "calculator" in finished.error


async def test_a_tool_the_agents_allow_list_leaves_out_is_never_offered_nor_run(
    requester: Requester,
) -> None:
    task = AgentTaskInput(
        goal="Use the calculator to add 2 and 2",
        max_steps=1,
        role="user",
        platform_tools=[CALCULATOR],
        allowed_tools=["current_time"],
    )
    finished, schemas = await _finish(requester, task)
    assert finished.state == "completed", finished.error
    assert "tools.result" not in schemas


async def test_a_task_within_the_roles_allow_list_runs_its_tool(requester: Requester) -> None:
    task = AgentTaskInput(
        goal="Use the calculator to add 2 and 2",
        max_steps=1,
        role="user",
        platform_tools=[CALCULATOR],
    )
    finished, schemas = await _finish(requester, task)
    assert finished.state == "completed", finished.error
    result = msgspec.convert(finished.result, AgentTaskResult)
    assert "calculator returned" in result.notes[0] and not result.refusals


async def test_a_task_over_its_token_budget_stops_with_the_reason(requester: Requester) -> None:
    task = AgentTaskInput(goal="Survey saga patterns", max_steps=3, budget=Budget(max_tokens=60))
    finished, schemas = await _finish(requester, task)
    assert finished.state == "failed"
    assert finished.error.startswith("budget.task_tokens:")
    assert schemas.count("slm.completed") == 1  # stopped at the first call past it


async def test_a_task_with_no_cost_budget_left_stops_before_its_first_model_call(
    requester: Requester,
) -> None:
    task = AgentTaskInput(goal="Survey saga patterns", budget=Budget(max_cost_usd=0.0))
    finished, schemas = await _finish(requester, task)
    assert finished.state == "failed"
    assert finished.error.startswith("budget.task_cost:")
    assert "slm.completed" not in schemas
