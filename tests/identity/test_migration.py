from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import handlers.identity.tables  # noqa: F401  (declares the tables on the shared metadata)
from kernel.db import metadata


def _identity_differences(connection) -> list:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    differences = []
    for diff in compare_metadata(context, metadata):
        flat = diff if isinstance(diff, list) else [diff]
        if any("identity_" in repr(part) for part in flat):
            differences.append(diff)
    return differences


async def test_the_migration_creates_exactly_the_declared_tables(db):
    async with db.connect() as conn:
        differences = await conn.run_sync(_identity_differences)

    assert differences == []
