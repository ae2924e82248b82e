"""The ``python`` tool runs code in a child confined by time, memory, output and network limits."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
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
    child_setup,
    isolation_for,
    network_namespace_available,
    run_python,
)
from handlers.tools.service import local_registry
from schemas.tools import ToolResult

LIMITS = Limits(timeout=1.0, memory_bytes=128 * 2**20, output_bytes=4000)
DEFAULT = isolation_for(sys.executable)
IN_PROCESS_ONLY = Isolation(network_namespace=False)


async def run(code: str, isolation: Isolation = DEFAULT) -> ToolResult:
    registry = Registry()
    registry.add(python(LIMITS, isolation))
    return await invoke(registry, "c1", "python", {"code": code})


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


async def test_printed_output_comes_back() -> None:
    result = await run("import math\nprint(math.factorial(20))")
    assert result.ok
    assert result.output == {"stdout": "2432902008176640000\n", "stderr": "", "exit_code": 0}


async def test_an_exception_is_an_error_with_the_traceback() -> None:
    result = await run("x = 1\nraise ValueError('bad input')")
    assert not result.ok
    assert result.error is not None
    assert result.error.startswith("the code exited with status 1:")
    assert 'File "main.py", line 2' in result.error
    assert "ValueError: bad input" in result.error


async def test_an_infinite_loop_is_killed_at_the_time_limit() -> None:
    started = time.monotonic()
    result = await run("while True:\n    pass")
    assert time.monotonic() - started < LIMITS.timeout + 2
    assert not result.ok
    assert result.error == "stopped: the code ran longer than 1 s"


async def test_sleeping_past_the_time_limit_is_killed_too() -> None:
    result = await run("import time\nprint('start', flush=True)\ntime.sleep(30)")
    assert not result.ok
    assert result.error == "stopped: the code ran longer than 1 s"
    assert result.output["stdout"] == "start\n"


async def test_a_memory_hog_is_stopped_at_the_memory_limit() -> None:
    result = await run("hog = []\nwhile True:\n    hog.append(bytearray(8 * 2**20))")
    assert not result.ok
    assert result.error == "stopped: the code needed more than 128 MB of memory"
    assert "MemoryError" in result.output["stderr"]


async def test_memory_under_the_limit_is_fine() -> None:
    result = await run("data = bytearray(32 * 2**20)\nprint(len(data))")
    assert result.ok, result.error
    assert result.output["stdout"] == f"{32 * 2**20}\n"


@pytest.mark.parametrize("isolation", [DEFAULT, IN_PROCESS_ONLY], ids=["default", "in-process"])
async def test_connecting_to_a_listening_local_port_fails(
    listener: socket.socket, isolation: Isolation
) -> None:
    port = listener.getsockname()[1]
    code = (
        f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        "print('connected')"
    )
    result = await run(code, isolation)
    assert not result.ok
    assert "connected" not in result.output["stdout"]
    assert "network access is disabled in this sandbox" in result.output["stderr"]
    assert not accepted_anything(listener)


def test_the_network_namespace_alone_stops_a_connection(listener: socket.socket) -> None:
    """Without the in-process block: a plain interpreter in the namespace cannot connect."""
    if not network_namespace_available(sys.executable):
        pytest.skip("this kernel or container refuses network namespaces")
    port = listener.getsockname()[1]
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)"
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code],
        preexec_fn=child_setup(LIMITS, Isolation(network_namespace=True)),
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert done.returncode == 1
    assert "OSError: [Errno 101] Network is unreachable" in done.stderr
    assert not accepted_anything(listener)


async def test_output_beyond_the_limit_stops_the_code() -> None:
    result = await run("import time\nwhile True:\n    print('x' * 1000, flush=True)")
    assert not result.ok
    assert result.error == "stopped: the code printed more than 4000 bytes"
    assert len(result.output["stdout"]) == 4000


async def test_starting_a_process_is_refused() -> None:
    result = await run("import subprocess\nsubprocess.run(['true'])")
    assert not result.ok
    assert "starting processes is disabled in this sandbox" in result.output["stderr"]


async def test_code_runs_in_a_fresh_folder_that_is_removed_afterwards() -> None:
    code = "import os\nopen('scratch.txt', 'w').write('x')\nprint(os.getcwd())\nprint(os.listdir())"
    first = await run(code)
    second = await run(code)
    assert first.ok and second.ok
    first_dir, first_listing = first.output["stdout"].splitlines()
    second_dir, _ = second.output["stdout"].splitlines()
    assert first_dir != second_dir
    assert first_listing == "['main.py', 'scratch.txt']"
    assert not exists(first_dir)
    assert not exists(second_dir)


async def test_environment_of_the_handler_is_not_passed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOMA_GITHUB_TOKEN", "ghp_secret")
    result = await run("import os\nprint(sorted(os.environ))")
    assert result.ok
    assert "SOMA_GITHUB_TOKEN" not in result.output["stdout"]


async def test_runs_as_the_sandbox_user_when_the_handler_is_root() -> None:
    interpreter = shutil.which("python3", path="/usr/bin:/bin")
    if os.geteuid() != 0 or interpreter is None:
        pytest.skip("needs root and a system python3 that the sandbox user can run")
    isolation = isolation_for(interpreter, "nobody")
    code = "import os\nprint(os.getuid())\nopen('/etc/soma-sandbox-test', 'w')"
    done = await run_python(code, LIMITS, isolation, interpreter)
    assert done.stdout == "65534\n"
    assert "PermissionError" in done.stderr
    assert not exists("/etc/soma-sandbox-test")


async def test_an_unusable_sandbox_user_makes_the_tool_unavailable_with_the_reason(
    client: httpx.AsyncClient,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("a sandbox user only takes effect when the handler runs as root")
    config = ToolsConfig(SOMA_TOOLS_SANDBOX_USER="no-such-user-soma")
    registry = local_registry(config, client)
    assert "python" not in registry.tools
    assert registry.unavailable["python"] == "sandbox user 'no-such-user-soma' does not exist"
