"""`soma schemas export` and `soma migrate`: they do their job and say where."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from kernel.db import AREAS
from schemas.catalogue import CATALOGUE
from tests.cli.conftest import Soma, clean_env
from tests.servers import postgres_database


async def test_export_writes_a_schema_per_message_and_the_asyncapi_document(
    tmp_path: Path,
) -> None:
    out = tmp_path / "bus-docs"
    result = await Soma(clean_env())("schemas", "export", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    written = {p.name for p in out.iterdir()}
    assert written == {f"{name}.schema.json" for name in CATALOGUE} | {"asyncapi.json"}
    assert json.loads((out / "asyncapi.json").read_text())["asyncapi"].startswith("3.")
    assert f"{len(written)} files in {out}" in result.stdout


async def test_migrate_creates_a_sqlite_database_per_area_under_the_data_folder(
    tmp_path: Path,
) -> None:
    soma = Soma(clean_env(SOMA_DATA_DIR=str(tmp_path)))
    result = await soma("migrate")
    assert result.exit_code == 0, result.stderr
    for area in AREAS:
        path = (tmp_path / f"{area}.db").resolve()
        assert path.is_file()
        assert f"migrated sqlite+aiosqlite:///{path}" in result.stdout


def test_migrate_never_prints_the_database_password(tmp_path: Path) -> None:
    with postgres_database() as url:
        with_password = url.replace("postgres@", "postgres:hunter2@")
        soma = Soma(clean_env(SOMA_DATA_DIR=str(tmp_path), DATABASE_URL=with_password))
        result = asyncio.run(soma("migrate"))
    assert result.exit_code == 0, result.stderr
    assert "hunter2" not in result.stdout + result.stderr
    assert "postgres:***@127.0.0.1" in result.stdout


async def test_migrate_failure_is_one_line_naming_the_database(tmp_path: Path) -> None:
    soma = Soma(clean_env(DATABASE_URL="postgresql://soma:secret@127.0.0.1:1/none"))
    result = await soma("migrate")
    assert result.exit_code == 1
    assert "migrations failed on postgresql+asyncpg://soma:***@127.0.0.1:1/none" in result.stderr
    assert "secret" not in result.stderr
    assert "Traceback" not in result.stderr
