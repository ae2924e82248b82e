"""Colours and wrapping on a terminal only: piped, a listing is plain text, one row a line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.conftest import ROOT, clean_env

TENANT = "acme-corporation-with-a-rather-long-tenant-name"
USER = "someone-with-an-even-longer-user-name-than-that"


def _soma(data: Path, *args: str, **extra: str) -> str:
    """``soma ARGS`` with stdout a pipe and no COLUMNS, as in ``soma keys ls | grep …``."""
    env = clean_env(SOMA_DATA_DIR=str(data), **extra)
    for variable in ("COLUMNS", "FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE"):
        if variable not in extra:
            env.pop(variable, None)
    done = subprocess.run(
        [sys.executable, "-m", "soma.cli", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding one key of a long-named tenant and user."""
    folder = tmp_path_factory.mktemp("output")
    _soma(folder, "keys", "create", "--tenant", TENANT, "--user", USER)
    return folder


def _row(listing: str, key_id: str) -> str:
    (row,) = [line for line in listing.splitlines() if key_id in line]
    return row


def test_a_piped_listing_has_no_escape_codes(data: Path) -> None:
    listing = _soma(data, "keys", "ls")
    assert "\x1b[" not in listing


def test_a_piped_listing_keeps_each_row_on_one_line_however_long(data: Path) -> None:
    listing = _soma(data, "keys", "ls")
    key_id = json.loads(_soma(data, "keys", "ls", "-o", "json").splitlines()[0])["id"]
    row = _row(listing, key_id)
    assert TENANT in row and USER in row
    assert len(row) > 80


def test_force_color_colours_a_pipe_and_still_does_not_wrap(data: Path) -> None:
    listing = _soma(data, "keys", "ls", FORCE_COLOR="1")
    assert "\x1b[" in listing
    assert any(TENANT in line and USER in line for line in listing.splitlines())


def test_columns_still_sets_a_width_explicitly(data: Path) -> None:
    listing = _soma(data, "keys", "ls", COLUMNS="80")
    assert all(len(line) <= 80 for line in listing.splitlines())
