"""`soma usage`: the report read straight from the SQL store, as a table or as JSON.

The command is run as the ``soma`` app registers it (a sub-app under the name ``usage``), in-process
through Typer's runner; each test records its events first on a database of its own (SQLite) or
a throwaway PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import typer
from alembic import command
from typer.testing import CliRunner, Result

from handlers.analytics import rollups
from kernel.db import alembic_config, make_engine
from schemas.sagas import SagaFinished, SagaStarted
from soma import cli_usage
from tests.analytics.conftest import DAY, completion, envelope

soma = typer.Typer()
soma.add_typer(cli_usage.app, name="usage")


def _record(url: str, now: float) -> None:
    """acme: two models today, one model ten days ago, one chat turn; globex: one call today."""

    async def record() -> None:
        await asyncio.to_thread(command.upgrade, alembic_config(url), "analytics@head")
        engine = make_engine(url)
        calls = [
            ("acme", "gpt-4o-mini", now, 1000, 0.25),
            ("acme", "gpt-4o-mini", now, 500, 0.25),
            ("acme", "claude-3-5-haiku", now, 40, 0.5),
            ("acme", "claude-3-5-haiku", now - 10 * DAY, 7, 1.0),
            ("globex", "gpt-4o-mini", now, 9, 2.0),
        ]
        for tenant, model, at, prompt, cost in calls:
            await rollups.model_completed(
                engine,
                completion(model, prompt=prompt, completion_tokens=1, cost=cost),
                envelope("slm.completed", tenant=tenant, at=at),
            )
        await rollups.saga_started(
            engine,
            SagaStarted(saga_id="s1", saga_type="chat_turn", version=1),
            envelope("sagas.started", tenant="acme", correlation_id="s1", at=now - 3),
        )
        await rollups.saga_finished(
            engine,
            SagaFinished(saga_id="s1", saga_type="chat_turn", state="completed"),
            envelope("sagas.finished", tenant="acme", correlation_id="s1", at=now),
        )
        await engine.dispose()

    asyncio.run(record())


def _usage(args: list[str], data_dir: Path, database_url: str | None = None) -> Result:
    env = {"SOMA_DATA_DIR": str(data_dir), "DATABASE_URL": database_url, "COLUMNS": "200"}
    return CliRunner().invoke(soma, ["usage", *args], env=env)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("│").split("│")]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data folder whose analytics store (its own SQLite file) holds the recorded usage."""
    _record(f"sqlite+aiosqlite:///{tmp_path / 'analytics.db'}", time.time())
    return tmp_path


def test_usage_shows_every_tenant_by_model_with_totals(data_dir: Path) -> None:
    result = _usage([], data_dir)

    assert result.exit_code == 0, result.output
    rows = [_cells(line) for line in result.output.splitlines() if "│" in line]
    assert "┃ tenant ┃ model " in result.output
    assert ["acme", "gpt-4o-mini", "2", "0", "1,500", "2", "0.5000", "250"] in rows
    assert ["globex", "gpt-4o-mini", "1", "0", "9", "1", "2.0000", "250"] in rows
    [total] = [r for r in rows if r[0] == "total"]
    assert total[2:7] == ["5", "0", "1,556", "5", "4.0000"]
    assert "requests: model calls" in result.output


def test_usage_json_is_the_tenants_report_for_the_window(data_dir: Path) -> None:
    result = _usage(
        ["--tenant", "acme", "--since", "7d", "--group-by", "model,day", "--json"], data_dir
    )

    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["tenant"] == "acme"
    assert document["group_by"] == ["model", "day"]
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert [
        (r["group"], r["requests"], r["prompt_tokens"], r["total_tokens"]) for r in document["rows"]
    ] == [
        ({"model": "claude-3-5-haiku", "day": today}, 1, 40, 41),
        ({"model": "gpt-4o-mini", "day": today}, 2, 1500, 1502),
    ]
    assert document["since"] < time.time() - 7 * DAY


def test_usage_by_saga_type_counts_saga_runs(data_dir: Path) -> None:
    result = _usage(["--tenant", "acme", "--group-by", "saga_type", "--json"], data_dir)

    rows = {r["group"]["saga_type"]: r for r in json.loads(result.output)["rows"]}
    assert rows["chat_turn"]["requests"] == 1
    assert rows["chat_turn"]["latency_ms_avg"] == pytest.approx(3000)


def test_an_unknown_grouping_is_a_usage_error(data_dir: Path) -> None:
    result = _usage(["--group-by", "model,colour"], data_dir)

    assert result.exit_code == 2
    assert "colour" in result.output and "saga_type" in result.output


def test_an_unreadable_since_is_a_usage_error(data_dir: Path) -> None:
    result = _usage(["--since", "last tuesday"], data_dir)

    assert result.exit_code == 2
    assert "--since" in result.output


def test_a_tenant_without_usage_is_told_so(data_dir: Path) -> None:
    result = _usage(["--tenant", "initech"], data_dir)

    assert result.exit_code == 0
    assert "no usage recorded" in result.output


def test_a_store_without_the_analytics_tables_says_how_to_get_them(tmp_path: Path) -> None:
    result = _usage([], tmp_path)

    assert result.exit_code == 1
    assert "soma migrate" in result.output


def test_usage_reads_postgresql_when_database_url_names_it(
    postgresql_url: str, tmp_path: Path
) -> None:
    _record(postgresql_url, time.time())
    plain = postgresql_url.replace("postgresql+asyncpg://", "postgresql://")

    result = _usage(["--tenant", "globex", "--json"], tmp_path, plain)

    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)["rows"]
    assert (row["group"], row["prompt_tokens"], row["cost_usd"]) == (
        {"model": "gpt-4o-mini"},
        9,
        2.0,
    )
