"""A policy handler that allows everything: the process `soma up` tests supervise.

It lets the supervisor's tests watch a command make the round trip through a real child process
without depending on the real policy handler's rules or storage.
"""

from __future__ import annotations

from bus.service import Service
from kernel.settings import Settings
from schemas.envelope import Envelope
from schemas.policy import PolicyEvaluate, PolicyEvaluated


def build(settings: Settings) -> Service:
    async def evaluate(cmd: PolicyEvaluate, env: Envelope) -> PolicyEvaluated:
        return PolicyEvaluated(decision_id=env.message_id, decision="allow", stage=cmd.stage)

    return Service(name="policy", routes={PolicyEvaluate: evaluate})
