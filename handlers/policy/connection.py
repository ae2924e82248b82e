"""What the policy process sends on its own initiative, on the connection the runtime serves it
on: constitution announcements, and the judge model's ``slm.complete`` requests.

The judge's answer is awaited with ``bus.request.Requester`` following only the events a judge
request awaits (``slm.completed``, ``slm.failed``), subscribed to when the judge is first asked:
a policy process whose tenants have no judge never receives a model's answer, where following
``soma.evt.*.slm.>`` from the start made it read and parse every turn's.
"""

from __future__ import annotations

import msgspec

from bus.errors import RequestTimeout
from bus.publish import envelope_for, publish
from bus.request import Requester
from bus.service import Connected
from handlers.policy.judge import JudgeUnavailable
from schemas.common import CommandFailed
from schemas.slm import SlmComplete, SlmCompleted


class PolicyConnection:
    def __init__(self) -> None:
        self._requester: Requester | None = None

    async def open(self, bus: Connected) -> None:
        requester = Requester(bus.nc, bus.js, subject=None)
        await requester.start()
        self._requester = requester

    def _require(self) -> Requester:
        if self._requester is None:
            raise RuntimeError("the policy process used its connection before its startup hook")
        return self._requester

    async def publish(
        self, event: msgspec.Struct, tenant: str, message_id: str, correlation_id: str
    ) -> None:
        """Publish ``event`` under ``message_id``; a second publish of it is dropped."""
        env = envelope_for(
            event,
            tenant=tenant,
            actor="policy",
            message_id=message_id,
            correlation_id=correlation_id,
        )
        await publish(self._require().bus, event, env)

    async def ask(
        self, command: SlmComplete, tenant: str, correlation_id: str, timeout: float
    ) -> str:
        """The judge model's answer to ``command``, or ``JudgeUnavailable`` saying why not."""
        try:
            _, reply = await self._require().request(
                command,
                tenant=tenant,
                expect={"slm.completed"},
                timeout=timeout,
                actor="policy",
                correlation_id=correlation_id,
            )
        except RequestTimeout:
            raise JudgeUnavailable(f"no answer from {command.model} within {timeout:g}s") from None
        except Exception as exc:
            raise JudgeUnavailable(f"{command.model} could not be asked: {exc}") from exc
        if isinstance(reply.payload, CommandFailed):
            raise JudgeUnavailable(f"{command.model} failed: {reply.payload.error}")
        if not isinstance(reply.payload, SlmCompleted):
            raise JudgeUnavailable(f"unexpected reply {reply.schema}")
        return reply.payload.message.content or ""

    async def close(self) -> None:
        if self._requester is not None:
            await self._requester.close()
            self._requester = None
