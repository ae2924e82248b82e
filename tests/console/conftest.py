"""The whole system under `soma up` on a temporary data folder, and headless Chromium on it.

`soma up` starts every process as it would for an operator — the console among them — and
prints the first admin key once; the fixtures create an operator and a member key with `soma
keys create`. The slm process is given an OpenAI-compatible provider whose server is not
running yet: a completion for its model fails until a test starts that server, which is how a
test poisons a command and then fixes the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from tests.cli.conftest import ROOT, Running, clean_env, start_soma
from tests.slm.fake_openai import openai_app
from tests.slm.scripted import Reply, Script

CHROMIUM = os.environ.get("SOMA_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "console"
MODELS = """
routing: {attempts: 1, backoff_initial: 0.05, backoff_max: 0.1, timeout: 10}
models:
  - name: soma-local-dev
    deployments: [{provider: local, model: soma-local-dev}]
  - name: gpt-4o-mini
    deployments:
      - {provider: openai, model: gpt-4o-mini, api_key_env: OPENAI_API_KEY,
         base_url_env: OPENAI_BASE_URL, input_per_1m: 0.15, output_per_1m: 0.60}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class System:
    gateway: str
    console: str
    nats_url: str
    admin_key: str
    operator_key: str
    member_key: str
    provider_port: int
    running: Running


def _make_key(env: dict[str, str], *args: str) -> str:
    made = subprocess.run(
        [sys.executable, "-m", "soma.cli", "keys", "create", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return made.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="package")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    data = tmp_path_factory.mktemp("console-system")
    models = data / "models.yaml"
    models.write_text(MODELS)
    provider_port = _free_port()
    env = clean_env(
        SOMA_DATA_DIR=str(data),
        SOMA_HTTP_PORT=str(_free_port()),
        SOMA_NATS_PORT=str(_free_port()),
        SOMA_RETRY_INITIAL="0.2",
        SOMA_MAX_DELIVER="2",
        SOMA_MODELS_FILE=str(models),
        OPENAI_API_KEY="sk-test-console",
        OPENAI_BASE_URL=f"http://127.0.0.1:{provider_port}/v1",
        # Chat turns as sagas, so the saga list and a turn's story show the runner's part.
        SOMA_CHAT_PIPELINE="full",
    )
    running = start_soma("up", env=env)
    try:
        running.out.wait_for(r"first admin API key[^:]*: (sk-soma-\S+)", timeout=120)
        gateway = running.out.wait_for(r"gateway: (http://\S+)", timeout=120)
        console = running.out.wait_for(r"console: (http://\S+?)/console/", timeout=120)
        nats = running.out.wait_for(r"NATS: (nats://\S+)", timeout=120)
        for name in ("gateway", "console", "sagas", "slm", "identity", "policy", "memory"):
            running.out.wait_for(rf"\b{name} ready", timeout=180)
        keys_env = {**env, "NATS_URL": nats.group(1)}
        system = System(
            gateway=gateway.group(1),
            console=console.group(1),
            nats_url=nats.group(1),
            # The first key `soma up` prints is the installation's operator as well as the
            # default tenant's admin; the console's admin view is tested with an admin-only key.
            admin_key=_make_key(keys_env, "--user", "ada", "--role", "admin"),
            operator_key=_make_key(keys_env, "--user", "ops", "--role", "operator"),
            member_key=_make_key(keys_env, "--user", "mia", "--role", "member"),
            provider_port=provider_port,
            running=running,
        )
        _wait_ready(system)
        yield system
    finally:
        running.proc.terminate()
        try:
            running.finish(60)
        except subprocess.TimeoutExpired:
            running.proc.kill()
            running.finish(10)


def _wait_ready(system: System) -> None:
    """Both HTTP processes ready, and a chat turn answered end to end."""
    with httpx.Client(timeout=60) as client:
        for url in (f"{system.gateway}/readyz", f"{system.console}/readyz"):
            for _ in range(300):
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(url).status_code == 200:
                        break
                time.sleep(0.2)
            else:
                raise AssertionError(f"{url} never became ready:\n{system.running.out.text}")
        # The first turn waits for every process to have its consumers; on a busy machine that
        # can take longer than one request's patience, or the gateway's (a 503).
        warm = {"model": "soma-local-dev", "messages": [{"role": "user", "content": "warm up"}]}
        for attempt in range(3):
            try:
                answer = client.post(
                    f"{system.gateway}/v1/chat/completions",
                    headers={"Authorization": f"Bearer {system.admin_key}"},
                    json=warm,
                )
            except httpx.TimeoutException as exc:
                if attempt == 2:
                    # What the processes said is the only clue to a turn that never answered.
                    out = system.running.out.text[-6000:]
                    raise AssertionError(f"the warm-up turn timed out 3 times:\n{out}") from exc
                continue
            if answer.status_code != 503 or attempt == 2:
                break
        assert answer.status_code == 200, f"{answer.text}\n{system.running.out.text[-4000:]}"
        assert answer.json()["choices"][0]["message"]["content"], answer.text


def chat(client: httpx.Client, system: System, text: str) -> Any:
    answer = client.post(
        f"{system.gateway}/v1/chat/completions",
        headers={"Authorization": f"Bearer {system.admin_key}"},
        json={"model": "soma-local-dev", "messages": [{"role": "user", "content": text}]},
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


@contextlib.asynccontextmanager
async def provider_on(port: int, script: Script) -> AsyncIterator[None]:
    """The OpenAI-compatible provider, now listening on the port slm was told about."""
    config = uvicorn.Config(
        openai_app(script), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        await task


def _chromium_missing() -> bool:
    return not Path(CHROMIUM).exists()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    if _chromium_missing():
        if os.environ.get("CI") == "true":
            raise AssertionError(f"no Chromium at {CHROMIUM}; .ci/run installs it")
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    async with async_playwright() as p:
        chromium = await p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield chromium
        await chromium.close()


@pytest.fixture
async def page(browser: Any) -> AsyncIterator[Any]:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    # What the page itself reports shows with a failing test's output.
    page.on("console", lambda m: print(f"page console {m.type}: {m.text}"))
    page.on("pageerror", lambda e: print(f"page error: {e}"))
    yield page
    await context.close()


async def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path))
    return path


REPLY = Reply(text="Provider is back.")
