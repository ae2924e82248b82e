"""The list filter of ``soma saga ls --query`` and ``SagaList.query``, after Temporal's.

    state = "failed" AND type = "agent_task" AND started_at > "2026-11-01"
    (state = "running" OR state = "cancelling") AND input.goal != ""
    tenant IN ("acme", "globex") AND finished_at = null

Grammar (keywords in any case; strings in double or single quotes, backslash escapes):

    query      := or
    or         := and ("OR" and)*
    and        := term ("AND" term)*
    term       := "(" or ")" | comparison
    comparison := field op value | field "IN" "(" value ("," value)* ")"
    op         := "=" | "!=" | ">" | ">=" | "<" | "<="
    value      := string | number | true | false | null

Fields are ``FIELDS`` (``saga_type``, ``saga_id`` and ``created_at`` are also accepted) and
``input.<key>[.<key>…]``, a field of the saga's input. A time field takes an ISO time
(``"2026-11-01"``, ``"2026-11-01T10:00:00Z"``; UTC when no zone is given) or seconds since the
epoch. ``field = null`` asks for a field that is not set; ``!=`` also matches a saga where the
field is not set. An input field is compared as what the value is: a string as text, a number
as a number, ``true``/``false`` as a boolean.

A query is parsed into a SQLAlchemy condition on ``saga_instances`` and runs in the database,
on SQLite and PostgreSQL alike (SQLAlchemy's JSON paths address the input there).
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, String, and_, case, or_
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from sagas import tables
from schemas.sagas import SagaState

_i = tables.instances

# The fields a query may name, with the column each reads and what its values are.
FIELDS: dict[str, tuple[Any, str]] = {
    "id": (_i.c.id, "text"),
    "type": (_i.c.type, "text"),
    "state": (_i.c.state, "state"),
    "tenant": (_i.c.tenant, "text"),
    "step": (_i.c.step, "text"),
    "parent_id": (_i.c.parent_id, "text"),
    "error_code": (_i.c.error_code, "text"),
    "version": (_i.c.version, "number"),
    "run": (_i.c.run, "number"),
    "started_at": (_i.c.created_at, "time"),
    "updated_at": (_i.c.updated_at, "time"),
    "finished_at": (_i.c.finished_at, "time"),
}
ALIASES = {"saga_type": "type", "saga_id": "id", "created_at": "started_at"}
INPUT = "input."
_COMPARE = {
    "=": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
_OPS = tuple(_COMPARE)


class QueryError(ValueError):
    """A query that cannot be run; ``position`` is where in it (0-based) the trouble is."""

    def __init__(self, message: str, position: int, query: str) -> None:
        super().__init__(message)
        self.message = message
        self.position = position
        self.query = query

    def __str__(self) -> str:
        return f"at position {self.position + 1}: {self.message}"

    def pointed(self) -> str:
        """The query with a caret under where the trouble is, and the message."""
        return f"{self.query}\n{' ' * self.position}^\n{self}"


@dataclass(frozen=True)
class Token:
    kind: str  # "name", "string", "number", "op", "(", ")", ",", "end"
    text: str
    position: int
    value: Any = None


_TOKEN = re.compile(
    r"""(?P<space>\s+)
      | (?P<number>-?\d+(?:\.\d+)?(?![\w.]))
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)
      | (?P<op>!=|>=|<=|=|>|<)
      | (?P<punct>[(),])
      | (?P<string>"|')""",
    re.VERBOSE,
)


def tokenize(query: str) -> list[Token]:
    tokens: list[Token] = []
    at = 0
    while at < len(query):
        m = _TOKEN.match(query, at)
        if m is None:
            raise QueryError(f"unexpected character {query[at]!r}", at, query)
        kind = m.lastgroup
        if kind == "string":
            text, end = _string(query, at)
            tokens.append(Token("string", query[at:end], at, text))
            at = end
            continue
        if kind == "number":
            tokens.append(Token("number", m.group(), at, float(m.group())))
        elif kind == "name":
            tokens.append(Token("name", m.group(), at))
        elif kind == "op":
            tokens.append(Token("op", m.group(), at))
        elif kind == "punct":
            tokens.append(Token(m.group(), m.group(), at))
        at = m.end()
    tokens.append(Token("end", "", len(query)))
    return tokens


def _string(query: str, start: int) -> tuple[str, int]:
    quote = query[start]
    out = []
    at = start + 1
    while at < len(query):
        c = query[at]
        if c == "\\" and at + 1 < len(query):
            out.append(query[at + 1])
            at += 2
            continue
        if c == quote:
            return "".join(out), at + 1
        out.append(c)
        at += 1
    raise QueryError(f"the string opened here has no closing {quote}", start, query)


def parse(query: str) -> ColumnElement[bool]:
    """The condition ``query`` asks for, or a ``QueryError`` naming where and what was
    expected."""
    parser = _Parser(query, tokenize(query))
    if parser.peek().kind == "end":
        raise QueryError('expected a comparison such as state = "failed"', 0, query)
    condition = parser.disjunction()
    token = parser.peek()
    if token.kind != "end":
        raise QueryError(
            f"expected AND, OR or the end, found {_shown(token)}", token.position, query
        )
    return condition


def _shown(token: Token) -> str:
    return "the end of the query" if token.kind == "end" else repr(token.text)


def _keyword(token: Token, word: str) -> bool:
    return token.kind == "name" and token.text.upper() == word


class _Parser:
    def __init__(self, query: str, tokens: list[Token]) -> None:
        self.query = query
        self.tokens = tokens
        self.at = 0

    def peek(self) -> Token:
        return self.tokens[self.at]

    def take(self) -> Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def fail(self, message: str, token: Token) -> QueryError:
        return QueryError(message, token.position, self.query)

    def disjunction(self) -> ColumnElement[bool]:
        parts = [self.conjunction()]
        while _keyword(self.peek(), "OR"):
            self.take()
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else or_(*parts)

    def conjunction(self) -> ColumnElement[bool]:
        parts = [self.term()]
        while _keyword(self.peek(), "AND"):
            self.take()
            parts.append(self.term())
        return parts[0] if len(parts) == 1 else and_(*parts)

    def term(self) -> ColumnElement[bool]:
        token = self.peek()
        if token.kind == "(":
            self.take()
            inner = self.disjunction()
            closing = self.take()
            if closing.kind != ")":
                raise self.fail(f"expected ) or AND/OR, found {_shown(closing)}", closing)
            return inner
        return self.comparison()

    def comparison(self) -> ColumnElement[bool]:
        name = self.take()
        if name.kind != "name" or name.text.upper() in ("AND", "OR", "IN"):
            raise self.fail(f"expected a field name or (, found {_shown(name)}", name)
        field = _Field.named(name, self)
        op = self.take()
        if _keyword(op, "IN"):
            return or_(*(field.compare("=", v) for v in self.values()))
        if op.kind != "op":
            raise self.fail(
                f"expected one of {' '.join(_OPS)} or IN after {name.text}, found {_shown(op)}",
                op,
            )
        return field.compare(op.text, self.value())

    def values(self) -> list[tuple[Token, Any]]:
        opening = self.take()
        if opening.kind != "(":
            raise self.fail(f"expected ( after IN, found {_shown(opening)}", opening)
        values = [self.value()]
        while self.peek().kind == ",":
            self.take()
            values.append(self.value())
        closing = self.take()
        if closing.kind != ")":
            raise self.fail(f"expected , or ) in the IN list, found {_shown(closing)}", closing)
        return values

    def value(self) -> tuple[Token, Any]:
        token = self.take()
        if token.kind in ("string", "number"):
            return token, token.value
        if token.kind == "name" and token.text.lower() in ("true", "false", "null"):
            return token, {"true": True, "false": False, "null": None}[token.text.lower()]
        if token.kind == "name":
            raise self.fail(
                f'expected a value, found {token.text}: text goes in quotes, "{token.text}"', token
            )
        raise self.fail(
            f'expected a value (a "string", a number, true, false or null), found {_shown(token)}',
            token,
        )


@dataclass(frozen=True)
class _Field:
    name: str
    column: Any
    kind: str  # "text", "state", "number", "time", "input"
    parser: _Parser
    path: tuple[str, ...] = ()

    @classmethod
    def named(cls, token: Token, parser: _Parser) -> _Field:
        text = token.text
        if text.startswith(INPUT):
            path = tuple(text[len(INPUT) :].split("."))
            column = _i.c.input[path] if len(path) > 1 else _i.c.input[path[0]]
            return cls(text, column, "input", parser, path)
        known = FIELDS.get(ALIASES.get(text, text))
        if known is None:
            allowed = ", ".join([*FIELDS, "input.<key>"])
            raise parser.fail(f"unknown field {text!r}; the fields are {allowed}", token)
        return cls(text, known[0], known[1], parser)

    def compare(self, op: str, value: tuple[Token, Any]) -> ColumnElement[bool]:
        token, raw = value
        if raw is None:
            if op not in ("=", "!="):
                raise self.parser.fail(f"null compares with = or != only, not {op}", token)
            column = self.column.as_string() if self.kind == "input" else self.column
            return column.is_(None) if op == "=" else column.is_not(None)
        if isinstance(raw, bool) and op not in ("=", "!="):
            raise self.parser.fail(f"true and false compare with = or != only, not {op}", token)
        column, operand = self._operand(token, raw)
        condition: ColumnElement[bool] = _COMPARE[op](column, operand)
        if op == "!=":  # "not equal" includes a saga where the field is not set
            return or_(condition, column.is_(None))
        return condition

    def _operand(self, token: Token, raw: Any) -> tuple[Any, Any]:
        if self.kind == "input":
            # Read as a number (a boolean) only where it is one: a saga that holds text there
            # does not match, where a plain cast would fail the whole query on PostgreSQL.
            kind = _JsonKind(self.path)
            if isinstance(raw, bool):
                return case((kind.in_(_BOOLEAN), self.column.as_boolean())), raw
            if isinstance(raw, float):
                return case((kind.in_(_NUMBER), self.column.as_float())), raw
            return self.column.as_string(), raw
        if self.kind == "time":
            return self.column, self._time(token, raw)
        if self.kind == "number":
            if not isinstance(raw, float):
                raise self.parser.fail(f"{self.name} is a number; found {token.text}", token)
            return self.column, raw
        if not isinstance(raw, str):
            raise self.parser.fail(
                f'{self.name} is text: put the value in quotes, "{token.text}"', token
            )
        if self.kind == "state" and raw not in set(SagaState):
            raise self.parser.fail(
                f"{raw!r} is not a saga state; the states are {', '.join(SagaState)}", token
            )
        return self.column, raw

    def _time(self, token: Token, raw: Any) -> float:
        if isinstance(raw, float):
            return raw
        if isinstance(raw, str):
            try:
                moment = datetime.fromisoformat(raw)
            except ValueError:
                pass
            else:
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=UTC)
                return moment.timestamp()
        raise self.parser.fail(
            f'{self.name} is a time: give an ISO time such as "2026-11-01" or '
            f'"2026-11-01T10:00:00Z", or seconds since the epoch; found {token.text}',
            token,
        )


# What ``_JsonKind`` reads for a number and a boolean, on SQLite and on PostgreSQL.
_NUMBER = ("integer", "real", "number")
_BOOLEAN = ("true", "false", "boolean")


class _JsonKind(FunctionElement[str]):
    """The JSON type of the input's value at ``path`` (SQLite's ``json_type``, PostgreSQL's
    ``json_typeof``); NULL where there is none. The path's keys are word characters only
    (the tokenizer's names), so they are written into the SQL as they are."""

    type = String()
    inherit_cache = True

    def __init__(self, path: tuple[str, ...]) -> None:
        super().__init__()
        self.path = path


@compiles(_JsonKind, "sqlite")
def _json_kind_sqlite(element: _JsonKind, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(_i.c.input, **kw)
    return f"json_type({column}, '$.{'.'.join(element.path)}')"


@compiles(_JsonKind, "postgresql")
def _json_kind_postgresql(element: _JsonKind, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(_i.c.input, **kw)
    return f"json_typeof({column} #> '{{{','.join(element.path)}}}')"
