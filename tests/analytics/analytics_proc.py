"""An analytics process for the kill -9 test: counts the events stream until killed.

Usage: python -m tests.analytics.analytics_proc <nats-url> <database-url> <data-dir>
"""

from __future__ import annotations

import asyncio
import sys

from bus import runtime
from handlers.analytics.service import build
from kernel.settings import Settings


async def main() -> None:
    nats_url, database_url, data_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    settings = Settings.model_validate(
        {
            "NATS_URL": nats_url,
            "DATABASE_URL": database_url,
            "SOMA_DATA_DIR": data_dir,
            # What the killed process held comes back within the test's patience.
            "SOMA_ACK_WAIT": 2,
        }
    )
    await runtime.start(build(settings), settings)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
