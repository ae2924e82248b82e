"""``soma usage``: tokens, cost and latency per tenant, model, saga type, user or day.

It reads the analytics rollups straight from the SQL database (the same ``report`` the gateway's
``GET /v1/usage`` gets over the bus), so it answers even when no analytics process is running —
with what was counted up to when it last ran.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import typer

from soma import terminal

if TYPE_CHECKING:
    from schemas.analytics import UsageRow

app = typer.Typer(rich_markup_mode="markdown", subcommand_metavar="")


@app.callback(invoke_without_command=True)
def usage(
    tenant: str = typer.Option(
        "",
        "--tenant",
        "-t",
        help="Only this tenant (default: every tenant, one group each).",
        show_default=False,
    ),
    since: str = typer.Option(
        "",
        "--since",
        "-s",
        help="From this long ago (7d, 12h) or this time "
        "(2026-11-25, 2026-11-25T10:00:00Z). Default: everything recorded.",
        show_default=False,
    ),
    until: str = typer.Option(
        "",
        "--until",
        "-u",
        help="Up to this long ago or this time. Default: now.",
        show_default=False,
    ),
    group_by: list[str] = typer.Option(
        ["model"],
        "--group-by",
        "-g",
        help="model, saga_type, day, user, key, tenant: comma-separated or repeated.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
    output: str = typer.Option("table", "--output", "-o", help="table or json (as --json)."),
) -> None:
    """Usage, cost and latency as the analytics process counted them from the events.

    One row per group: requests, errors, prompt and completion tokens, cost in USD and average
    latency. A request is a model call — except when grouped by saga_type and not by model:
    then it is a saga run (a chat turn, an agent task), its latency the run's duration, and
    its tokens and cost those of the model calls made inside it. Days are UTC, and the window
    is whole days: --since and --until take in the whole day they fall on.

    **Examples**

        soma usage
        soma usage --tenant acme --since 7d --group-by model,day
        soma usage --group-by saga_type
        soma usage --tenant acme --since 2026-11-01 --until 2026-11-30 --json | jq '.rows[]'

    **Environment**

    * `DATABASE_URL` — where the analytics process records usage (PostgreSQL), or unset:
      the SQLite file `SOMA_DATA_DIR/kernel.db`
    """
    import asyncio

    from handlers.analytics.report import DIMENSIONS, InvalidWindow, bounds, window

    if output not in ("table", "json"):
        terminal.fail(f"-o {output!r}: choose from table, json", terminal.USAGE)
    as_json = as_json or output == "json"
    dims = list(dict.fromkeys(d.strip() for g in group_by for d in g.split(",") if d.strip()))
    unknown = [d for d in dims if d not in DIMENSIONS]
    if unknown:
        terminal.fail(
            f"--group-by {', '.join(unknown)}: choose from {', '.join(DIMENSIONS)}",
            terminal.USAGE,
        )
    if not tenant and "tenant" not in dims:
        dims.insert(0, "tenant")
    start = _epoch("--since", since)
    end = _epoch("--until", until)
    try:
        first, last = window(start, end)
    except InvalidWindow:
        terminal.fail(f"--since {since} is after --until {until}", terminal.USAGE)
    rows = asyncio.run(_read(tenant or None, start, end, dims))
    covered = bounds(first, last)
    if as_json:
        _print_json(rows, tenant or None, dims, covered)
    else:
        _print_table(rows, tenant or None, dims, covered)


def _epoch(option: str, text: str) -> float | None:
    from soma.tail import TailError, parse_since

    if not text:
        return None
    try:
        return float(text)  # unix seconds, as the HTTP API takes them too
    except ValueError:
        pass
    try:
        return parse_since(text).timestamp()
    except TailError:
        terminal.fail(
            f"{option} {text!r}: expected unix seconds, a duration ago (30m, 12h, 7d) or a "
            "time (2026-11-25, 2026-11-25T10:00:00 in local time, or with Z / +01:00)",
            terminal.USAGE,
        )


async def _read(
    tenant: str | None, since: float | None, until: float | None, dims: list[str]
) -> list[UsageRow]:
    from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

    from handlers.analytics.report import report
    from kernel.db import make_engine
    from soma.supervisor import safe_url

    url = terminal.settings().resolved_database_url("analytics")
    engine = make_engine(url)
    try:
        return await report(engine, tenant, since, until, dims)
    except (OperationalError, ProgrammingError) as exc:
        if "analytics_usage_daily" in str(exc):
            terminal.fail(
                f"{safe_url(url)} has no analytics tables yet: run `soma migrate`, and "
                "`soma run analytics` (or `soma up`) to count usage"
            )
        terminal.fail(f"cannot read usage from {safe_url(url)}: {exc.orig}")
    except (DBAPIError, OSError) as exc:
        terminal.fail(f"cannot read usage from {safe_url(url)}: {exc}")
    finally:
        await engine.dispose()


def _row_json(row: UsageRow) -> dict[str, object]:
    return {
        "group": row.group,
        "requests": row.requests,
        "errors": row.errors,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "total_tokens": row.prompt_tokens + row.completion_tokens,
        "cost_usd": row.cost_usd,
        "latency_ms_avg": row.latency_ms_avg,
    }


def _print_json(
    rows: list[UsageRow],
    tenant: str | None,
    dims: list[str],
    covered: tuple[float | None, float | None],
) -> None:
    document = {
        "tenant": tenant,
        "group_by": dims,
        "since": covered[0],
        "until": covered[1],
        "rows": [_row_json(r) for r in rows],
    }
    sys.stdout.write(json.dumps(document) + "\n")


def _when(epoch: float | None, open_end: str) -> str:
    from datetime import UTC, datetime

    if epoch is None:
        return open_end
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d")


def _print_table(
    rows: list[UsageRow],
    tenant: str | None,
    dims: list[str],
    covered: tuple[float | None, float | None],
) -> None:
    from rich.table import Table

    from handlers.analytics.report import counts_saga_runs

    since, until = covered
    last_day = None if until is None else until - 86400
    whose = f"usage of {tenant}" if tenant else "usage"
    title = f"{whose} {_when(since, 'from the start')} … {_when(last_day, 'now')} (UTC days)"
    unit = "saga runs" if counts_saga_runs(dims) else "model calls"
    if not rows:
        terminal.out.print(f"{title}: no usage recorded")
        return
    table = Table(
        title=title, title_justify="left", caption=f"requests: {unit}", caption_justify="left"
    )
    for dim in dims:
        table.add_column(dim)
    for column in (
        "requests",
        "errors",
        "prompt tokens",
        "completion tokens",
        "cost USD",
        "avg latency ms",
    ):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(*_cells(r, dims))
    if len(rows) > 1 and dims:
        table.add_section()
        table.add_row(
            "total",
            *[""] * (len(dims) - 1),
            f"{sum(r.requests for r in rows):,}",
            f"{sum(r.errors for r in rows):,}",
            f"{sum(r.prompt_tokens for r in rows):,}",
            f"{sum(r.completion_tokens for r in rows):,}",
            f"{sum(r.cost_usd for r in rows):.4f}",
            "",
        )
    terminal.out.print(table)


def _cells(row: UsageRow, dims: list[str]) -> list[str]:
    return [
        *(row.group.get(d) or "(none)" for d in dims),
        f"{row.requests:,}",
        f"{row.errors:,}",
        f"{row.prompt_tokens:,}",
        f"{row.completion_tokens:,}",
        f"{row.cost_usd:.4f}",
        f"{row.latency_ms_avg:,.0f}",
    ]
