"""The load a fault lands in: chat turns from a few clients and agent tasks, over HTTP.

The clients behave as real ones do: each request carries an ``Idempotency-Key``, and after a
connection error, a 5xx, a 429 or a 409 "still being processed" the same request is sent again
with the same key, until an answer comes or the client's patience runs out; every other turn is
streamed, and a broken stream is asked for again in the same way. Every turn says a
marker of its own, so what the system did for it can be found again in its stores.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

MODEL = "soma-local-dev"
CLIENTS = 4
TURNS_BEFORE_FAULT = 8
TURNS_AFTER_FAULT = 6
MAX_TURNS = 48
TASKS = 2
PAUSE = 0.1  # between one client's turns
PATIENCE = 90.0  # how long a client keeps retrying one request, all attempts together
RETRY_AFTER = 0.5
_RETRIED = {409, 429, 500, 502, 503, 504}
CALCULATOR = {
    "name": "calculator",
    "description": "Evaluate an arithmetic expression.",
    "parameters": {
        "type": "object",
        "properties": {"expression": {"type": "string"}},
        "required": ["expression"],
    },
}
ENDED = frozenset({"completed", "failed", "cancelled", "compensated", "compensation_failed"})


@dataclass
class Outcome:
    """What one client request came to, after its retries."""

    marker: str
    answered: bool = False
    status: int | None = None
    saga_id: str | None = None
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    replayed: bool = False
    streamed: bool = False
    text: str = ""  # the answer as the client got it, streamed or whole


@dataclass
class TaskOutcome:
    task_id: str
    started: bool = False
    state: str | None = None
    plan_steps: int = 0
    notes: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class Load:
    base_url: str
    api_key: str
    scenario: str
    turns: list[Outcome] = field(default_factory=list)
    tasks: list[TaskOutcome] = field(default_factory=list)
    sent: int = 0
    in_flight: int = 0
    in_flight_at_fault: int = 0
    started_at: float = field(default_factory=time.time)

    def marker(self, n: int) -> str:
        return f"fault-{self.scenario}-{n}"

    def prompt(self, marker: str) -> str:
        return f"Drill {marker}: summarise where the deployment stands."

    async def _post(
        self, client: httpx.AsyncClient, path: str, body: dict[str, Any], outcome: Any
    ) -> httpx.Response | None:
        """POST with the same Idempotency-Key until an answer that is not worth retrying."""
        headers = {"Authorization": f"Bearer {self.api_key}", "Idempotency-Key": str(uuid.uuid4())}
        deadline = time.monotonic() + PATIENCE
        while True:
            if isinstance(outcome, Outcome):
                outcome.attempts += 1
            try:
                response = await client.post(path, json=body, headers=headers)
            except httpx.TransportError as exc:
                outcome.errors.append(type(exc).__name__)
            else:
                if response.status_code not in _RETRIED:
                    return response
                code = _error_code(response)
                if response.status_code == 409 and code != "idempotency_key_in_use":
                    return response
                outcome.errors.append(f"{response.status_code} {code}".strip())
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(RETRY_AFTER)

    async def turn(self, client: httpx.AsyncClient, n: int) -> Outcome:
        """Every other turn is streamed."""
        outcome = Outcome(self.marker(n), streamed=n % 2 == 1)
        self.turns.append(outcome)
        body: dict[str, Any] = {
            "model": MODEL,
            "messages": [{"role": "user", "content": self.prompt(outcome.marker)}],
        }
        if outcome.streamed:
            await self._streamed(client, {**body, "stream": True}, outcome)
            return outcome
        response = await self._post(client, "/v1/chat/completions", body, outcome)
        if response is None:
            return outcome
        outcome.status = response.status_code
        outcome.replayed = response.headers.get("idempotent-replayed") == "true"
        if response.status_code == 200:
            completion = response.json()
            content = completion["choices"][0]["message"]["content"]
            outcome.text = content or ""
            outcome.answered = bool(content)
            outcome.saga_id = completion["id"].removeprefix("chatcmpl-")
        else:
            outcome.errors.append(f"{response.status_code} {response.text[:200]}")
        return outcome

    async def _streamed(
        self, client: httpx.AsyncClient, body: dict[str, Any], outcome: Outcome
    ) -> None:
        """A streamed turn: a stream that breaks, or ends in an error event, is asked for again
        with the same key; only a stream that reaches ``[DONE]`` counts as the answer."""
        headers = {"Authorization": f"Bearer {self.api_key}", "Idempotency-Key": str(uuid.uuid4())}
        deadline = time.monotonic() + PATIENCE
        while True:
            outcome.attempts += 1
            try:
                # Keep-alive comments would hold a stuck stream open for ever: bound it as a whole.
                async with (
                    asyncio.timeout(max(deadline - time.monotonic(), 1.0)),
                    client.stream(
                        "POST", "/v1/chat/completions", json=body, headers=headers
                    ) as response,
                ):
                    outcome.status = response.status_code
                    if response.status_code == 200:
                        text, ident, error = await _read_stream(response)
                        if error is None:
                            outcome.text = text
                            outcome.answered = bool(text)
                            outcome.saga_id = ident.removeprefix("chatcmpl-")
                            return
                        outcome.errors.append(f"stream: {error}")
                    else:
                        await response.aread()
                        code = _error_code(response)
                        retried = response.status_code in _RETRIED and (
                            response.status_code != 409 or code == "idempotency_key_in_use"
                        )
                        outcome.errors.append(f"{response.status_code} {code}".strip())
                        if not retried:
                            return
            except httpx.TransportError as exc:
                outcome.errors.append(type(exc).__name__)
            except TimeoutError:
                outcome.errors.append(f"no end of the stream within {PATIENCE:.0f}s")
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(RETRY_AFTER)

    async def task(self, client: httpx.AsyncClient, k: int) -> TaskOutcome:
        """Start a task with the client's own id, then follow it to its end.

        The goal lists its steps, which the offline model's plan repeats; each step names the
        calculator, which the task may run, so every step goes through policy, tools and memory.
        """
        outcome = TaskOutcome(f"fault-{self.scenario}-task{k}")
        self.tasks.append(outcome)
        goal = (
            f"Drill {outcome.task_id}: size two queues\n"
            f"1. Use the calculator for {k} + 2\n"
            f"2. Use the calculator for {k} * 3"
        )
        body = {
            "id": outcome.task_id,
            "input": {"goal": goal, "max_steps": 2, "platform_tools": [CALCULATOR]},
        }
        response = await self._post(client, "/v1/tasks", body, outcome)
        if response is None:
            return outcome
        # 409 "already running/exists": an earlier attempt started it before the connection broke.
        outcome.started = response.status_code in (202, 409)
        if not outcome.started:
            outcome.errors.append(f"{response.status_code} {response.text[:200]}")
            return outcome
        await self.follow(client, outcome)
        return outcome

    async def follow(self, client: httpx.AsyncClient, outcome: TaskOutcome) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            try:
                response = await client.get(f"/v1/tasks/{outcome.task_id}", headers=headers)
            except httpx.TransportError as exc:
                outcome.errors.append(type(exc).__name__)
            else:
                if response.status_code == 200:
                    task = response.json()
                    outcome.state = task["state"]
                    if outcome.state in ENDED:
                        result = task.get("result") or {}
                        outcome.plan_steps = len(result.get("plan") or [])
                        outcome.notes = len(result.get("notes") or [])
                        return
                elif response.status_code not in _RETRIED:
                    outcome.errors.append(f"{response.status_code} {response.text[:200]}")
            await asyncio.sleep(0.5)

    async def run(self, fault: Callable[[], Awaitable[None]]) -> None:
        """Clients send turns; after ``TURNS_BEFORE_FAULT`` the tasks start and the fault strikes
        while turns are in flight; once it is over (the process is back) the clients send a few
        more turns and stop."""
        fault_due = asyncio.Event()
        fault_over = asyncio.Event()
        after = 0

        async def client_loop(client: httpx.AsyncClient) -> None:
            nonlocal after
            while self.sent < MAX_TURNS:
                if fault_over.is_set():
                    if after >= TURNS_AFTER_FAULT:
                        return
                    after += 1
                n = self.sent
                self.sent += 1
                if self.sent >= TURNS_BEFORE_FAULT:
                    fault_due.set()
                self.in_flight += 1
                try:
                    await self.turn(client, n)
                finally:
                    self.in_flight -= 1
                await asyncio.sleep(PAUSE)

        async def strike() -> None:
            await fault_due.wait()
            await asyncio.sleep(0.2)  # let the latest turns get under way
            while self.in_flight == 0:
                await asyncio.sleep(0.01)
            self.in_flight_at_fault = self.in_flight
            await fault()
            fault_over.set()

        limits = httpx.Limits(max_connections=CLIENTS + TASKS + 2)
        timeout = httpx.Timeout(PATIENCE, connect=5)
        async with httpx.AsyncClient(
            base_url=self.base_url, limits=limits, timeout=timeout
        ) as client:

            async def task_at_fault(k: int) -> None:
                # Tasks take well under a second: started with the fault, they meet it mid-way.
                await fault_due.wait()
                await asyncio.sleep(0.1 * k)
                await self.task(client, k)

            await asyncio.gather(
                strike(),
                *(client_loop(client) for _ in range(CLIENTS)),
                *(task_at_fault(k) for k in range(TASKS)),
            )


async def _read_stream(response: httpx.Response) -> tuple[str, str, str | None]:
    """The streamed text, the completion id, and the error that ended the stream (if any)."""
    pieces: list[str] = []
    ident = ""
    async for line in response.aiter_lines():
        if not line.startswith("data: "):
            continue
        data = line[len("data: ") :]
        if data == "[DONE]":
            return "".join(pieces), ident, None
        chunk = json.loads(data)
        if "error" in chunk:
            return "".join(pieces), ident, str(chunk["error"].get("code") or chunk["error"])
        ident = chunk.get("id") or ident
        for choice in chunk.get("choices") or []:
            pieces.append((choice.get("delta") or {}).get("content") or "")
    return "".join(pieces), ident, "the stream ended before [DONE]"


def _error_code(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["code"] or "")
    except Exception:
        return ""
