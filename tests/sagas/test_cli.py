"""`soma saga …` as an operator runs it, against a live runner and store."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from sagas import queries
from tests.sagas.conftest import Stack

ROOT = Path(__file__).resolve().parents[2]


def soma(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "NATS_URL": stack.settings.nats_url or "",
        "DATABASE_URL": stack.settings.database_url or "",
        "SOMA_DATA_DIR": str(stack.settings.data_dir),
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(
        [sys.executable, "-m", "soma.cli", "saga", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_saga_start_wait_prints_the_id_and_the_outcome(stack: Stack) -> None:
    done = await asyncio.to_thread(
        soma, stack, "start", "three_steps", "{}", "--tenant", "acme", "--wait"
    )
    assert done.returncode == 0, done.stderr
    saga_id, outcome = done.stdout.strip().splitlines()
    assert json.loads(outcome)["state"] == "completed"
    row = await queries.get_instance(stack.db, saga_id)
    assert row is not None and row["tenant"] == "acme"


async def test_saga_ls_and_show_report_state_and_history(stack: Stack) -> None:
    saga_id = await stack.start("three_steps")
    await stack.finished(saga_id)
    listed = await asyncio.to_thread(
        soma, stack, "ls", "--type", "three_steps", "--json", "--limit", "500"
    )
    assert saga_id in {json.loads(line)["id"] for line in listed.stdout.splitlines()}
    shown = await asyncio.to_thread(soma, stack, "show", saga_id, "--json")
    body = json.loads(shown.stdout)
    assert body["saga"]["state"] == "completed"
    assert [h["event"] for h in body["history"]][-1] == "completed"


async def test_saga_signal_and_cancel_reach_the_instance(stack: Stack) -> None:
    approved = await stack.start("approval")
    cancelled = await stack.start("approval")
    for saga_id in (approved, cancelled):
        for _ in range(100):
            row = await queries.get_instance(stack.db, saga_id)
            if row and (row["waiting"] or {}).get("kind") == "signal":
                break
            await asyncio.sleep(0.05)
    sent = await asyncio.to_thread(soma, stack, "signal", approved, "approve", '{"by": "ops"}')
    assert sent.returncode == 0, sent.stderr
    stopped = await asyncio.to_thread(soma, stack, "cancel", cancelled, "--reason", "test")
    assert stopped.returncode == 0, stopped.stderr
    assert (await stack.finished(approved))["result"] == {"approved_by": "ops"}
    assert (await stack.finished(cancelled))["state"] == "compensated"


async def test_saga_show_of_an_unknown_id_says_how_to_find_one(stack: Stack) -> None:
    shown = await asyncio.to_thread(soma, stack, "show", "no-such-saga")
    assert shown.returncode == 1
    assert "soma saga ls" in shown.stderr


async def test_saga_show_and_signal_take_a_unique_prefix_of_the_id(stack: Stack) -> None:
    saga_id = await stack.start("approval")
    for _ in range(100):
        row = await queries.get_instance(stack.db, saga_id)
        if row and (row["waiting"] or {}).get("kind") == "signal":
            break
        await asyncio.sleep(0.05)
    shown = await asyncio.to_thread(soma, stack, "show", saga_id[:12], "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["saga"]["id"] == saga_id
    sent = await asyncio.to_thread(soma, stack, "signal", saga_id[:12], "approve", '{"by": "p"}')
    assert sent.returncode == 0, sent.stderr
    assert (await stack.finished(saga_id))["result"] == {"approved_by": "p"}


async def test_signal_or_cancel_of_a_finished_saga_is_an_error_exit(stack: Stack) -> None:
    saga_id = await stack.start("three_steps")
    await stack.finished(saga_id)
    for args in (("signal", saga_id, "approve"), ("cancel", saga_id)):
        refused = await asyncio.to_thread(soma, stack, *args)
        assert refused.returncode == 1
        assert "has already ended (completed)" in refused.stderr


async def test_saga_ls_with_a_state_that_does_not_exist_names_the_states(stack: Stack) -> None:
    refused = await asyncio.to_thread(soma, stack, "ls", "--state", "bogus")
    assert refused.returncode == 2
    assert "choose from running, cancelling, completed, failed" in refused.stderr


async def test_saga_ls_shows_id_prefixes_and_whole_ids_when_wide(stack: Stack) -> None:
    saga_id = await stack.start("three_steps")
    await stack.finished(saga_id)
    table = await asyncio.to_thread(soma, stack, "ls", "--type", "three_steps", "--limit", "500")
    wide = await asyncio.to_thread(
        soma, stack, "ls", "--type", "three_steps", "--limit", "500", "--wide"
    )
    as_json = await asyncio.to_thread(
        soma, stack, "ls", "--type", "three_steps", "--limit", "500", "-o", "json"
    )
    assert saga_id[:12] in table.stdout and saga_id not in table.stdout
    assert saga_id in wide.stdout
    assert saga_id in {json.loads(line)["id"] for line in as_json.stdout.splitlines()}


async def waiting_for_a_signal(stack: Stack, saga_id: str) -> None:
    for _ in range(200):
        row = await queries.get_instance(stack.db, saga_id)
        if row and (row["waiting"] or {}).get("kind") == "signal":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"saga {saga_id} never waited for a signal")


async def test_saga_terminate_ends_a_saga_without_compensating_it(stack: Stack) -> None:
    saga_id = await stack.start("approval")
    await waiting_for_a_signal(stack, saga_id)
    undone_before = [o for o in stack.effects.order if o.startswith("undo")]

    stopped = await asyncio.to_thread(soma, stack, "terminate", saga_id[:12], "--reason", "ops")

    assert stopped.returncode == 0, stopped.stderr
    assert f"saga {saga_id} terminated" in stopped.stderr
    row = await queries.get_instance(stack.db, saga_id)
    assert row is not None and (row["state"], row["error"]) == ("terminated", "terminated: ops")
    await asyncio.sleep(0.5)
    assert [o for o in stack.effects.order if o.startswith("undo")] == undone_before


async def test_saga_terminate_of_a_parent_terminates_its_running_children(stack: Stack) -> None:
    parent_id = await stack.start("fan_out")
    children = [f"{parent_id}.left", f"{parent_id}.right"]
    for child_id in children:
        await waiting_for_a_signal(stack, child_id)

    stopped = await asyncio.to_thread(soma, stack, "terminate", parent_id)

    assert stopped.returncode == 0, stopped.stderr
    assert (await stack.finished(parent_id))["state"] == "terminated"
    for child_id in children:
        assert (await stack.finished(child_id))["state"] == "terminated"


async def test_saga_terminate_of_an_ended_saga_exits_1_naming_its_state(stack: Stack) -> None:
    saga_id = await stack.start("three_steps")
    await stack.finished(saga_id)

    refused = await asyncio.to_thread(soma, stack, "terminate", saga_id)

    assert refused.returncode == 1
    assert "has already ended (completed); nothing to terminate" in refused.stderr


async def test_saga_retry_runs_a_failed_saga_again_from_its_failed_call(stack: Stack) -> None:
    saga_id = await stack.start("retrying", {"fail_times": 2, "max_attempts": 2})
    assert (await stack.finished(saga_id))["state"] == "failed"

    retried = await asyncio.to_thread(soma, stack, "retry", saga_id, "--reason", "tool is back")

    assert retried.returncode == 0, retried.stderr
    assert "runs again from step flaky_call (run 2)" in retried.stderr
    row = await stack.finished(saga_id)
    assert (row["state"], row["run"]) == ("completed", 2)
    shown = await asyncio.to_thread(soma, stack, "show", saga_id, "--json")
    assert "retried" in [h["event"] for h in json.loads(shown.stdout)["history"]]


async def test_saga_retry_of_a_saga_that_did_not_fail_exits_1_saying_why(stack: Stack) -> None:
    saga_id = await stack.start("three_steps")
    await stack.finished(saga_id)

    refused = await asyncio.to_thread(soma, stack, "retry", saga_id)

    assert refused.returncode == 1
    assert "is completed, not failed" in refused.stderr


async def test_saga_ls_query_lists_what_it_describes(stack: Stack) -> None:
    saga_id = await stack.start("three_steps", {"label": "queried"})
    await stack.finished(saga_id)

    listed = await asyncio.to_thread(
        soma,
        stack,
        "ls",
        "--json",
        "--limit",
        "500",
        "--query",
        'type = "three_steps" AND state = "completed" AND input.label = "queried"',
    )

    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [saga_id]


async def test_saga_ls_with_a_malformed_query_exits_2_pointing_at_the_trouble(
    stack: Stack,
) -> None:
    malformed = await asyncio.to_thread(soma, stack, "ls", "--query", 'state = "failed" AND')
    unknown = await asyncio.to_thread(soma, stack, "ls", "--query", 'status = "failed"')

    assert (malformed.returncode, unknown.returncode) == (2, 2)
    assert 'state = "failed" AND\n                    ^' in malformed.stderr
    assert "at position 21: expected a field name or (" in malformed.stderr
    assert "unknown field 'status'; the fields are id, type, state" in unknown.stderr
