"""The ``python`` tool runs code in a bubblewrap sandbox confined by time, memory, output and
network limits; where the sandbox cannot run, the tool is unavailable with the reason."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from handlers.tools.builtin import python
from handlers.tools.config import ToolsConfig
from handlers.tools.invocation import invoke
from handlers.tools.registry import Registry
from handlers.tools.sandbox import (
    Isolation,
    Limits,
    SandboxUnavailable,
    bwrap_argv,
    isolation_for,
)
from handlers.tools.service import local_registry
from schemas.tools import ToolResult

LIMITS = Limits(timeout=1.0, memory_bytes=128 * 2**20, output_bytes=4000)
INTERPRETER = ToolsConfig().python_executable

Call = Callable[[str], Awaitable[ToolResult]]


@pytest.fixture(scope="module")
def isolation() -> Isolation:
    """The real sandbox; in CI a machine that cannot build it fails the suite."""
    try:
        return isolation_for(INTERPRETER)
    except SandboxUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the python sandbox is unavailable: {exc}")
        pytest.skip(f"the python sandbox is unavailable here: {exc}")


@pytest.fixture
def run(isolation: Isolation) -> Call:
    async def call(code: str) -> ToolResult:
        registry = Registry()
        registry.add(python(LIMITS, isolation))
        return await invoke(registry, "c1", "python", {"code": code})

    return call


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A socket listening on 127.0.0.1 that the sandboxed code will try to reach."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        yield server


def exists(path: str) -> bool:
    return Path(path).exists()


def accepted_anything(server: socket.socket) -> bool:
    try:
        connection, _ = server.accept()
    except BlockingIOError:
        return False
    connection.close()
    return True


async def test_printed_output_comes_back(run: Call) -> None:
    result = await run("import math\nprint(math.factorial(20))")
    assert result.ok
    assert result.output == {"stdout": "2432902008176640000\n", "stderr": "", "exit_code": 0}


async def test_an_exception_is_an_error_with_the_traceback(run: Call) -> None:
    result = await run("x = 1\nraise ValueError('bad input')")
    assert not result.ok
    assert result.error is not None
    assert result.error.startswith("the code exited with status 1:")
    assert 'File "main.py", line 2' in result.error
    assert "ValueError: bad input" in result.error


async def test_an_infinite_loop_is_killed_at_the_time_limit(run: Call) -> None:
    started = time.monotonic()
    result = await run("while True:\n    pass")
    assert time.monotonic() - started < LIMITS.timeout + 5
    assert not result.ok
    assert result.error == "stopped: the code ran longer than 1 s"


async def test_sleeping_past_the_time_limit_is_killed_too(run: Call) -> None:
    result = await run("import time\nprint('start', flush=True)\ntime.sleep(30)")
    assert not result.ok
    assert result.error == "stopped: the code ran longer than 1 s"
    assert result.output["stdout"] == "start\n"


async def test_a_memory_hog_is_stopped_at_the_memory_limit(run: Call) -> None:
    result = await run("hog = []\nwhile True:\n    hog.append(bytearray(8 * 2**20))")
    assert not result.ok
    assert result.error == "stopped: the code needed more than 128 MB of memory"
    assert "MemoryError" in result.output["stderr"]


async def test_memory_under_the_limit_is_fine(run: Call) -> None:
    result = await run("data = bytearray(32 * 2**20)\nprint(len(data))")
    assert result.ok, result.error
    assert result.output["stdout"] == f"{32 * 2**20}\n"


async def test_connecting_to_a_listening_local_port_fails(
    run: Call, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    code = (
        f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        "print('connected')"
    )
    result = await run(code)
    assert not result.ok
    assert "connected" not in result.output["stdout"]
    assert "network access is disabled in this sandbox" in result.output["stderr"]
    assert not accepted_anything(listener)


def test_the_sandbox_alone_stops_a_connection(
    isolation: Isolation, listener: socket.socket
) -> None:
    """Without the in-process block: a plain interpreter in the sandbox cannot connect."""
    port = listener.getsockname()[1]
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)"
    done = subprocess.run(
        [*bwrap_argv(isolation, LIMITS), "--", isolation.python, "-I", "-S", "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert "ConnectionRefusedError: [Errno 111] Connection refused" in done.stderr
    assert not accepted_anything(listener)


async def test_output_beyond_the_limit_stops_the_code(run: Call) -> None:
    result = await run("import time\nwhile True:\n    print('x' * 1000, flush=True)")
    assert not result.ok
    assert result.error == "stopped: the code printed more than 4000 bytes"
    assert len(result.output["stdout"]) == 4000


async def test_starting_a_process_is_refused(run: Call) -> None:
    result = await run("import subprocess\nsubprocess.run(['true'])")
    assert not result.ok
    assert "starting processes is disabled in this sandbox" in result.output["stderr"]


async def test_code_starts_in_a_private_tmp_holding_only_its_own_file(run: Call) -> None:
    code = (
        "import os\nopen('scratch.txt', 'w').write('x')\n"
        "print(os.getcwd())\nprint(sorted(os.listdir()))"
    )
    result = await run(code)
    assert result.ok, result.error
    assert result.output["stdout"] == "/tmp\n['main.py', 'scratch.txt']\n"


async def test_files_left_by_one_call_are_gone_in_the_next(run: Call) -> None:
    first = await run("open('/tmp/left-behind', 'w').write('x')\nprint('written')")
    second = await run("import os\nprint(os.path.exists('/tmp/left-behind'))")
    assert first.output["stdout"] == "written\n"
    assert second.output["stdout"] == "False\n"


async def test_environment_of_the_handler_is_not_passed_on(
    run: Call, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOMA_GITHUB_TOKEN", "ghp_secret")
    result = await run("import os\nprint(sorted(os.environ))")
    assert result.ok
    assert result.output["stdout"] == "['HOME', 'LC_ALL', 'PATH', 'PWD', 'TMPDIR']\n"


async def test_code_runs_as_the_unprivileged_sandbox_account(run: Call) -> None:
    code = "import os\nprint(os.getuid(), os.getgid())\nopen('/etc/soma-sandbox-test', 'w')"
    result = await run(code)
    assert result.output["stdout"] == "65534 65534\n"
    assert "OSError: [Errno 30] Read-only file system" in result.output["stderr"]
    assert not exists("/etc/soma-sandbox-test")


def test_a_missing_bubblewrap_makes_the_tool_unavailable_with_the_reason(
    client: httpx.AsyncClient,
) -> None:
    config = ToolsConfig(SOMA_TOOLS_BWRAP="/nonexistent/bwrap")
    registry = local_registry(config, client)
    assert "python" not in registry.tools
    assert registry.unavailable["python"].startswith(
        "bubblewrap is not installed ('/nonexistent/bwrap' not found): install it"
    )


def test_an_unknown_sandbox_user_makes_the_tool_unavailable_with_the_reason(
    client: httpx.AsyncClient,
) -> None:
    config = ToolsConfig(SOMA_TOOLS_SANDBOX_USER="no-such-user-soma")
    registry = local_registry(config, client)
    assert "python" not in registry.tools
    assert registry.unavailable["python"] == "sandbox user 'no-such-user-soma' does not exist"


@pytest.mark.parametrize("user", ["root", "0"])
def test_root_is_refused_as_the_sandbox_user(user: str) -> None:
    with pytest.raises(SandboxUnavailable, match="must not be root"):
        isolation_for(INTERPRETER, user)


def test_an_interpreter_the_sandbox_cannot_run_makes_the_tool_unavailable(
    isolation: Isolation, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    """A copy of the interpreter in a private folder, away from its standard library."""
    private = tmp_path / "private"
    (private / "bin").mkdir(parents=True)
    private.chmod(0o700)
    copy = private / "bin" / "python3"
    shutil.copy2(isolation.python, copy)
    registry = local_registry(ToolsConfig(SOMA_TOOLS_PYTHON=str(copy)), client)
    assert "python" not in registry.tools
    reason = registry.unavailable["python"]
    assert reason.startswith("the sandbox does not start here (")
    assert f"check that uid 65534 can read and run {copy}" in reason
