"""The shipped definitions' steps, called as plain functions with a ``Run`` and a reply: what
each decides, with no engine, database or bus. A step changes ``run.data`` and returns what
happens next; these tests carry one ``Run`` from step to step as the engine would."""

from __future__ import annotations

from typing import Any

import pytest

from sagas.definition import Call, CallAll, Complete, Continue, Fail, Reply, Run, WaitSignal
from sagas.definitions.agent_task import (
    check_goal as v2_check_goal,
)
from sagas.definitions.agent_task import (
    goal_checked as v2_goal_checked,
)
from sagas.definitions.agent_task import (
    plan as v2_plan,
)
from sagas.definitions.agent_task import (
    plan_checked as v2_plan_checked,
)
from sagas.definitions.agent_task import (
    planned as v2_planned,
)
from sagas.definitions.agent_task import (
    prompt_checked as v2_prompt_checked,
)
from sagas.definitions.agent_task import (
    tool_checked as v2_tool_checked,
)
from sagas.definitions.agent_task import (
    work as v2_work,
)
from sagas.definitions.agent_task import (
    worked as v2_worked,
)
from sagas.definitions.agent_task_v1 import (
    maybe_wait_for_approval,
    noted,
    plan,
    planned,
    reported,
    reviewed,
    tool_returned,
    work,
    worked,
    write_report,
)
from sagas.definitions.agent_task_v1 import (
    tool_checked as task_tool_checked,
)
from sagas.definitions.chat_turn import (
    answer_checked,
    ask_model,
    check_prompt,
    model_answered,
    next_tool,
    prepared,
    reply,
    store_turn,
    tool_checked,
    tool_done,
)
from schemas.base import Usage
from schemas.chat import ChatTurnInput, ChatTurnResult
from schemas.common import CommandFailed, FailureCode
from schemas.memory import (
    MemoryAdd,
    MemoryAdded,
    MemoryDelete,
    MemoryItem,
    MemoryRecall,
    MemoryRecalled,
    MemoryStore,
)
from schemas.policy import Decision, PolicyEvaluate, PolicyEvaluated, Stage
from schemas.slm import ChatMessage, SlmComplete, SlmCompleted, ToolCall, ToolSpec
from schemas.tasks import AgentTaskInput, AgentTaskResult, Budget
from schemas.tools import ToolInvoke, ToolResult

SAGA = "saga-1"


def run_of(input: Any, saga_type: str) -> Run[Any]:
    return Run(
        saga_id=SAGA,
        saga_type=saga_type,
        tenant="acme",
        correlation_id="corr-1",
        input=input,
        data={},
        actor="ann",
    )


def verdict(decision: Decision, stage: Stage = "prompt", **kw: Any) -> PolicyEvaluated:
    return PolicyEvaluated(decision_id="d-1", decision=decision, stage=stage, **kw)


def completed(
    content: str | None = None, tool_calls: list[ToolCall] | None = None, tokens: int = 10
) -> SlmCompleted:
    return SlmCompleted(
        model="m-1",
        provider="local",
        message=ChatMessage(role="assistant", content=content, tool_calls=tool_calls),
        usage=Usage(prompt_tokens=tokens, completion_tokens=tokens),
        cost_usd=0.5,
    )


def result_of(action: Any) -> Any:
    assert isinstance(action, Complete), action
    return action.result


# ── chat_turn ─────────────────────────────────────────────────────────────────────────


def turn(**kw: Any) -> Run[ChatTurnInput]:
    fields: dict[str, Any] = {
        "model": "m-1",
        "messages": [ChatMessage(role="user", content="hello there")],
        "role": "member",
        **kw,
    }
    return run_of(ChatTurnInput(**fields), "chat_turn")


def answered_turn(run: Run[ChatTurnInput], content: str = "hi ann") -> Any:
    """Carry ``run`` through an allowed prompt to the model's answer; return the next action."""
    prepared(run, [verdict("allow")])
    return model_answered(run, completed(content))


def test_a_chat_turn_asks_policy_first_and_recalls_memories_beside_it() -> None:
    action = check_prompt(turn())

    assert isinstance(action, CallAll) and action.then is prepared
    policy, memory = (c.command for c in action.calls)
    assert isinstance(policy, PolicyEvaluate)
    assert (policy.stage, policy.text, policy.role) == ("prompt", "hello there", "member")
    assert isinstance(memory, MemoryRecall) and memory.query == "hello there"
    assert action.calls[1].on_failure is prepared, "a memory outage must not fail the turn"


def test_a_chat_turn_without_policy_or_memory_asks_the_model_at_once() -> None:
    run = turn(use_policy=False, use_memory=False)
    action = check_prompt(run)
    assert isinstance(action, CallAll) and action.calls == []

    asked = prepared(run, [])
    assert isinstance(asked, Call) and isinstance(asked.command, SlmComplete)


def test_a_refused_prompt_ends_the_turn_with_content_filter() -> None:
    run = turn()
    check_prompt(run)
    recalled = MemoryRecalled(items=[MemoryItem(id="m", text="ann's secret")])

    result = result_of(prepared(run, [verdict("deny", reasons=["pii"]), recalled]))
    assert isinstance(result, ChatTurnResult)
    assert result.finish_reason == "content_filter"
    assert result.policy is not None and result.policy.decision == "deny"
    assert "pii" in (result.message.content or "")
    assert "memory_context" not in run.data, "memories of a refused prompt are dropped unread"


def test_a_redacted_prompt_reaches_the_model_redacted() -> None:
    run = turn()
    check_prompt(run)

    asked = prepared(run, [verdict("redact", redacted_text="hello [NAME]")])
    assert isinstance(asked, Call) and isinstance(asked.command, SlmComplete)
    assert asked.command.messages[-1].content == "hello [NAME]"


def test_recalled_memories_reach_the_model_as_a_system_message() -> None:
    run = turn()
    check_prompt(run)
    recalled = MemoryRecalled(items=[MemoryItem(id="m", text="ann likes tea")])

    asked = prepared(run, [verdict("allow"), recalled])
    assert isinstance(asked, Call) and isinstance(asked.command, SlmComplete)
    system = asked.command.messages[0]
    assert system.role == "system" and "ann likes tea" in (system.content or "")


def test_a_failed_recall_asks_the_model_without_memories() -> None:
    run = turn()
    check_prompt(run)
    outage = CommandFailed(command="memory.recall", error="down", code=FailureCode.UNAVAILABLE)

    asked = prepared(run, [verdict("allow"), outage])
    assert isinstance(asked, Call) and isinstance(asked.command, SlmComplete)
    assert [m.role for m in asked.command.messages] == ["user"]


def test_the_models_answer_goes_to_the_answer_check() -> None:
    action = answered_turn(turn(), "hi ann")

    assert isinstance(action, Call) and action.then is answer_checked
    assert isinstance(action.command, PolicyEvaluate)
    assert (action.command.stage, action.command.text) == ("answer", "hi ann")


def test_an_allowed_answer_is_replied_before_the_turn_is_stored() -> None:
    run = turn(session="s-1")
    answered_turn(run, "hi ann")

    replied = answer_checked(run, verdict("allow", stage="answer"))
    assert isinstance(replied, Reply) and replied.then is store_turn
    assert replied.result.message.content == "hi ann"
    store = store_turn(run)
    assert isinstance(store, Call) and isinstance(store.command, MemoryStore)
    assert (store.command.turn_id, store.command.user) == (SAGA, "ann")
    assert store.on_failure is reply, "a memory outage must not lose the answer"
    final = result_of(reply(run, None))
    assert (final.message.content, final.finish_reason) == ("hi ann", "stop")
    assert final.usage == Usage(prompt_tokens=10, completion_tokens=10)


def test_a_denied_answer_ends_the_turn_with_content_filter() -> None:
    run = turn()
    answered_turn(run)

    result = result_of(answer_checked(run, verdict("deny", stage="answer")))
    assert result.finish_reason == "content_filter"


def test_the_answer_names_the_constitution_its_checks_were_judged_under() -> None:
    run = turn(use_memory=False)
    prepared(run, [verdict("allow", constitution="sha256:aaa")])
    model_answered(run, completed("hi ann"))

    result = result_of(answer_checked(run, verdict("allow", "answer", constitution="sha256:aaa")))
    assert result.constitution == "sha256:aaa"


def test_a_refusal_names_the_constitution_that_refused_it() -> None:
    result = result_of(prepared(turn(), [verdict("deny", constitution="sha256:bbb")]))
    assert result.constitution == "sha256:bbb"
    assert result.policy.constitution == "sha256:bbb"


def test_a_redacted_answer_is_replied_redacted() -> None:
    run = turn(use_memory=False)
    answered_turn(run, "call 555-1234")

    result = result_of(
        answer_checked(run, verdict("redact", "answer", redacted_text="call [PHONE]"))
    )
    assert result.message.content == "call [PHONE]"


def test_a_call_to_the_callers_own_tool_is_handed_back() -> None:
    run = turn(tools=[ToolSpec(name="calendar")])
    prepared(run, [verdict("allow")])

    result = result_of(
        model_answered(run, completed(tool_calls=[ToolCall(id="c1", name="calendar")]))
    )
    assert result.finish_reason == "tool_calls"
    assert result.message.tool_calls == [ToolCall(id="c1", name="calendar")]


def test_a_platform_tool_call_is_judged_by_policy_then_run_for_the_caller() -> None:
    run = turn(platform_tools=[ToolSpec(name="search")])
    prepared(run, [verdict("allow")])
    call = ToolCall(id="c1", name="search", arguments='{"q": "tea"}')

    assert isinstance(model_answered(run, completed(tool_calls=[call])), Continue)
    judged = next_tool(run)
    assert isinstance(judged, Call) and isinstance(judged.command, PolicyEvaluate)
    assert (judged.command.stage, judged.command.tool_name) == ("tool_call", "search")
    invoked = tool_checked(run, verdict("allow", stage="tool_call"))
    assert isinstance(invoked, Call) and isinstance(invoked.command, ToolInvoke)
    assert invoked.command.arguments == {"q": "tea"}
    assert (invoked.command.role, invoked.command.user) == ("member", "ann")

    out = ToolResult(call_id=invoked.command.call_id, name="search", ok=True, output=["a"])
    assert isinstance(tool_done(run, out), Continue)
    asked = next_tool(run)
    assert isinstance(asked, Continue) and asked.then is ask_model
    again = ask_model(run)
    assert isinstance(again, Call) and isinstance(again.command, SlmComplete)
    assert again.command.messages[-1] == ChatMessage(
        role="tool", tool_call_id="c1", name="search", content='["a"]'
    )


def test_a_platform_tool_call_policy_denies_is_not_run() -> None:
    run = turn(platform_tools=[ToolSpec(name="search")])
    prepared(run, [verdict("allow")])
    model_answered(run, completed(tool_calls=[ToolCall(id="c1", name="search")]))
    next_tool(run)

    action = tool_checked(run, verdict("deny", stage="tool_call", reasons=["not here"]))
    assert isinstance(action, Continue)
    assert run.data["refused_tools"] == ["search"]
    assert "refused by policy: not here" in run.data["messages"][-1]["content"]


def test_tool_rounds_stop_at_the_limit_and_hand_the_calls_back() -> None:
    run = turn(platform_tools=[ToolSpec(name="search")], max_tool_rounds=1)
    prepared(run, [verdict("allow")])
    call = ToolCall(id="c1", name="search")
    assert isinstance(model_answered(run, completed(tool_calls=[call])), Continue)

    result = result_of(model_answered(run, completed(tool_calls=[call])))
    assert result.finish_reason == "tool_calls"


# ── agent_task, version 1 (its running instances finish on it) ───────────────────────


def task_run(**kw: Any) -> Run[AgentTaskInput]:
    return run_of(AgentTaskInput(goal="find tea shops", role="member", **kw), "agent_task")


def plan_of(run: Run[AgentTaskInput], plan: str = "1. look\n2. compare\n3. pick") -> None:
    assert isinstance(planned(run, completed(plan)), Continue)


def test_an_agent_task_asks_the_model_for_a_plan_of_its_goal() -> None:
    action = plan(task_run(max_steps=2))

    assert isinstance(action, Call) and action.then is planned
    assert isinstance(action.command, SlmComplete)
    assert action.command.messages[-1].content == "find tea shops"
    assert "at most 2 numbered steps" in (action.command.messages[0].content or "")


def test_a_plan_keeps_its_numbered_lines_up_to_max_steps() -> None:
    run = task_run(max_steps=2)
    plan_of(run, "Sure:\n1. look\n2) compare\n- pick")

    assert run.data["plan"] == ["look", "compare"]
    assert run.data["usage"] == {"prompt_tokens": 10, "completion_tokens": 10}


def test_a_plan_without_numbered_lines_is_the_goal_itself() -> None:
    run = task_run()
    plan_of(run, "I will just do it.")

    assert run.data["plan"] == ["find tea shops"]


def test_each_step_asks_the_model_with_the_notes_so_far() -> None:
    run = task_run()
    plan_of(run)
    run.data["notes"] = ["look: found three"]

    action = work(run)
    assert isinstance(action, Call) and action.then is worked
    assert isinstance(action.command, SlmComplete)
    assert "Step 2: compare" in (action.command.messages[-1].content or "")
    assert "look: found three" in (action.command.messages[-1].content or "")


def test_a_step_answered_without_tools_is_kept_as_a_note_its_compensation_deletes() -> None:
    run = task_run()
    plan_of(run)

    action = worked(run, completed("three shops"))
    assert isinstance(action, Call) and action.then is noted
    assert isinstance(action.command, MemoryAdd) and isinstance(action.compensate, MemoryDelete)
    assert action.command.text == "look: three shops"
    assert action.compensate.ids == [action.command.id] == [f"{SAGA}:note0"]
    assert isinstance(noted(run, MemoryAdded(id=action.command.id)), Continue)
    assert run.data["notes"] == ["look: three shops"]


def test_a_step_calling_a_tool_that_is_not_a_platform_tool_notes_it_was_not_run() -> None:
    run = task_run(tools=[ToolSpec(name="search")], platform_tools=[ToolSpec(name="search")])
    plan_of(run)

    action = worked(run, completed(tool_calls=[ToolCall(id="c1", name="search")]))
    assert isinstance(action, Call) and isinstance(action.command, MemoryAdd)
    assert "search is not a platform tool of this task" in action.command.text


def test_a_platform_tool_call_of_a_step_is_judged_then_run_for_the_tasks_user() -> None:
    run = task_run(platform_tools=[ToolSpec(name="search")], user="bob")
    plan_of(run)

    judged = worked(
        run, completed(tool_calls=[ToolCall(id="c1", name="search", arguments='{"q": "tea"}')])
    )
    assert isinstance(judged, Call) and isinstance(judged.command, PolicyEvaluate)
    assert (judged.command.tool_name, judged.command.role) == ("search", "member")
    invoked = task_tool_checked(run, verdict("allow", stage="tool_call"))
    assert isinstance(invoked, Call) and isinstance(invoked.command, ToolInvoke)
    assert invoked.command.call_id == f"{SAGA}:step0:c1"
    assert (invoked.command.user, invoked.command.arguments) == ("bob", {"q": "tea"})

    noted = tool_returned(run, ToolResult(call_id="x", name="search", ok=True, output=3))
    assert isinstance(noted, Call) and isinstance(noted.command, MemoryAdd)
    assert noted.command.text == "look: search returned 3"


def test_a_tool_call_policy_denies_becomes_the_steps_note() -> None:
    run = task_run(platform_tools=[ToolSpec(name="search")])
    plan_of(run)
    worked(run, completed(tool_calls=[ToolCall(id="c1", name="search")]))

    action = task_tool_checked(run, verdict("deny", stage="tool_call", reasons=["no"]))
    assert isinstance(action, Call) and isinstance(action.command, MemoryAdd)
    assert action.command.text == "look: search was refused by policy: no"


def test_after_the_last_step_the_task_writes_its_report() -> None:
    run = task_run()
    plan_of(run, "1. look")
    worked(run, completed("found"))
    noted(run, MemoryAdded(id="n"))

    assert work(run) == Continue(then=maybe_wait_for_approval)
    assert maybe_wait_for_approval(run) == Continue(then=write_report)
    action = write_report(run)
    assert isinstance(action, Call) and action.then is reported
    assert isinstance(action.command, SlmComplete)
    assert "- look: found" in (action.command.messages[-1].content or "")

    result = result_of(reported(run, completed("the report")))
    assert isinstance(result, AgentTaskResult)
    assert (result.report, result.plan, result.notes) == ("the report", ["look"], ["look: found"])
    assert result.usage == Usage(prompt_tokens=30, completion_tokens=30)
    assert result.cost_usd == pytest.approx(1.5)


def test_a_task_that_requires_approval_waits_for_the_approve_signal() -> None:
    run = task_run(require_approval=True, approval_timeout=3600)
    plan_of(run, "1. look")

    action = maybe_wait_for_approval(run)
    assert action == WaitSignal("approve", then=reviewed, timeout=3600)
    assert reviewed(run, {"approved": True, "by": "carol"}) == Continue(then=write_report)
    assert run.data["approved_by"] == "carol"


def test_a_rejected_task_fails_with_who_rejected_it() -> None:
    run = task_run(require_approval=True)

    action = reviewed(run, {"approved": False, "by": "carol", "comment": "too vague"})
    assert action == Fail("rejected by carol: too vague")


# ── agent_task, version 2: policy before every action, budgets ──────────────────────


def planned_v2(run: Run[AgentTaskInput], plan: str = "1. look\n2. compare") -> None:
    """Carry ``run`` through an allowed goal and an allowed plan."""
    assert v2_goal_checked(run, verdict("allow")) == Continue(then=v2_plan)
    checked = v2_planned(run, completed(plan))
    assert isinstance(checked, Call) and isinstance(checked.command, PolicyEvaluate)
    assert (checked.command.stage, checked.command.text) == ("answer", plan)
    assert isinstance(v2_plan_checked(run, verdict("allow", stage="answer")), Continue)


def test_a_task_first_asks_policy_about_its_goal() -> None:
    action = v2_check_goal(task_run())

    assert isinstance(action, Call) and action.then is v2_goal_checked
    assert isinstance(action.command, PolicyEvaluate)
    assert (action.command.stage, action.command.text) == ("prompt", "find tea shops")


def test_a_goal_policy_denies_fails_the_task_with_the_rule() -> None:
    denied = verdict("deny", reasons=["malware"], rule_ids=["topic.malware"])

    action = v2_goal_checked(task_run(), denied)
    assert action == Fail("the goal was refused by policy (topic.malware): malware")


def test_each_step_prompt_is_judged_before_the_model_sees_it() -> None:
    run = task_run()
    planned_v2(run)

    judged = v2_work(run)
    assert isinstance(judged, Call) and isinstance(judged.command, PolicyEvaluate)
    assert judged.command.stage == "prompt" and "Step 1: look" in judged.command.text
    asked = v2_prompt_checked(run, verdict("allow"))
    assert isinstance(asked, Call) and isinstance(asked.command, SlmComplete)


def test_a_refused_tool_call_names_its_rule_and_the_task_goes_on() -> None:
    run = task_run(platform_tools=[ToolSpec(name="search")])
    planned_v2(run)
    v2_worked(run, completed(tool_calls=[ToolCall(id="c1", name="search")]))

    denied = verdict("deny", stage="tool_call", reasons=["no"], rule_ids=["tool.not_allowed"])
    action = v2_tool_checked(run, denied)
    assert isinstance(action, Call) and isinstance(action.command, MemoryAdd)
    assert action.command.text == "look: search was refused by policy (tool.not_allowed): no"
    assert run.data["refusals"] == ["search was refused by policy (tool.not_allowed): no"]


def test_a_task_that_fails_on_refusal_ends_at_the_refused_tool_call() -> None:
    run = task_run(platform_tools=[ToolSpec(name="search")], on_refusal="fail")
    planned_v2(run)
    v2_worked(run, completed(tool_calls=[ToolCall(id="c1", name="search")]))

    denied = verdict("deny", stage="tool_call", reasons=["no"], rule_ids=["tool.not_allowed"])
    assert v2_tool_checked(run, denied) == Fail(
        "search was refused by policy (tool.not_allowed): no"
    )


def test_a_tool_outside_the_agents_allow_list_is_refused_without_asking_policy() -> None:
    run = task_run(platform_tools=[ToolSpec(name="search")], allowed_tools=["calc*"])
    planned_v2(run)

    action = v2_worked(run, completed(tool_calls=[ToolCall(id="c1", name="search")]))
    assert isinstance(action, Call) and isinstance(action.command, MemoryAdd)
    assert "agent.tool_not_allowed" in action.command.text


def test_a_model_call_past_the_token_budget_stops_the_task_with_the_reason() -> None:
    run = task_run(budget=Budget(max_tokens=15))
    v2_goal_checked(run, verdict("allow"))

    action = v2_planned(run, completed("1. look", tokens=10))
    assert action == Fail("budget.task_tokens: the task has used 20 tokens of its budget of 15")


def test_each_model_call_may_produce_at_most_what_is_left_of_the_budget() -> None:
    run = task_run(budget=Budget(max_tokens=100))
    planned_v2(run)  # 20 tokens spent on the plan
    v2_work(run)

    asked = v2_prompt_checked(run, verdict("allow"))
    assert isinstance(asked, Call) and isinstance(asked.command, SlmComplete)
    assert asked.command.max_tokens == 80
