"""The first code a sandboxed interpreter runs (passed with ``-c``): close doors, run ``main.py``.

Never imported by the handler — importing it would disable sockets in the handler itself.

What it closes (sockets, process creation, ``ctypes``) is closed inside the interpreter only;
determined code can reopen it. The boundaries that hold are outside: a network namespace with no
interfaces, resource limits, and an unprivileged account when the handler runs as root. This
layer makes the common case fail fast with a clear message, and stands alone only where the
kernel refuses namespaces.
"""

import _posixsubprocess
import _socket
import builtins
import os
import posix
import socket
import sys
import traceback
import types

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
for _name in ("socketpair", "fromfd", "create_connection", "create_server", "getaddrinfo",
              "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
    for _module in (socket, _socket):
        if hasattr(_module, _name):
            setattr(_module, _name, _refuse_network)

for _name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system", "popen", "execv",
              "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe", "spawnv",
              "spawnve", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnvp", "spawnvpe"):
    for _module in (os, posix):
        if hasattr(_module, _name):
            setattr(_module, _name, _refuse_processes)
_posixsubprocess.fork_exec = _refuse_processes
sys.modules["_ctypes"] = None  # type: ignore[assignment]

# ``-S`` skips ``site``, which is what defines these.
builtins.exit = builtins.quit = sys.exit  # type: ignore[assignment]

_path = sys.argv[1]
sys.argv = sys.argv[1:]
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
