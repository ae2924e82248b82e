"""Running untrusted Python in a child process with time, memory, output and network limits.

The child is a fresh interpreter (``-I -S``: no environment variables, no user or site
packages — the standard library only) in a new temporary folder that is removed afterwards.
Before it starts, in the forked child:

- a new network namespace (``unshare(CLONE_NEWNET)``, what ``unshare -n`` does) when the kernel
  allows it — detected once per interpreter path; it has no interfaces, so no connection can
  be made whatever the code does;
- when the handler runs as root and a sandbox user is configured, a switch to that account;
- resource limits: address space (memory), CPU seconds, no new processes or threads
  (``RLIMIT_NPROC`` = 0, which the kernel ignores for root), file size, open files, no core dumps.

Inside, ``sandbox_boot`` also disables sockets and process creation, so the code gets a clear
error either way. The wall-clock limit and the output limit are enforced from outside by killing
the child's process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import math
import os
import pwd
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

BOOT = (Path(__file__).parent / "sandbox_boot.py").read_text(encoding="utf-8")

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000

_libc = ctypes.CDLL(None, use_errno=True)
_unshare = _libc.unshare
_unshare.argtypes = [ctypes.c_int]
_unshare.restype = ctypes.c_int

Limit = Literal["time", "memory", "output"]


@dataclass(frozen=True)
class Limits:
    timeout: float = 10.0
    memory_bytes: int = 256 * 2**20
    output_bytes: int = 64_000


@dataclass(frozen=True)
class Isolation:
    network_namespace: bool
    # (uid, gid) to switch to; only when the handler runs as root.
    user: tuple[int, int] | None = None


@dataclass(frozen=True)
class Run:
    stdout: str
    stderr: str
    exit_code: int | None
    # The limit that stopped the code, if one did.
    limit: Limit | None = None


def _namespace_flags() -> int:
    # Without root, a user namespace is what lets an unprivileged process own a network one.
    return CLONE_NEWNET if os.geteuid() == 0 else CLONE_NEWUSER | CLONE_NEWNET


def _enter_network_namespace() -> None:
    if _unshare(_namespace_flags()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare: {os.strerror(err)}")


@functools.cache
def network_namespace_available(executable: str) -> bool:
    """Whether a child can get its own network namespace here (containers often refuse)."""
    try:
        done = subprocess.run(
            [executable, "-I", "-S", "-c", "pass"],
            preexec_fn=_enter_network_namespace,
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


class SandboxUnavailable(RuntimeError):
    """The configured sandbox cannot run here; the message says what to change."""


def isolation_for(executable: str, user: str | None = None) -> Isolation:
    """The strongest isolation this machine allows; a named user only takes effect as root."""
    account = None
    if user and os.geteuid() == 0:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise SandboxUnavailable(f"sandbox user {user!r} does not exist") from None
        account = (entry.pw_uid, entry.pw_gid)
        if not _runs_as(executable, account):
            raise SandboxUnavailable(
                f"sandbox user {user!r} cannot run {executable}; set SOMA_TOOLS_PYTHON to an "
                "interpreter outside private folders (e.g. /usr/bin/python3)"
            )
    return Isolation(network_namespace=network_namespace_available(executable), user=account)


def _runs_as(executable: str, account: tuple[int, int]) -> bool:
    def switch() -> None:
        os.setgroups([])
        os.setgid(account[1])
        os.setuid(account[0])

    try:
        done = subprocess.run(
            [executable, "-I", "-S", "-c", "pass"],
            preexec_fn=switch,
            capture_output=True,
            cwd="/",
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def child_setup(limits: Limits, isolation: Isolation) -> Callable[[], None]:
    """The ``preexec_fn`` that confines the forked child before it executes the interpreter."""
    memory = limits.memory_bytes
    cpu = max(1, math.ceil(limits.timeout)) + 1

    def setup() -> None:
        os.setsid()  # its own process group, so a kill reaches anything it managed to start
        if isolation.network_namespace:
            _enter_network_namespace()
        if isolation.user is not None:
            uid, gid = isolation.user
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (memory, memory))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return setup


async def run_python(
    code: str, limits: Limits, isolation: Isolation, executable: str = sys.executable
) -> Run:
    workdir = await asyncio.to_thread(_prepare, code, isolation)
    try:
        return await _run_in(workdir, limits, isolation, executable)
    finally:
        # The code may have left many files; removing them should not stall other calls.
        await asyncio.to_thread(shutil.rmtree, workdir, ignore_errors=True)


def _prepare(code: str, isolation: Isolation) -> Path:
    workdir = Path(tempfile.mkdtemp(prefix="soma-python-"))
    (workdir / "main.py").write_text(code, encoding="utf-8")
    if isolation.user is not None:
        for path in (workdir, workdir / "main.py"):
            os.chown(path, *isolation.user)
    return workdir


async def _run_in(workdir: Path, limits: Limits, isolation: Isolation, executable: str) -> Run:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "LC_ALL": "C.UTF-8",
    }
    proc = await asyncio.create_subprocess_exec(
        executable, "-I", "-S", "-B", "-c", BOOT, "main.py",
        cwd=workdir,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=child_setup(limits, isolation),
    )
    assert proc.stdout is not None and proc.stderr is not None
    out, err = bytearray(), bytearray()
    total = 0
    limit: Limit | None = None

    def kill() -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    async def pump(stream: asyncio.StreamReader, into: bytearray) -> None:
        nonlocal total, limit
        while chunk := await stream.read(65536):
            room = max(limits.output_bytes - total, 0)
            into += chunk[:room]
            total += len(chunk)
            if total > limits.output_bytes:
                limit = "output"
                kill()
                return

    try:
        await asyncio.wait_for(
            asyncio.gather(pump(proc.stdout, out), pump(proc.stderr, err), proc.wait()),
            limits.timeout,
        )
    except TimeoutError:
        limit = limit or "time"
    finally:
        kill()
        await proc.wait()

    stdout = out.decode("utf-8", errors="replace")
    stderr = err.decode("utf-8", errors="replace")
    code = proc.returncode
    if limit is None and code in (-signal.SIGXCPU, -signal.SIGKILL):
        limit = "time"  # the CPU limit, which catches busy loops even if the clock check lags
    elif limit is None and code != 0 and _ran_out_of_memory(stderr):
        limit = "memory"
    return Run(stdout=stdout, stderr=stderr, exit_code=code, limit=limit)


def _ran_out_of_memory(stderr: str) -> bool:
    tail = stderr[-2000:]
    return "MemoryError" in tail or "Cannot allocate memory" in tail or "out of memory" in tail
