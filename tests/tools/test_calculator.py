"""The calculator evaluates arithmetic and refuses anything else, without ``eval``."""

from __future__ import annotations

import pytest

from handlers.tools.builtin import calculator
from handlers.tools.invocation import invoke
from handlers.tools.registry import Registry


@pytest.fixture
def registry() -> Registry:
    registry = Registry()
    registry.add(calculator())
    return registry


async def calc(registry: Registry, expression: object) -> tuple[bool, object, str | None]:
    result = await invoke(registry, "c1", "calculator", {"expression": expression})
    return result.ok, result.output, result.error


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("7 / 2", 3.5),
        ("7 // 2", 3),
        ("-7 % 3", 2),
        ("2 ** 10", 1024),
        ("-(3 - 5)", 2),
        ("sqrt(16) + abs(-2)", 6.0),
        ("round(pi, 4)", 3.1416),
        ("max(1, 5, 3) - min(4, 2)", 3),
        ("factorial(5)", 120),
        ("log(e)", 1.0),
    ],
)
async def test_evaluates_arithmetic(registry: Registry, expression: str, value: float) -> None:
    assert await calc(registry, expression) == (True, {"result": value}, None)


async def test_division_by_zero_is_an_error(registry: Registry) -> None:
    ok, _, error = await calc(registry, "1 / (2 - 2)")
    assert not ok
    assert error == "cannot evaluate '1 / (2 - 2)': division by zero"


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('true')",
        "(1).__class__",
        "open('/etc/passwd')",
        "[x for x in range(3)]",
        "'a' * 3",
        "lambda: 1",
    ],
)
async def test_refuses_anything_but_arithmetic(registry: Registry, expression: str) -> None:
    ok, _, error = await calc(registry, expression)
    assert not ok
    assert error is not None and error.startswith(f"cannot evaluate {expression!r}")


async def test_huge_powers_are_refused_instead_of_computed(registry: Registry) -> None:
    ok, _, error = await calc(registry, "9 ** 9 ** 9")
    assert not ok
    assert "exceed 4096 bits" in (error or "")


async def test_syntax_error_is_reported(registry: Registry) -> None:
    ok, _, error = await calc(registry, "2 +")
    assert not ok
    assert "not a valid expression" in (error or "")


async def test_non_string_expression_is_a_schema_violation(registry: Registry) -> None:
    ok, _, error = await calc(registry, 42)
    assert not ok
    assert "at arguments.expression: 42 is not of type 'string'" in (error or "")
