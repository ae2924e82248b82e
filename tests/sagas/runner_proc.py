"""A saga runner process for durability tests (killed with SIGKILL by the tests).

Usage: python -m tests.sagas.runner_proc <nats-url> <database-url> [--with-v2]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile

from kernel.settings import Settings
from sagas import runner
from tests.sagas.definitions import ALL, versioned_v2


async def main() -> None:
    nats_url, database_url = sys.argv[1], sys.argv[2]
    definitions = [*ALL, versioned_v2] if "--with-v2" in sys.argv else ALL
    settings = Settings(
        NATS_URL=nats_url,
        DATABASE_URL=database_url,
        SOMA_DATA_DIR=tempfile.mkdtemp(),
        SOMA_MAX_DELIVER=5,
        SOMA_ACK_WAIT=2,
    )
    await runner.start(settings, definitions)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
