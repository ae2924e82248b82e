"""The README's commands are the ones that exist."""

from __future__ import annotations

import re
import subprocess

from typer.testing import CliRunner

from soma.cli import app
from tests.cli.conftest import ROOT

README = (ROOT / "README.md").read_text()


def _blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README, flags=re.S)


def test_the_readme_opens_with_exactly_the_start_and_test_commands() -> None:
    first = _blocks()[0]
    commands = [line.split("#")[0].strip() for line in first.splitlines() if line.strip()]
    assert commands == ["./run up", "./run test"]
    assert README.index("```sh") < README.index("## ")


def test_the_run_script_is_executable_posix_shell_and_knows_its_commands() -> None:
    run = ROOT / "run"
    assert run.stat().st_mode & 0o111
    assert subprocess.run(["sh", "-n", str(run)]).returncode == 0
    unknown = subprocess.run([str(run), "nosuch"], capture_output=True, text=True)
    assert unknown.returncode == 2
    for command in ("./run up", "./run test", "./run lint", "./run bench"):
        assert command in unknown.stderr


def test_every_soma_command_in_the_readme_exists() -> None:
    runner = CliRunner()
    seen: set[tuple[str, ...]] = set()
    for block in _blocks():
        for line in block.splitlines():
            words = line.split("#")[0].split()
            if len(words) >= 2 and words[0] == "soma":
                words = words[1:3] if words[1] in ("dlq", "schemas", "saga", "runs") else words[1:2]
                seen.add(tuple(w for w in words if not w.startswith(("-", "'", "{"))))
    assert {("up",), ("tail",), ("publish",), ("dlq", "ls"), ("streams",)} <= seen
    for path in seen:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
