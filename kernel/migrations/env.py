"""Alembic environment: runs migrations on the async engine named in the config."""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from kernel.db import make_engine, metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Several processes may start at once; one migrates, the others wait and find it done.
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7276620)")
        context.run_migrations()


async def _main() -> None:
    engine = make_engine(context.config.get_main_option("sqlalchemy.url") or "")
    async with engine.connect() as conn:
        await conn.run_sync(_run)
        await conn.commit()
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=context.config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_main())
