"""``soma saga ls --query``: the list filter's grammar, its errors, and the same answers from
SQLite and PostgreSQL (input fields are JSON paths, read differently by each)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from kernel.db import make_engine, migrate
from sagas import queries, tables
from sagas.list_query import QueryError, parse
from schemas.common import FailureCode
from schemas.sagas import SagaList
from tests.sagas.conftest import Stack


def at(day: str) -> float:
    return datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()


def saga(
    saga_id: str, saga_type: str, state: str, tenant: str, started: str, **input: Any
) -> dict[str, Any]:
    finished = at(started) + 60 if state not in ("running", "cancelling") else None
    return {
        "id": saga_id,
        "type": saga_type,
        "version": 1,
        "run": 1,
        "tenant": tenant,
        "correlation_id": saga_id,
        "actor": "test",
        "parent_id": None,
        "state": state,
        "step": None,
        "input": input,
        "data": {},
        "waiting": None,
        "wake_at": None,
        "result": None,
        "error": None,
        "error_code": None,
        "seq": 1,
        "rev": 1,
        "created_at": at(started),
        "updated_at": at(started),
        "finished_at": finished,
    }


SAGAS = [
    saga(
        "a",
        "agent_task",
        "failed",
        "acme",
        "2026-11-02",
        goal="compare",
        priority=3,
        approval=True,
        meta={"team": "x"},
    ),
    saga("b", "agent_task", "running", "acme", "2026-10-30", goal="", priority="high"),
    saga("c", "chat_turn", "completed", "globex", "2026-11-05"),
    saga(
        "d",
        "agent_task",
        "terminated",
        "globex",
        "2026-11-03",
        goal="write",
        priority=10,
        approval=False,
    ),
]


@pytest.fixture(scope="module")
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    await migrate(database_url, "sagas")
    engine = make_engine(database_url)
    async with engine.begin() as conn:
        await conn.execute(tables.instances.delete())
        await conn.execute(tables.instances.insert(), SAGAS)
    yield engine
    await engine.dispose()


async def matching(db: AsyncEngine, query: str) -> list[str]:
    rows = await queries.list_instances(db, where=parse(query), limit=100)
    return sorted(r["id"] for r in rows)


@pytest.mark.parametrize(
    ("query", "ids"),
    [
        ('type = "agent_task" AND state = "failed" AND started_at > "2026-11-01"', ["a"]),
        ('(state = "running" OR state = "terminated") AND tenant = "globex"', ["d"]),
        ('state = "running" OR state = "terminated" AND tenant = "globex"', ["b", "d"]),
        ('state = "failed" and tenant = "acme"', ["a"]),
        ('tenant IN ("acme", "globex") AND started_at < "2026-11-03T00:00:00Z"', ["a", "b"]),
        ("finished_at = null", ["b"]),
        ('saga_type = "chat_turn"', ["c"]),
        ('input.goal = "compare"', ["a"]),
        ('input.goal != ""', ["a", "c", "d"]),
        ("input.priority >= 3", ["a", "d"]),
        ('input.priority = "high"', ["b"]),
        ("input.approval = true", ["a"]),
        ("input.approval != true", ["b", "c", "d"]),
        ('input.meta.team = "x"', ["a"]),
        ("input.goal = null", ["c"]),
    ],
)
async def test_a_query_finds_the_sagas_it_describes(
    db: AsyncEngine, query: str, ids: list[str]
) -> None:
    assert await matching(db, query) == ids


async def test_a_query_joins_the_other_filters_with_and(db: AsyncEngine) -> None:
    rows = await queries.list_instances(
        db, tenant="acme", where=parse('type = "agent_task"'), limit=100
    )
    assert sorted(r["id"] for r in rows) == ["a", "b"]


def refusal(query: str) -> QueryError:
    with pytest.raises(QueryError) as caught:
        parse(query)
    return caught.value


def test_a_malformed_query_names_the_position_and_what_was_expected() -> None:
    error = refusal('state = "failed" AND')
    assert error.position == len('state = "failed" AND')
    assert str(error) == ("at position 21: expected a field name or (, found the end of the query")
    assert refusal('(state = "failed"').message.startswith("expected ) or AND/OR")
    assert refusal('state "failed"').message.startswith("expected one of = != > >= < <= or IN")
    assert refusal('state = "failed" extra').position == len('state = "failed" ')
    assert refusal("").message == 'expected a comparison such as state = "failed"'


def test_an_unquoted_word_as_a_value_is_shown_in_quotes() -> None:
    assert 'text goes in quotes, "failed"' in refusal("state = failed").message


def test_an_unclosed_string_points_at_its_opening_quote() -> None:
    error = refusal('type = "agent_task AND state = 1')
    assert error.position == len("type = ")
    assert "no closing" in error.message


def test_an_unknown_field_is_refused_with_the_fields_there_are() -> None:
    error = refusal('status = "failed"')
    assert error.position == 0
    assert "unknown field 'status'" in error.message
    assert "state, tenant" in error.message and "input.<key>" in error.message


def test_a_state_that_does_not_exist_is_refused_with_the_states() -> None:
    assert "the states are running, cancelling" in refusal('state = "faild"').message


def test_a_time_that_is_not_one_is_refused() -> None:
    assert "started_at is a time" in refusal('started_at > "last week"').message


def test_an_error_points_under_the_place_in_the_query() -> None:
    assert refusal('state = "failed" OR stat = "x"').pointed() == (
        'state = "failed" OR stat = "x"\n'
        "                    ^\n"
        "at position 21: unknown field 'stat'; the fields are id, type, state, tenant, step, "
        "parent_id, error_code, version, run, started_at, updated_at, finished_at, input.<key>"
    )


# The same filter over the bus (``SagaList.query``), answered by the runner from its store.


async def test_a_list_over_the_bus_takes_a_query(db: AsyncEngine, stack: Stack) -> None:
    _, reply = await stack.requester.request(
        SagaList(query="input.priority >= 3"), tenant="acme", expect={"sagas.listed"}
    )
    assert reply.schema == "sagas.listed", reply.payload
    assert [s.saga_id for s in reply.payload.sagas] == ["a"], "d matches, but in another tenant"


async def test_a_malformed_query_over_the_bus_is_refused_as_invalid(stack: Stack) -> None:
    _, reply = await stack.requester.request(
        SagaList(query="state = failed"), tenant="acme", expect={"sagas.listed"}
    )
    assert reply.schema == "sagas.failed"
    assert reply.payload.code == FailureCode.INVALID
    assert "at position 9" in reply.payload.error
