"""What every ``soma`` command shares at the terminal: output, errors that say what to do, and
a NATS connection for operator commands.

Errors are one readable message on stderr and a non-zero exit — never a traceback — because the
reader is an operator who needs the next step, not the stack.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer
from rich.console import Console, ConsoleDimensions

from kernel.settings import Settings

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

    from soma.system import Located

# Piped output is not wrapped: a table as wide as its rows, up to this many columns.
UNWRAPPED_WIDTH = 10_000


class Output(Console):
    """Rich's console, wrapping lines only on a terminal.

    Colour already follows the output (none in a pipe or a file, unless ``FORCE_COLOR``;
    none with ``NO_COLOR``). Width did not: rich measures any terminal among stdin, stdout and
    stderr, else takes 80 columns, so ``soma saga ls | grep`` cut ids at the width of the shell
    it was typed in. Here output that is not a terminal is as wide as its lines; ``COLUMNS``
    still sets a width explicitly.
    """

    @property  # type: ignore[override]
    def size(self) -> ConsoleDimensions:
        found = Console.size.fget(self)  # type: ignore[attr-defined]
        if self._wraps():
            return found  # type: ignore[no-any-return]
        return ConsoleDimensions(UNWRAPPED_WIDTH, found.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]

    def _wraps(self) -> bool:
        if self._width is not None or (self._environ.get("COLUMNS") or "").isdigit():
            return True
        try:
            return bool(self.file.isatty())
        except (AttributeError, ValueError):
            return False


out = Output(highlight=False, soft_wrap=False)
err = Output(stderr=True, highlight=False)

T = TypeVar("T")

# Exit codes: 1 something failed (NATS unreachable, not found), 2 the input was wrong.
FAILED = 1
USAGE = 2


def fail(message: str, code: int = FAILED) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    raise typer.Exit(code)


def note(message: str) -> None:
    err.print(message, soft_wrap=True)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run an operator command's coroutine; a bus that cannot be reached is a clean error."""
    from bus.errors import BusUnavailable

    try:
        return asyncio.run(coro)
    except BusUnavailable as exc:
        fail(str(exc))


def environment() -> Settings:
    """The settings from the environment alone; a malformed variable is a usage error.

    For the commands that make a system rather than find one (`soma up`).
    """
    from pydantic import ValidationError

    from kernel.settings import load

    try:
        return load()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        fail(f"invalid settings in the environment: {problems}", USAGE)


def located() -> Located:
    """The system this command works on (``soma.system.locate``), or a clean exit 1."""
    from soma.system import NoSystem, locate

    try:
        return locate(environment())
    except NoSystem as exc:
        fail(str(exc))


def settings() -> Settings:
    """The settings of the system this command works on: named explicitly, else the live
    `soma up`'s; none found is an error, never a guess at ./.soma or :4222."""
    return located().settings


@asynccontextmanager
async def bus(
    settings: Settings, name: str = "soma-cli"
) -> AsyncIterator[tuple[Client, JetStreamContext]]:
    """A connection for one operator command; yields ``(nc, js)`` and closes it afterwards."""
    from bus.connection import connect
    from bus.errors import BusUnavailable
    from soma.system import NoSystem, nats_url

    try:
        url, source = nats_url(settings)
    except NoSystem as exc:
        fail(str(exc))
    try:
        nc = await connect(url, name)
    except BusUnavailable as exc:
        raise BusUnavailable(f"{exc} (NATS URL from {source})") from exc
    try:
        yield nc, nc.jetstream()
    finally:
        with quiet_disconnect():
            await nc.close()


@contextmanager
def quiet_disconnect() -> Iterator[None]:
    """Closing on purpose is not a lost connection: hide the "reconnecting" warning it logs."""
    logger = logging.getLogger("soma.bus")
    was = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was
