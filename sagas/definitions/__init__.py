"""The saga definitions this project ships."""

from typing import Any

from sagas.definition import Definition

ALL: list[Definition[Any]] = []
