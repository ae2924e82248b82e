"""The first code a sandboxed interpreter runs (passed with ``-c``): set the resource limits,
close doors, run ``main.py``.

Run as ``-c BOOT <memory> <cpu seconds> <processes> <file size> <open files> main.py``, inside the
bubblewrap sandbox. Never imported by the handler — importing it would disable sockets in the
handler itself.

The limits are the kernel's: once lowered here, before any of the code runs, nothing inside can
raise them again. Set inside rather than before bubblewrap starts, the process limit counts the
processes of this sandbox's own user namespace, not those of every sandbox running as the same
account.

What it then closes (sockets, process creation, ``ctypes``) is closed inside the interpreter only;
determined code can reopen it. The boundaries that hold are the sandbox's namespaces and the
limits. This layer makes the common case fail fast with a clear message.
"""

import _posixsubprocess
import _socket
import builtins
import os
import posix
import resource
import socket
import sys
import traceback
import types

_memory, _cpu, _processes, _file_size, _open_files = (int(_arg) for _arg in sys.argv[1:6])
for _limit, _value in (
    (resource.RLIMIT_CORE, 0),
    (resource.RLIMIT_NOFILE, _open_files),
    (resource.RLIMIT_FSIZE, _file_size),
    (resource.RLIMIT_NPROC, _processes),
    (resource.RLIMIT_AS, _memory),
):
    resource.setrlimit(_limit, (_value, _value))
resource.setrlimit(resource.RLIMIT_CPU, (_cpu, _cpu + 1))

_NETWORK = "network access is disabled in this sandbox"
_PROCESSES = "starting processes is disabled in this sandbox"


def _refuse_network(*args, **kwargs):  # type: ignore[no-untyped-def]
    raise PermissionError(_NETWORK)


def _refuse_processes(*args, **kwargs):  # type: ignore[no-untyped-def]
    raise PermissionError(_PROCESSES)


class _RefusedSocket(socket.socket):
    """Still a class, so modules that subclass ``socket.socket`` (ssl, asyncio) import fine."""

    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise PermissionError(_NETWORK)


class _RefusedRawSocket(_socket.socket):
    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise PermissionError(_NETWORK)


socket.socket = socket.SocketType = _RefusedSocket  # type: ignore[misc]
_socket.socket = _socket.SocketType = _RefusedRawSocket  # type: ignore[misc]
for _name in (
    "socketpair",
    "fromfd",
    "create_connection",
    "create_server",
    "getaddrinfo",
    "gethostbyname",
    "gethostbyname_ex",
    "gethostbyaddr",
):
    for _module in (socket, _socket):
        if hasattr(_module, _name):
            setattr(_module, _name, _refuse_network)

for _name in (
    "fork",
    "forkpty",
    "posix_spawn",
    "posix_spawnp",
    "system",
    "popen",
    "execv",
    "execve",
    "execl",
    "execle",
    "execlp",
    "execlpe",
    "execvp",
    "execvpe",
    "spawnv",
    "spawnve",
    "spawnl",
    "spawnle",
    "spawnlp",
    "spawnlpe",
    "spawnvp",
    "spawnvpe",
):
    for _module in (os, posix):
        if hasattr(_module, _name):
            setattr(_module, _name, _refuse_processes)
_posixsubprocess.fork_exec = _refuse_processes
sys.modules["_ctypes"] = None  # type: ignore[assignment]

# ``-S`` skips ``site``, which is what defines these.
builtins.exit = builtins.quit = sys.exit  # type: ignore[assignment]

_path = sys.argv[6]
sys.argv = sys.argv[6:]
with open(_path, encoding="utf-8") as _file:
    _source = _file.read()
_main = types.ModuleType("__main__")
_main.__file__ = _path
sys.modules["__main__"] = _main
try:
    exec(compile(_source, _path, "exec"), _main.__dict__)
except SystemExit:
    raise
except BaseException as _exc:
    if isinstance(_exc, MemoryError):
        _main.__dict__.clear()  # free what the code held, so the report can be written
    _frames = _exc.__traceback__.tb_next if _exc.__traceback__ else None
    traceback.print_exception(type(_exc), _exc, _frames)
    sys.exit(1)
