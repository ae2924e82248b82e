"""Running untrusted Python under bubblewrap: the kernel's namespaces and limits are the boundary.

Each call starts ``bwrap`` (bubblewrap), which puts a fresh interpreter in new user, PID, mount,
network, IPC and UTS namespaces. Inside, the code sees:

- an unprivileged account (uid and gid 65534 unless ``SOMA_TOOLS_SANDBOX_USER`` names another);
  when the tools process runs as root, ``bwrap`` itself is started as that account, so the code
  holds no root identity outside its namespaces either;
- an empty environment apart from ``PATH``, ``HOME``, ``TMPDIR`` and ``LC_ALL``;
- a read-only view of the system's programs and libraries (``/usr`` and the ``/bin``, ``/lib*``
  links, plus the interpreter's own prefix when it lives elsewhere), a two-line ``/etc/passwd``
  and ``/etc/group`` naming only its own account, and nothing else of the host: no data folder,
  no home folders, no ``/run`` or ``/var/run`` and so no unix socket of another service;
- a private ``/tmp`` (a size-limited tmpfs, the only writable place), where the code is
  ``main.py`` and the working folder starts;
- a ``/proc`` of its own PID namespace only, so no other process can be seen, read or signalled;
- a network namespace with nothing but its own loopback, so no connection leaves it.

Resource limits (address space, CPU seconds, processes, file size, open files, no core dumps)
are set by ``sandbox_boot`` before the code runs; the kernel then holds the code to them, and
the process count is per sandbox because each call has its own user namespace.

The wall-clock and output limits are enforced from here by killing the namespace's first
process, which takes every process of the namespace with it; a call does not return until the
whole namespace is gone, so nothing the code started outlives it.

Whether this machine can do all that is probed once per configuration, by starting the real
sandbox. Where it cannot (no ``bwrap``, or a kernel or container that refuses the namespaces) the
probe raises ``SandboxUnavailable`` with what to change: the tool is never run unconfined.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

BOOT = (Path(__file__).parent / "sandbox_boot.py").read_text(encoding="utf-8")

# The account sandboxed code runs as when none is configured: "nobody" on most systems.
NOBODY = (65534, 65534)
# The private folder, the code's working folder and the only writable place.
WORKDIR = "/tmp"
SCRIPT = "main.py"
OPEN_FILES = 64
# Folders of the host's root kept in view: programs and the libraries they load.
SYSTEM_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
# Options newer bubblewraps understand; used where the installed one does.
HARDENING = ("--disable-userns",)
ENVIRONMENT = {"PATH": "/usr/bin:/bin", "HOME": WORKDIR, "TMPDIR": WORKDIR, "LC_ALL": "C.UTF-8"}
# How long to wait for a namespace to be gone once its first process was killed.
TEARDOWN = 10.0

Limit = Literal["time", "memory", "output"]


@dataclass(frozen=True)
class Limits:
    timeout: float = 10.0
    memory_bytes: int = 256 * 2**20
    output_bytes: int = 64_000
    # The size of the private /tmp, and of any one file the code writes.
    disk_bytes: int = 64 * 2**20
    # Processes and threads in the namespace, bubblewrap's own first process included.
    processes: int = 16


@dataclass(frozen=True)
class Isolation:
    """A sandbox the probe found working here; what each call needs to start one."""

    bwrap: str
    # The interpreter, by its real path (the same inside the sandbox as outside).
    python: str
    # (uid, gid) the code runs as.
    account: tuple[int, int]
    # bwrap options for the filesystem view.
    view: tuple[str, ...]
    # Optional hardening options this bwrap understands.
    hardening: tuple[str, ...] = ()


@dataclass(frozen=True)
class Run:
    stdout: str
    stderr: str
    # A negative status is the signal that ended the code, as ``subprocess`` reports it.
    exit_code: int | None
    # The limit that stopped the code, if one did.
    limit: Limit | None = None


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot run here; the message says what to change."""


def sandbox_account(user: str | None) -> tuple[int, int]:
    """The (uid, gid) for ``SOMA_TOOLS_SANDBOX_USER``: an account name, a uid, or nobody."""
    if not user:
        return NOBODY
    if user.isdigit():
        uid = int(user)
        try:
            account = (uid, pwd.getpwuid(uid).pw_gid)
        except KeyError:
            account = (uid, uid)
    else:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise SandboxUnavailable(f"sandbox user {user!r} does not exist") from None
        account = (entry.pw_uid, entry.pw_gid)
    if account[0] == 0:
        raise SandboxUnavailable("the sandbox user must not be root (uid 0)")
    return account


def isolation_for(executable: str, user: str | None = None, bwrap: str = "bwrap") -> Isolation:
    """The sandbox for ``executable``, probed by running it once; cached per configuration.

    Starts processes and waits for them: call it off the event loop.
    """
    try:
        return _probe(executable, sandbox_account(user), bwrap)
    except SandboxUnavailable as exc:
        log.warning("sandboxed Python cannot run here: %s", exc)
        raise


@functools.cache
def _probe(executable: str, account: tuple[int, int], bwrap: str) -> Isolation:
    found = shutil.which(bwrap)
    if found is None:
        raise SandboxUnavailable(
            f"bubblewrap is not installed ({bwrap!r} not found): install it "
            "(Debian, Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap) "
            "or set SOMA_TOOLS_BWRAP to its path"
        )
    python = os.path.realpath(executable)
    if not os.access(python, os.X_OK):
        raise SandboxUnavailable(
            f"{executable} is not an executable interpreter; set SOMA_TOOLS_PYTHON "
            "(e.g. /usr/bin/python3)"
        )
    isolation = Isolation(
        bwrap=found,
        python=python,
        account=account,
        view=_view(python),
        hardening=_supported(found, HARDENING),
    )
    probe = "import os\nprint(os.getuid(), os.getgid())"
    argv = [*bwrap_argv(isolation, Limits()), "--", python, "-I", "-S", "-c", probe]
    starter = _Starter.for_account(account)
    try:
        done = subprocess.run(
            argv,
            env={},
            cwd="/",
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            user=starter.user,
            group=starter.group,
            extra_groups=starter.extra_groups,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxUnavailable(f"bubblewrap could not be started: {exc}") from None
    expected = f"{account[0]} {account[1]}"
    if done.returncode != 0 or done.stdout.strip() != expected:
        raise SandboxUnavailable(_diagnosis(done.stderr or done.stdout, python, account))
    return isolation


def _diagnosis(output: str, python: str, account: tuple[int, int]) -> str:
    said = " ".join(output.strip().splitlines()[-1:]) or "no output"
    if "namespace" in said or "Operation not permitted" in said or "setting up uid map" in said:
        advice = (
            "allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 and "
            "user.max_user_namespaces > 0; in a container, a seccomp and AppArmor profile that "
            "permits them)"
        )
    else:
        advice = (
            f"check that uid {account[0]} can read and run {python}, or set SOMA_TOOLS_PYTHON to "
            "an interpreter outside private folders (e.g. /usr/bin/python3)"
        )
    return f"the sandbox does not start here ({said}): {advice}"


@dataclass(frozen=True)
class _Starter:
    """Who bubblewrap starts as: the sandbox account when this process is root, else as is."""

    user: int | None = None
    group: int | None = None
    extra_groups: list[int] | None = None

    @classmethod
    def for_account(cls, account: tuple[int, int]) -> _Starter:
        if os.geteuid() != 0:
            return cls()
        return cls(user=account[0], group=account[1], extra_groups=[])


def _supported(bwrap: str, options: Sequence[str]) -> tuple[str, ...]:
    try:
        usage = subprocess.run(
            [bwrap, "--help"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(option for option in options if option in usage.split())


def _view(python: str) -> tuple[str, ...]:
    """The read-only filesystem the interpreter needs and nothing more of the host."""
    view = ["--ro-bind", "/usr", "/usr"]
    for name in SYSTEM_LINKS:
        path = Path("/", name)
        if path.is_symlink():
            view += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            view += ["--ro-bind", str(path), str(path)]
    prefix = Path(python).parent.parent
    if not any(prefix.is_relative_to(Path("/", kept)) for kept in ("usr", *SYSTEM_LINKS)):
        view += ["--ro-bind", str(prefix), str(prefix)]
    view += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    return tuple(view)


def bwrap_argv(
    isolation: Isolation, limits: Limits, files: Sequence[tuple[int, str]] = ()
) -> list[str]:
    """The bubblewrap command line, up to ``--``; ``files`` are (fd, path) copied in read-only."""
    uid, gid = isolation.account
    argv = [
        isolation.bwrap,
        "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname", "sandbox",
        "--uid", str(uid), "--gid", str(gid),
        "--cap-drop", "ALL",
        "--die-with-parent",
        "--new-session",
        *isolation.hardening,
        *isolation.view,
        "--proc", "/proc",
        "--dev", "/dev",
        "--size", str(limits.disk_bytes), "--tmpfs", WORKDIR,
    ]  # fmt: skip
    for fd, path in files:
        argv += ["--perms", "0444", "--file", str(fd), path]
    argv += ["--remount-ro", "/", "--remount-ro", "/dev", "--chdir", WORKDIR, "--clearenv"]
    for name, value in ENVIRONMENT.items():
        argv += ["--setenv", name, value]
    return argv


def _identity(account: tuple[int, int]) -> tuple[bytes, bytes]:
    uid, gid = account
    passwd = f"sandbox:x:{uid}:{gid}:sandbox:{WORKDIR}:/usr/sbin/nologin\n"
    group = f"sandbox:x:{gid}:\n"
    return passwd.encode(), group.encode()


def _data_fd(name: str, data: bytes) -> int:
    """An anonymous in-memory file holding ``data``, read from its start by bubblewrap."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.write(fd, data)  # a memfd takes the whole write at once
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _boot_limits(limits: Limits) -> list[str]:
    cpu = max(1, math.ceil(limits.timeout)) + 1
    return [
        str(limits.memory_bytes),
        str(cpu),
        str(limits.processes),
        str(limits.disk_bytes),
        str(OPEN_FILES),
    ]


async def run_python(code: str, limits: Limits, isolation: Isolation) -> Run:
    passwd, group = _identity(isolation.account)
    fds = [
        _data_fd("main.py", code.encode("utf-8")),
        _data_fd("passwd", passwd),
        _data_fd("group", group),
    ]
    info_read, info_write = os.pipe()
    files = list(zip(fds, (f"{WORKDIR}/{SCRIPT}", "/etc/passwd", "/etc/group"), strict=True))
    argv = [
        *bwrap_argv(isolation, limits, files),
        "--info-fd", str(info_write),
        "--", isolation.python, "-I", "-S", "-B", "-c", BOOT, *_boot_limits(limits), SCRIPT,
    ]  # fmt: skip
    starter = _Starter.for_account(isolation.account)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env={},
            cwd="/",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            pass_fds=(*fds, info_write),
            start_new_session=True,
            user=starter.user,
            group=starter.group,
            extra_groups=starter.extra_groups,
        )
    except BaseException:
        os.close(info_read)
        raise
    finally:
        for fd in (*fds, info_write):
            os.close(fd)
    namespace = _Namespace(proc)
    finding = asyncio.create_task(namespace.find(info_read))
    try:
        return await _supervise(proc, limits, namespace)
    finally:
        # bubblewrap writes the namespace's description as soon as it exists, before the code
        # starts; if it never does, its exit ends the read.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(finding, TEARDOWN)
        await namespace.end()


class _Namespace:
    """The sandbox's first process, found through bubblewrap's ``--info-fd``, and its end."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pidfd: int | None = None

    async def find(self, info: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        pipe = os.fdopen(info, "rb", buffering=0)  # the transport closes it
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
        try:
            described = json.loads(await reader.readuntil(b"}"))
            pid, namespace = int(described["child-pid"]), int(described["pid-namespace"])
        except (asyncio.IncompleteReadError, ValueError, KeyError, TypeError):
            return  # bubblewrap stopped before its namespace existed
        finally:
            transport.close()
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return  # already gone, and with it the namespace
        try:
            # The pid is ours only if it still heads the namespace bubblewrap made.
            ours = os.stat(f"/proc/{pid}/ns/pid").st_ino == namespace
        except OSError:
            ours = False
        if ours:
            self.pidfd = pidfd
        else:
            os.close(pidfd)

    def kill(self) -> None:
        """Kill the namespace's first process, which the kernel follows with every other one."""
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        if self.proc.returncode is None:
            # Before the namespace is known: bubblewrap's death takes it (--die-with-parent).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    async def end(self) -> None:
        """Return once the namespace and everything in it is gone."""
        self.kill()
        await self.proc.wait()
        if self.pidfd is None:
            return
        loop = asyncio.get_running_loop()
        gone: asyncio.Future[None] = loop.create_future()

        def exited() -> None:
            if not gone.done():
                gone.set_result(None)

        loop.add_reader(self.pidfd, exited)
        try:
            # The first process of a PID namespace exits only after all the others have.
            await asyncio.wait_for(gone, TEARDOWN)
        finally:
            loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None


async def _supervise(
    proc: asyncio.subprocess.Process, limits: Limits, namespace: _Namespace
) -> Run:
    assert proc.stdout is not None and proc.stderr is not None
    out, err = bytearray(), bytearray()
    total = 0
    limit: Limit | None = None

    async def pump(stream: asyncio.StreamReader, into: bytearray) -> None:
        nonlocal total, limit
        while chunk := await stream.read(65536):
            room = max(limits.output_bytes - total, 0)
            into += chunk[:room]
            total += len(chunk)
            if total > limits.output_bytes:
                limit = "output"
                namespace.kill()
                return

    try:
        await asyncio.wait_for(
            asyncio.gather(pump(proc.stdout, out), pump(proc.stderr, err), proc.wait()),
            limits.timeout,
        )
    except TimeoutError:
        limit = limit or "time"
    finally:
        namespace.kill()
        await proc.wait()

    stdout = out.decode("utf-8", errors="replace")
    stderr = err.decode("utf-8", errors="replace")
    status = _status(proc.returncode)
    if limit is None and status in (-signal.SIGXCPU, -signal.SIGKILL):
        limit = "time"  # the CPU limit, which catches busy loops even if the clock check lags
    elif limit is None and status != 0 and _ran_out_of_memory(stderr):
        limit = "memory"
    return Run(stdout=stdout, stderr=stderr, exit_code=status, limit=limit)


def _status(returncode: int | None) -> int | None:
    """The code's status: bubblewrap reports a death by signal N as 128 + N, as shells do."""
    if returncode is not None and returncode > 128:
        return -(returncode - 128)
    return returncode


def _ran_out_of_memory(stderr: str) -> bool:
    tail = stderr[-2000:]
    return "MemoryError" in tail or "Cannot allocate memory" in tail or "out of memory" in tail
