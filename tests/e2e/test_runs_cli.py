"""`soma runs …` as an operator runs it, against the real processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from schemas.sagas import ENDED
from tests.e2e.conftest import ROOT, System

DEFINITION = """
goal: A short brief on saga engines
agents:
  - {name: researcher, role: You find facts.}
  - {name: writer, role: You write for engineers.}
steps:
  - {id: research, agent: researcher, task: Collect the main facts, max_steps: 1}
  - {id: write, agent: writer, task: Write the brief, max_steps: 1, gate: true, needs: [research]}
"""


def soma(system: System, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "soma.cli", "runs", *args],
        env=system.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def shown(system: System, run_id: str) -> dict[str, Any]:
    done = soma(system, "show", run_id, "--json")
    assert done.returncode == 0, done.stderr
    view: dict[str, Any] = json.loads(done.stdout)
    return view


def until(system: System, run_id: str, what: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        view = shown(system, run_id)
        if what(view):
            return view
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} never got there: {view}")


def start(system: System, tmp_path: Path) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(DEFINITION)
    done = soma(system, "start", str(path), "--tenant", "acme", "--role", "user")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _approve_and_list(system: System, tmp_path: Path) -> None:
    run_id = start(system, tmp_path)
    view = until(system, run_id, lambda v: v["gate"] == "write")
    assert [s["state"] for s in view["steps"]] == ["completed", "waiting"]
    approved = soma(system, "approve", run_id, "--by", "ops")
    assert approved.returncode == 0, approved.stderr
    view = until(system, run_id, lambda v: v["state"] in ENDED)
    assert view["state"] == "completed" and view["report"]
    assert view["steps"][1]["approved_by"] == "ops"
    listed = soma(system, "ls", "--json")
    assert run_id in {json.loads(line)["id"] for line in listed.stdout.splitlines()}
    table = soma(system, "show", run_id)
    assert "research" in table.stdout and "completed" in table.stdout


def _reject(system: System, tmp_path: Path) -> None:
    run_id = start(system, tmp_path)
    until(system, run_id, lambda v: v["gate"] == "write")
    rejected = soma(system, "reject", run_id, "--comment", "off topic")
    assert rejected.returncode == 0, rejected.stderr
    view = until(system, run_id, lambda v: v["state"] in ENDED)
    assert view["state"] == "compensated" and view["error"].endswith("off topic")
    again = soma(system, "approve", run_id)
    assert again.returncode == 1 and "not waiting at a gate" in again.stderr


async def test_runs_start_show_approve_and_ls(system: System, tmp_path: Path) -> None:
    await asyncio.to_thread(_approve_and_list, system, tmp_path)


async def test_runs_reject_ends_the_run_compensated(system: System, tmp_path: Path) -> None:
    await asyncio.to_thread(_reject, system, tmp_path)


async def test_runs_start_refuses_an_invalid_file_with_the_place(
    system: System, tmp_path: Path
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(DEFINITION.replace("agent: writer", "agent: poet"))
    done = await asyncio.to_thread(soma, system, "start", str(path))
    assert done.returncode == 2
    assert "steps[1].agent: unknown agent 'poet'" in done.stderr
