"""A handler process for tests: records every command it handles in a file, one id per line.

Usage: python -m tests.bus.worker <nats-url> <record-file>
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from bus import runtime
from bus.service import Service
from kernel.processes import until_stopped
from kernel.settings import Settings
from schemas.envelope import Envelope
from schemas.policy import PolicyEvaluate, PolicyEvaluated


def main() -> None:
    url, record = sys.argv[1], Path(sys.argv[2])

    async def handle(cmd: PolicyEvaluate, env: Envelope) -> PolicyEvaluated:
        with record.open("a") as f:
            f.write(env.message_id + "\n")
        await asyncio.sleep(0.002)
        return PolicyEvaluated(decision_id=env.message_id, decision="allow", stage=cmd.stage)

    settings = Settings(NATS_URL=url, SOMA_DATA_DIR=record.parent, SOMA_FETCH_BATCH=8)
    service = Service("policy", {PolicyEvaluate: handle})
    asyncio.run(until_stopped(runtime.serve(service, settings, None)))


if __name__ == "__main__":
    main()
