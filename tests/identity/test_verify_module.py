from __future__ import annotations

import subprocess
import sys


def test_the_verifier_loads_without_sql_or_bus_code():
    probe = (
        "import sys, handlers.identity.verify; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('sqlalchemy', 'bus', 'nats', 'faststream', 'alembic', 'asyncpg', 'aiosqlite')))"
    )

    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()

    assert loaded == "[]"
