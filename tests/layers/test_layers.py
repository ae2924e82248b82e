"""The layering holds: schemas know nothing of ours, the bus knows schemas, the shared kernel knows
the bus, each area (a handler, sagas, the gateway) knows those and never another area, and only
the CLI assembles them all."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.layers.imports import PACKAGES, violations

ROOT = Path(__file__).resolve().parents[2]


def test_the_project_imports_only_down_its_layers() -> None:
    assert violations(ROOT) == []


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package)
    return tmp_path


@pytest.mark.parametrize(
    ("path", "planted", "named"),
    [
        (
            "handlers/tools/service.py",
            "from handlers.policy import rules",
            "handlers.tools -> handlers.policy.rules",
        ),
        (
            "bus/publish.py",
            "from kernel.settings import Settings",
            "bus -> kernel.settings.Settings",
        ),
        ("schemas/envelope.py", "import bus.publish", "schemas -> bus.publish"),
        ("gateway/app.py", "from sagas import queries", "gateway -> sagas.queries"),
        (
            "gateway/app.py",
            "from handlers.identity import api_keys",
            "gateway -> handlers.identity.api_keys",
        ),
        ("kernel/db.py", "from soma import cli", "kernel -> soma.cli"),
        ("sagas/engine.py", "import handlers.memory.service", "sagas -> handlers.memory.service"),
    ],
)
def test_a_planted_import_across_layers_is_named(
    copy: Path, path: str, planted: str, named: str
) -> None:
    target = copy / path
    target.write_text(target.read_text() + f"\n\ndef _planted() -> None:\n    {planted}\n")
    found = violations(copy)
    assert len(found) == 1 and found[0].startswith(path) and found[0].endswith(named), found
