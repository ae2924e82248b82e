"""The operator console in headless Chromium against the whole system under `soma up`.

Each test signs in as a user would and reads only what the page shows; the API calls a test
makes itself are those a client of the system would make (a chat turn, a task). Each page is
saved as a screenshot under test-artifacts/console/.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from bus.connection import connect
from bus.publish import envelope_for, publish
from bus.service import Connected
from schemas.slm import ChatMessage, SlmComplete
from tests.console.conftest import REPLY, System, chat, provider_on, screenshot
from tests.slm.scripted import Script

pytestmark = pytest.mark.slow


async def sign_in(page: Any, system: System, key: str) -> None:
    await page.goto(f"{system.console}/console/")
    await page.fill("#credential", key)
    await page.keyboard.press("Enter")


async def signed_in(page: Any, system: System, key: str | None = None) -> None:
    await sign_in(page, system, key or system.admin_key)
    await page.wait_for_selector("#nav:not([hidden])")


async def test_a_member_key_is_refused(page: Any, system: System) -> None:
    await sign_in(page, system, system.member_key)
    refusal = page.locator("#signin-message .error")
    await refusal.wait_for()
    assert "operators and admins" in await refusal.inner_text()
    assert await page.locator("#nav").is_hidden()
    await screenshot(page, "sign-in-refused")


async def test_a_wrong_key_is_refused(page: Any, system: System) -> None:
    await sign_in(page, system, "sk-soma-nothing_like_a_key")
    await page.locator("#signin-message .error").wait_for()
    assert await page.locator("#nav").is_hidden()


async def test_an_operator_signs_in_and_sees_every_tenant(page: Any, system: System) -> None:
    await signed_in(page, system, system.operator_key)
    assert "all tenants" in await page.locator("#who").inner_text()
    await page.locator("#live-status[data-state=live]").wait_for()
    await screenshot(page, "live-events")


async def test_a_chat_turn_appears_live_within_a_second(page: Any, system: System) -> None:
    await signed_in(page, system)
    await page.locator("#live-status[data-state=live]").wait_for()
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(
            f"{system.gateway}/v1/chat/completions",
            headers={"Authorization": f"Bearer {system.admin_key}"},
            json={"model": "soma-local-dev", "messages": [{"role": "user", "content": "hi"}]},
        )
    answered = time.monotonic()
    assert answer.status_code == 200, answer.text
    correlation = answer.json()["id"].removeprefix("chatcmpl-")
    row = page.locator(f'#live-rows tr[data-correlation="{correlation}"]')
    await row.first.wait_for(timeout=1000)
    assert time.monotonic() - answered < 1.0
    # The rest of the turn's commands and events arrive over the same socket just after.
    await row.nth(3).wait_for(timeout=1000)
    assert await row.count() >= 4, "the turn's commands and events, not one message"
    await page.locator("#live-list").hover()
    await row.filter(has_text="slm.completed").first.locator("button").click()
    detail = page.locator("#detail")
    await detail.wait_for()
    assert correlation in await detail.inner_text()
    await screenshot(page, "live-message")
    await page.get_by_role("link", name="Open this request's story").click()
    await page.locator("#story-steps li:not(.note)").nth(3).wait_for()
    assert correlation in page.url


async def test_messages_are_held_while_the_pointer_is_on_the_list(
    page: Any, system: System
) -> None:
    await signed_in(page, system)
    status = page.locator("#live-status[data-state=live]")
    await status.wait_for()
    await page.locator("#live-list").hover()
    with httpx.Client(timeout=30) as client:
        turn = chat(client, system, "held while pointed at")
    correlation = turn["id"].removeprefix("chatcmpl-")
    row = page.locator(f'#live-rows tr[data-correlation="{correlation}"]')
    await page.locator("#live-status", has_text="held while the pointer is on the list").wait_for()
    assert await row.count() == 0, "no row moves while the operator points at the list"
    await page.locator("h1").hover()
    await row.nth(3).wait_for(timeout=2000)
    assert await status.inner_text() == "live"


async def test_a_turns_story_is_a_timeline_of_its_hops(page: Any, system: System) -> None:
    with httpx.Client(timeout=30) as client:
        turn = chat(client, system, "tell me a story")
    correlation = turn["id"].removeprefix("chatcmpl-")
    await signed_in(page, system)
    await page.goto(f"{system.console}/console/#/story/{correlation}")
    steps = page.locator("#story-steps li:not(.note)")
    await steps.first.wait_for()
    text = await page.locator("#story-steps").inner_text()
    for hop in ("policy.evaluate", "slm.complete", "slm.completed", "sagas.finished"):
        assert hop in text
    assert "sagas → slm" in text
    assert await steps.count() >= 6
    await screenshot(page, "story")


async def test_sagas_are_listed_and_one_opens_with_its_history(page: Any, system: System) -> None:
    await signed_in(page, system)
    await page.goto(f"{system.console}/console/#/sagas")
    first = page.locator("#saga-list tbody tr a").first
    await first.wait_for()
    assert "chat_turn" in await page.locator("#saga-list").inner_text()
    await screenshot(page, "sagas")
    await first.click()
    await page.locator("#saga-history li").first.wait_for()
    assert await page.locator("#saga-state").inner_text() == "completed"
    assert await page.locator("#saga-data").count() == 1, "its working data is shown"
    await screenshot(page, "saga")


async def _task_waiting_for_approval(system: System) -> str:
    async with httpx.AsyncClient(timeout=30) as client:
        auth = {"Authorization": f"Bearer {system.admin_key}"}
        made = await client.post(
            f"{system.gateway}/v1/tasks",
            headers=auth,
            json={
                "input": {"goal": "Compare saga engines", "max_steps": 1, "require_approval": True}
            },
        )
        assert made.status_code == 202, made.text
        task_id: str = made.json()["id"]
        for _ in range(300):
            task = (await client.get(f"{system.gateway}/v1/tasks/{task_id}", headers=auth)).json()
            if "signal:approve" in task["waiting_for"]:
                return task_id
            await asyncio.sleep(0.2)
    raise AssertionError(f"task {task_id} never waited for approval: {task}")


async def test_an_agent_task_awaiting_approval_is_approved_and_completes(
    page: Any, system: System
) -> None:
    task_id = await _task_waiting_for_approval(system)
    await signed_in(page, system)
    await page.goto(f"{system.console}/console/#/sagas/default/{task_id}")
    approve = page.locator("#approve")
    await approve.wait_for()
    await screenshot(page, "task-awaiting-approval")
    await approve.click()
    await page.locator("#saga-outcome .ok").wait_for()
    result = page.locator("#saga-result")
    await result.wait_for(timeout=60_000)  # the page follows the saga until it ends
    assert await page.locator("#saga-state").inner_text() == "completed"
    assert '"approved_by": "' in await result.inner_text()
    await screenshot(page, "task-approved")


async def test_a_poisoned_command_is_dead_lettered_and_replayed_once_fixed(
    page: Any, system: System
) -> None:
    """A completion for a model whose provider is down fails on every delivery and is
    dead-lettered; with the provider back, replaying it from the console completes it."""
    nc = await connect(system.nats_url, "console-test")
    command = SlmComplete(
        model="gpt-4o-mini", messages=[ChatMessage(role="user", content="are you there?")]
    )
    env = envelope_for(command, tenant="default", actor="test")
    await publish(Connected(nc, nc.jetstream()), command, env)
    await signed_in(page, system)
    await page.goto(f"{system.console}/console/#/dead-letters")
    letter = page.locator("#dlq-table tbody tr", has_text="soma.cmd.default.slm.complete")
    for _ in range(100):
        if await letter.count():
            break
        await asyncio.sleep(0.3)
        await page.get_by_role("button", name="List", exact=True).click()
    assert "unavailable" in await letter.first.inner_text()
    await screenshot(page, "dead-letters")

    script = Script().then(REPLY)
    completed = await nc.subscribe("soma.evt.default.slm.completed")
    async with provider_on(system.provider_port, script):
        await letter.first.locator("button.replay").click()
        outcome = page.locator("#dlq-outcome .ok")
        await outcome.wait_for()
        assert "replayed to soma.cmd.default.slm.complete" in await outcome.inner_text()
        async with asyncio.timeout(20):
            while True:
                msg = await completed.next_msg(timeout=20)
                if (msg.headers or {}).get("Soma-Correlation-Id") == env.correlation_id:
                    break
    assert script.requests, "the replayed command reached the provider"
    await screenshot(page, "dead-letter-replayed")
    await nc.close()


async def test_streams_and_their_consumers_show_for_an_operator(page: Any, system: System) -> None:
    await signed_in(page, system, system.operator_key)
    await page.goto(f"{system.console}/console/#/streams")
    await page.locator("#streams h2", has_text="SOMA_CMD").wait_for()
    text = await page.locator("#streams").inner_text()
    assert "sagas-events" in text and "policy" in text
    await screenshot(page, "streams")


async def test_the_streams_page_needs_the_operator_role(page: Any, system: System) -> None:
    await signed_in(page, system)
    await page.goto(f"{system.console}/console/#/streams")
    refusal = page.locator("#streams .error")
    await refusal.wait_for()
    assert "operator role" in await refusal.inner_text()


async def test_usage_is_charted_by_model(page: Any, system: System) -> None:
    await signed_in(page, system)
    await page.goto(f"{system.console}/console/#/usage")
    await page.locator("#usage .chart").first.wait_for()
    assert "soma-local-dev" in await page.locator("#usage").inner_text()
    bars = page.locator("#usage .bar-fill")
    widths = [
        (await bars.nth(i).bounding_box() or {"width": 0})["width"]
        for i in range(await bars.count())
    ]
    assert max(widths) > 100, f"the longest bar spans the chart: {widths}"
    await screenshot(page, "usage")


async def test_an_admin_creates_a_key_shown_once(page: Any, system: System) -> None:
    await signed_in(page, system)
    await page.goto(f"{system.console}/console/#/keys")
    # The signed-in admin's own user: the bootstrap user "admin" is an operator too, and an
    # admin may not mint a key carrying the operator role.
    await page.locator("#f-user_id option", has_text="ada").first.wait_for(state="attached")
    await page.select_option("#f-user_id", label="ada (admin)")
    await page.fill("#f-name", "from the console")
    await page.get_by_role("button", name="Create key", exact=True).click()
    created = page.locator("#new-key")
    await created.wait_for()
    secret = await created.inner_text()
    assert secret.startswith("sk-soma-")
    listed = page.locator("#keys-table tr", has_text="from the console")
    await listed.wait_for()
    assert secret not in await page.locator("#keys-table").inner_text()
    await screenshot(page, "keys")
