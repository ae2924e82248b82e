"""The process table: names to entry points, subsets, and a clear word on what is missing."""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from kernel import processes
from kernel.processes import Process, ProcessUnavailable, UnknownProcess
from kernel.settings import Settings
from tests.cli.conftest import Soma, start_soma

HANDLERS = ("identity", "policy", "memory", "slm", "tools", "analytics")


def test_every_handler_the_saga_runner_the_gateway_and_the_console_have_an_entry() -> None:
    assert list(processes.PROCESSES) == [*HANDLERS, "sagas", "gateway", "console"]
    for name in HANDLERS:
        assert processes.PROCESSES[name].target == f"handlers.{name}.service:build"
    assert processes.PROCESSES["sagas"].target == "sagas.runner:main"
    assert processes.PROCESSES["gateway"].target == "gateway.app:serve"
    assert processes.PROCESSES["console"].target == "console.app:serve"


def test_no_selection_means_every_process() -> None:
    assert processes.parse_spec(None) == processes.PROCESSES
    assert processes.parse_spec(" ") == processes.PROCESSES


def test_a_selection_keeps_start_order_whatever_order_it_is_written_in() -> None:
    chosen = processes.parse_spec("gateway, policy,billing=acme.billing:build")
    assert list(chosen) == ["policy", "billing", "gateway"]
    assert chosen["billing"] == Process("billing", "acme.billing:build")


def test_an_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownProcess, match="known: identity, policy"):
        processes.parse_spec("policy,polcy")


def test_a_custom_entry_resolves_by_name_and_a_dotted_path_directly() -> None:
    spec = "billing=acme.billing.service:build"
    assert processes.resolve("billing", spec).target == "acme.billing.service:build"
    assert processes.resolve("acme.audit:build").name == "audit"
    assert processes.resolve("policy").target == "handlers.policy.service:build"


def test_a_module_that_does_not_import_is_named_with_the_reason() -> None:
    with pytest.raises(ProcessUnavailable) as caught:
        processes.load(Process("ghost", "tests.cli.no_such_module:build"))
    assert "process 'ghost' is not available in this build" in str(caught.value)
    assert "No module named 'tests.cli.no_such_module'" in str(caught.value)


def test_a_missing_factory_is_named() -> None:
    with pytest.raises(ProcessUnavailable, match="has no callable 'nothing'"):
        processes.load(Process("x", "tests.cli.permissive_policy:nothing"))


async def test_a_factory_that_returns_neither_a_service_nor_a_coroutine_is_refused() -> None:
    with pytest.raises(ProcessUnavailable, match=r"expected a bus\.service\.Service"):
        await processes.run(Process("x", "builtins:repr"), Settings())


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    """A process run here freezes what this test process holds; later tests get it back."""
    yield
    gc.unfreeze()


LOOPS: list[str] = []


def loop_probe(settings: Settings) -> Any:
    """An entry point that notes which event loop runs it."""

    async def note() -> None:
        LOOPS.append(type(asyncio.get_running_loop()).__module__)

    return note()


def test_a_process_runs_on_uvloops_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOMA_EVENT_LOOP", raising=False)
    processes.run_blocking(Process("probe", "tests.cli.test_processes:loop_probe"), Settings())
    assert LOOPS[-1].startswith("uvloop")


def test_soma_event_loop_asyncio_keeps_asyncios_own_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOMA_EVENT_LOOP", "asyncio")
    processes.run_blocking(Process("probe", "tests.cli.test_processes:loop_probe"), Settings())
    assert LOOPS[-1].startswith("asyncio")


FROZEN: list[int] = []


def freeze_probe(settings: Settings) -> Any:
    """An entry point that notes how many objects the collector has set aside when it runs."""

    async def note() -> None:
        FROZEN.append(gc.get_freeze_count())

    return note()


def test_a_process_runs_with_its_imports_kept_out_of_garbage_collection() -> None:
    gc.unfreeze()
    processes.run_blocking(Process("probe", "tests.cli.test_processes:freeze_probe"), Settings())
    # Everything the imports made, well over what a few modules alone would leave.
    assert FROZEN[-1] > 50_000


async def test_run_of_an_unknown_process_exits_2(soma: Soma) -> None:
    result = await soma("run", "nosuch")
    assert result.exit_code == 2
    assert "no process named 'nosuch'" in result.stderr


async def test_run_of_a_process_missing_from_the_build_exits_3_and_says_why(
    soma: Soma,
) -> None:
    soma.env["SOMA_PROCESSES"] = "ghost=tests.cli.no_such_module:build"
    result = await soma("run", "ghost")
    assert result.exit_code == 3
    assert "not available in this build" in result.stderr


def test_a_process_whose_health_port_is_taken_exits_1_to_be_restarted(
    env: dict[str, str],
) -> None:
    """uvicorn exits 3 when it cannot bind, the code that means 'not in this build', after
    which `soma up` would never restart the process."""
    env["SOMA_PROCESSES"] = "policy=tests.cli.permissive_policy:build"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        env["SOMA_HEALTH_PORT"] = str(holder.getsockname()[1])
        running = start_soma("run", "policy", env=env)
        try:
            assert running.finish(60) == 1
            assert "address already in use" in running.out.text
        finally:
            running.proc.kill()


def test_sigterm_stops_a_running_process_with_exit_code_0(env: dict[str, str]) -> None:
    env["SOMA_PROCESSES"] = "policy=tests.cli.permissive_policy:build"
    running = start_soma("run", "policy", env=env)
    try:
        running.out.wait_for(r"policy: consuming", timeout=30)
        running.proc.send_signal(signal.SIGTERM)
        assert running.finish(20) == 0
    finally:
        running.proc.kill()
