"""Attacks on the python tool's sandbox, each trying one way out; a test fails if its escape works.

Code sent to the tool is hostile. Every attack below first reopens what ``sandbox_boot`` closes
inside the interpreter (sockets, fork, exec, ctypes) — any determined program can — and checks
that it did, so what is under test is the boundary the kernel holds: bubblewrap's namespaces,
the unprivileged account and the resource limits.

What the sandbox guarantees, and these tests hold it to:
- the code runs as uid and gid 65534, inside and (when the tools process is root) outside;
- its environment holds only PATH, HOME, TMPDIR, LC_ALL and PWD; no process it can see holds more;
- it sees only its own processes; it can neither read nor signal any other;
- of the host's files it sees /usr and the /bin, /lib links read-only; its /etc/passwd and
  /etc/group name only its own account; nothing else (no /etc/shadow, no data folder, no /run);
- it reaches no socket: no port of the host, no unix socket of another service;
- it writes only in its private /tmp, within the file size limit;
- nothing it starts outlives the call;
- processes, memory and time are bounded, and the limit hit is reported.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import secrets
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bus.service import Connected, Service
from handlers.tools.config import ToolsConfig
from handlers.tools.sandbox import Isolation, Limits, Run, SandboxUnavailable, isolation_for
from handlers.tools.sandbox import run_python as sandboxed
from handlers.tools.service import build
from kernel.settings import Settings
from schemas.envelope import Envelope, new_id
from schemas.tools import ToolInvoke, ToolResult
from tests.servers import require_service

LIMITS = Limits(
    timeout=5.0,
    memory_bytes=128 * 2**20,
    output_bytes=64_000,
    disk_bytes=8 * 2**20,
    processes=16,
)
SANDBOX_UID = 65534
POSTGRES_SOCKET = Path("/var/run/postgresql/.s.PGSQL.5432")

# Undo the interpreter-level refusals: fresh copies of the modules sandbox_boot patched.
REOPEN = """\
import sys
for _name in ("posix", "os", "_socket", "socket", "_posixsubprocess", "subprocess", "_ctypes",
              "ctypes"):
    sys.modules.pop(_name, None)
import ctypes, json, os, posix, socket
assert "refuse" not in repr(posix.fork) and socket.socket.__init__ is not None
socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
print("REOPENED", flush=True)
"""


@pytest.fixture(scope="module")
def isolation() -> Isolation:
    """The real sandbox; in CI a machine that cannot build it fails the suite."""
    try:
        return isolation_for(ToolsConfig().python_executable)
    except SandboxUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the python sandbox is unavailable: {exc}")
        pytest.skip(f"the python sandbox is unavailable here: {exc}")


async def attack(isolation: Isolation, code: str) -> Run:
    """Run ``code`` with the in-interpreter refusals undone; the attack must have got that far."""
    done = await sandboxed(REOPEN + code, LIMITS, isolation)
    assert done.stdout.startswith("REOPENED\n"), done.stderr
    return done


def report(done: Run) -> Any:
    """What the attack printed last, as JSON."""
    assert done.exit_code == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def outcome_of(code: str) -> str:
    """Code that runs ``code`` and prints, as JSON, ``"done"`` or the error it met."""
    return f"""
try:
    {code}
    print(json.dumps("done"))
except OSError as exc:
    print(json.dumps(type(exc).__name__))
"""


def host_processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker``, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline and entry.name != str(os.getpid()):
            found.append(int(entry.name))
    return found


def host_read(path: str) -> str:
    return Path(path).read_text(errors="replace")


def host_has(path: str | Path) -> bool:
    return Path(path).exists()


def as_sandbox_account() -> dict[str, Any]:
    """Popen arguments starting a host process as the sandbox's own uid, when the test can.

    A victim of the same uid leaves the PID namespace as the only thing between it and the code.
    """
    if os.geteuid() != 0:
        return {}
    return {"user": SANDBOX_UID, "group": SANDBOX_UID, "extra_groups": []}


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """A host process holding a secret in its environment, running as the sandbox's uid."""
    secret = f"soma-victim-{secrets.token_hex(8)}"
    proc = subprocess.Popen(
        ["sleep", "120"], env={"SOMA_VICTIM_SECRET": secret}, **as_sandbox_account()
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


# Identity


async def test_the_code_does_not_run_as_root(isolation: Isolation) -> None:
    code = """
status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines())
print(json.dumps({"ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid()],
                  "caps": status["CapEff"].strip(), "groups": os.getgroups()}))
"""
    found = report(await attack(isolation, code))
    assert found["ids"] == [SANDBOX_UID] * 4
    assert int(found["caps"], 16) == 0
    assert found["groups"] in ([], [SANDBOX_UID])


async def test_the_code_holds_no_root_identity_on_the_host_either(isolation: Isolation) -> None:
    """Seen from the host, the sandbox's processes run as the sandbox account, never as root."""
    marker = f"1.{secrets.randbelow(10**9):09d}"
    code = f"""
import time
pid = os.fork()
if pid == 0:
    os.execv("/usr/bin/sleep", ["sleep", "{marker}"])
time.sleep(0.5)
"""
    running = asyncio.create_task(attack(isolation, code))
    uids: set[int] = set()
    for _ in range(100):
        await asyncio.sleep(0.02)
        for pid in host_processes_with(marker):
            for line in host_read(f"/proc/{pid}/status").splitlines():
                if line.startswith("Uid:"):
                    uids.update(int(field) for field in line.split()[1:])
        if uids or running.done():
            break
    await running
    assert uids, "the marked process was never seen on the host"
    assert 0 not in uids
    if os.geteuid() == 0:
        assert uids == {SANDBOX_UID}


async def test_shadow_passwords_are_out_of_view(isolation: Isolation) -> None:
    assert host_has("/etc/shadow")
    found = report(await attack(isolation, outcome_of("open('/etc/shadow').read()")))
    assert found == "FileNotFoundError"


async def test_passwd_names_only_the_sandbox_account(isolation: Isolation) -> None:
    assert "root:" in host_read("/etc/passwd")
    code = "print(json.dumps([open('/etc/passwd').read(), open('/etc/group').read()]))"
    passwd, group = report(await attack(isolation, code))
    assert passwd == "sandbox:x:65534:65534:sandbox:/tmp:/usr/sbin/nologin\n"
    assert group == "sandbox:x:65534:\n"


# Secrets in environments


async def test_a_secret_of_the_tools_process_is_in_no_environment_inside(
    isolation: Isolation, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = f"soma-secret-{secrets.token_hex(8)}"
    monkeypatch.setenv("SOMA_ATTACK_SECRET", secret)
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres:{secret}@127.0.0.1/soma")
    code = """
seen = {"environ": dict(os.environ), "proc": {}}
for pid in os.listdir("/proc"):
    if pid.isdigit() or pid == "self":
        try:
            seen["proc"][pid] = open(f"/proc/{pid}/environ", "rb").read().decode()
        except OSError as exc:
            seen["proc"][pid] = type(exc).__name__
print(json.dumps(seen))
"""
    found = report(await attack(isolation, code))
    assert sorted(found["environ"]) == ["HOME", "LC_ALL", "PATH", "PWD", "TMPDIR"]
    assert "1" in found["proc"] and "self" in found["proc"]
    assert secret not in json.dumps(found)


async def test_the_environ_of_processes_outside_is_out_of_reach(
    isolation: Isolation, victim: subprocess.Popen[bytes]
) -> None:
    secret = host_read(f"/proc/{victim.pid}/environ")
    assert secret.startswith("SOMA_VICTIM_SECRET=")
    pids = [victim.pid, os.getpid(), os.getppid()]
    code = f"""
seen = {{}}
for pid in {pids!r}:
    try:
        seen[pid] = open(f"/proc/{{pid}}/environ", "rb").read().decode()
    except OSError as exc:
        seen[pid] = type(exc).__name__
print(json.dumps(seen))
"""
    found = report(await attack(isolation, code))
    assert set(found.values()) == {"FileNotFoundError"}


# Processes


async def test_proc_shows_only_the_sandbox_processes(isolation: Isolation) -> None:
    assert len([p for p in os.listdir("/proc") if p.isdigit()]) > 2
    code = """
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
print(json.dumps({p: open(f"/proc/{p}/cmdline", "rb").read().split(b"\\0")[0].decode()
                  for p in pids}))
"""
    found = report(await attack(isolation, code))
    assert list(found) == ["1", "2"]
    assert found["1"].endswith("bwrap")
    assert found["2"] == isolation.python


async def test_a_process_outside_cannot_be_killed(
    isolation: Isolation, victim: subprocess.Popen[bytes]
) -> None:
    code = outcome_of(f"os.kill({victim.pid}, {int(signal.SIGKILL)})")
    assert report(await attack(isolation, code)) == "ProcessLookupError"
    assert victim.poll() is None


async def test_killing_every_process_reaches_none_outside(
    isolation: Isolation, victim: subprocess.Popen[bytes]
) -> None:
    code = outcome_of(f"os.kill(-1, {int(signal.SIGKILL)})")
    assert report(await attack(isolation, code)) in ("done", "ProcessLookupError")
    assert victim.poll() is None


async def test_a_child_does_not_outlive_the_call(isolation: Isolation) -> None:
    marker = f"3599.{secrets.randbelow(10**9):09d}"
    code = f"""
import time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv("/usr/bin/sleep", ["sleep", "{marker}"])
    os._exit(0)
time.sleep(0.5)
running = [p for p in os.listdir("/proc") if p.isdigit()
           and "{marker}" in open(f"/proc/{{p}}/cmdline").read()]
print(json.dumps(running))
"""
    assert report(await attack(isolation, code)), "the child never started"
    assert host_processes_with(marker) == []


async def test_a_child_does_not_outlive_a_call_stopped_at_the_time_limit(
    isolation: Isolation,
) -> None:
    marker = f"3599.{secrets.randbelow(10**9):09d}"
    code = f"""
import time
child = os.fork()
if child == 0:
    os.execv("/usr/bin/sleep", ["sleep", "{marker}"])
time.sleep(0.5)
print("CHILD", open(f"/proc/{{child}}/cmdline").read(), flush=True)
while True:
    pass
"""
    done = await attack(isolation, code)
    assert done.limit == "time"
    assert marker in done.stdout
    assert host_processes_with(marker) == []


async def test_a_fork_bomb_is_bounded_by_the_process_limit(isolation: Isolation) -> None:
    code = """
import time
original = os.getpid()
refused = None
while True:
    try:
        child = os.fork()
    except OSError as exc:
        refused = exc.errno
        break
if os.getpid() != original:
    time.sleep(60)
time.sleep(0.5)
print(json.dumps({"refused": refused,
                  "processes": len([p for p in os.listdir("/proc") if p.isdigit()])}), flush=True)
os._exit(0)
"""
    found = report(await attack(isolation, code))
    assert found["refused"] == errno.EAGAIN
    assert 2 < found["processes"] <= LIMITS.processes


# Files


async def test_a_file_in_the_data_folder_is_out_of_view(
    isolation: Isolation, tmp_path: Path
) -> None:
    secret = tmp_path / "data" / "vectors" / "memories" / "points.json"
    secret.parent.mkdir(parents=True)
    secret.write_text('{"tenant": "acme", "text": "private memory"}')
    secret.chmod(0o644)
    code = f"""
seen = {{}}
for path in [{str(secret)!r}, {str(tmp_path)!r}]:
    try:
        seen[path] = open(path).read() if path.endswith(".json") else os.listdir(path)
    except OSError as exc:
        seen[path] = type(exc).__name__
print(json.dumps(seen))
"""
    found = report(await attack(isolation, code))
    assert set(found.values()) == {"FileNotFoundError"}


@pytest.mark.parametrize("folder", ["/", "/usr", "/usr/lib", "/etc", "/dev", "/dev/shm", "/proc"])
async def test_nothing_outside_the_private_tmp_is_writable(
    isolation: Isolation, folder: str
) -> None:
    name = f"soma-escape-{secrets.token_hex(4)}"
    path = f"{folder.rstrip('/')}/{name}"
    code = f"""
seen = {{}}
for path in [{path!r}, "/tmp/{name}"]:
    try:
        open(path, "w").write("x")
        seen[path] = "written"
    except OSError as exc:
        seen[path] = type(exc).__name__
print(json.dumps(seen))
"""
    found = report(await attack(isolation, code))
    assert found[f"/tmp/{name}"] == "written"
    assert found[path] in ("OSError", "PermissionError", "FileNotFoundError")
    assert not host_has(path)


async def test_a_huge_file_is_cut_at_the_file_size_limit(isolation: Isolation) -> None:
    code = """
chunk = b"x" * 2**20
with open("/tmp/huge", "wb", buffering=0) as huge:
    try:
        while True:
            huge.write(chunk)
    except OSError as exc:
        print(json.dumps({"errno": exc.errno, "size": os.path.getsize("/tmp/huge")}))
"""
    found = report(await attack(isolation, code))
    assert found["errno"] in (errno.EFBIG, errno.ENOSPC)
    assert found["size"] <= LIMITS.disk_bytes


# Sockets


async def test_the_postgres_unix_socket_is_out_of_reach(isolation: Isolation) -> None:
    if not host_has(POSTGRES_SOCKET):
        message = f"no PostgreSQL socket at {POSTGRES_SOCKET} to attack"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with socket.socket(socket.AF_UNIX) as host:
        host.connect(str(POSTGRES_SOCKET))  # the host reaches it: the attack is a real one
    code = f"""
s = socket.socket(socket.AF_UNIX)
{outcome_of(f"s.connect({str(POSTGRES_SOCKET)!r})").strip()}
"""
    assert report(await attack(isolation, code)) == "FileNotFoundError"


async def test_a_unix_socket_of_a_host_service_is_out_of_reach(
    isolation: Isolation, tmp_path: Path
) -> None:
    path = tmp_path / "service.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        path.chmod(0o777)
        server.listen()
        server.setblocking(False)
        code = f"""
s = socket.socket(socket.AF_UNIX)
{outcome_of(f"s.connect({str(path)!r})").strip()}
"""
        assert report(await attack(isolation, code)) == "FileNotFoundError"
        with pytest.raises(BlockingIOError):
            server.accept()


async def test_run_folders_are_out_of_view(isolation: Isolation) -> None:
    code = """
seen = {}
for path in ["/run", "/var/run", "/var"]:
    try:
        seen[path] = os.listdir(path)
    except OSError as exc:
        seen[path] = type(exc).__name__
print(json.dumps(seen))
"""
    assert set(report(await attack(isolation, code)).values()) == {"FileNotFoundError"}


@pytest.mark.parametrize(
    ("service", "port"), [("PostgreSQL", 5432), ("Redis", 6379), ("NATS", 4222)]
)
async def test_local_service_ports_are_unreachable(
    isolation: Isolation, service: str, port: int
) -> None:
    require_service(service, "127.0.0.1", port)
    code = outcome_of(f"socket.create_connection(('127.0.0.1', {port}), timeout=3)")
    assert report(await attack(isolation, code)) in ("ConnectionRefusedError", "OSError")


# Limits


async def test_a_memory_hog_is_reported_as_the_memory_limit(isolation: Isolation) -> None:
    done = await attack(isolation, "hog = []\nwhile True:\n    hog.append(bytearray(8 * 2**20))")
    assert done.limit == "memory"


async def test_a_busy_loop_is_reported_as_the_time_limit(isolation: Isolation) -> None:
    done = await attack(isolation, "while True:\n    pass")
    assert done.limit == "time"


# Through the tools process


@pytest.fixture
async def tools_service(tmp_path: Path, connected: Connected) -> AsyncIterator[Service]:
    """The tools process as the bus drives it, its data folder holding another tenant's data."""
    settings = Settings(
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'kernel.db'}", SOMA_DATA_DIR=tmp_path
    )
    service = build(settings, ToolsConfig())
    for hook in service.startup:
        await hook(connected)
    yield service
    for hook in service.shutdown:
        await hook()


async def invoke_python(service: Service, code: str) -> ToolResult:
    cmd = ToolInvoke(call_id=new_id(), name="python", arguments={"code": code}, role="admin")
    envelope = Envelope(
        message_id=new_id(), correlation_id=new_id(), tenant="acme", schema="tools.invoke"
    )
    result = await service.routes[ToolInvoke](cmd, envelope)
    assert isinstance(result, ToolResult)
    return result


async def test_a_tool_call_sees_neither_the_data_folder_nor_the_process_secrets(
    isolation: Isolation,
    tools_service: Service,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = f"soma-secret-{secrets.token_hex(8)}"
    monkeypatch.setenv("SOMA_ATTACK_SECRET", secret)
    planted = tmp_path / "memory" / "other-tenant.txt"
    planted.parent.mkdir()
    planted.write_text(secret)
    planted.chmod(0o644)
    code = (
        REOPEN
        + f"""
seen = {{"environ": dict(os.environ), "pids": os.listdir("/proc")}}
for path in [{str(planted)!r}, "/proc/1/environ", "/proc/{os.getpid()}/environ"]:
    try:
        seen[path] = open(path, "rb").read().decode()
    except OSError as exc:
        seen[path] = type(exc).__name__
print(json.dumps(seen))
"""
    )
    result = await invoke_python(tools_service, code)
    assert result.ok, result.error
    assert result.output["stdout"].startswith("REOPENED\n")
    found = json.loads(result.output["stdout"].splitlines()[-1])
    assert found[str(planted)] == "FileNotFoundError"
    assert found[f"/proc/{os.getpid()}/environ"] == "FileNotFoundError"
    assert secret not in result.output["stdout"]
