"""Log lines an operator can use: JSON with the process, turn, tenant and trace of each line, and
no credential in any of them — not in a full run of every process with a password on NATS and
on the database, an API key created and a token issued and used."""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bus.tracing import bind
from kernel import logs
from kernel.logs import JsonFormatter, _Context, redact
from tests.ops.system import Running, running
from tests.servers import free_port, nats_server_binary, postgres_database, wait_port

FIELDS = {"timestamp", "level", "logger", "message", "trace_id", "correlation_id", "tenant"}
NATS_PASSWORD = secrets.token_urlsafe(18)
DB_PASSWORD = secrets.token_urlsafe(18)


def _record(message: str, *args: object) -> dict[str, Any]:
    record = logging.LogRecord("soma.test", logging.INFO, __file__, 1, message, args, None)
    _Context("policy").filter(record)
    line: dict[str, Any] = json.loads(JsonFormatter().format(record))
    return line


def test_a_json_line_names_the_process_turn_and_tenant_it_was_written_for() -> None:
    bind("turn-42", "acme")
    line = _record("checked %s", "the prompt")
    assert FIELDS | {"process"} <= set(line)
    assert (line["process"], line["correlation_id"], line["tenant"]) == (
        "policy",
        "turn-42",
        "acme",
    )
    assert line["message"] == "checked the prompt"


@pytest.mark.parametrize(
    ("secret", "context"),
    [
        ("s3cret-pw", "nats connection error (nats://soma:{}@nats:4222): refused"),
        ("pg-pass", "postgresql+asyncpg://postgres:{}@db:5432/soma unreachable"),
        ("QmFzZTY0U2VjcmV0MTIzNDU2Nzg5MA_-abcdefghijklmn", "key sk-soma-0123456789abcdef-{}"),
        ("eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJkZXYifQ.c2lnbmF0dXJl", "Authorization: Bearer {}"),
        ("eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJkZXYifQ.c2lnbmF0dXJl", "bad token {} given"),
        ("sk-proj-abcdefghijklmnop1234", "openai said 401 for {}"),
        ("hunter2", "connect(password='{}')"),
    ],
)
def test_a_credential_in_a_message_is_redacted(secret: str, context: str) -> None:
    text = redact(context.format(secret))
    assert secret not in text
    assert "***" in text


@pytest.mark.parametrize(
    "line",
    [
        "API_KEY=abc123",
        "Access-Key: abc123",
        "PASSWORD = hunter2",
        "BASIC dXNlcjpwYXNzd29yZA==",
        "\u017fecret=hunter2",  # a long s, which a case-blind match takes for an s
        "api\u212aey=abc123",  # a Kelvin sign, likewise a k
        "REDIS://user:pw@cache:6379",
    ],
)
def test_a_line_is_redacted_as_every_pattern_would_redact_it_in_any_letter_case(
    line: str,
) -> None:
    every_pattern = line
    for pattern, replacement in logs._SECRETS:
        every_pattern = pattern.sub(replacement, every_pattern)
    assert every_pattern != line
    assert redact(line) == every_pattern


def test_a_model_call_writes_no_line_of_the_http_client_under_the_sdk() -> None:
    """The model SDKs' HTTP clients log every request at INFO; the call's own event and
    metrics record it, and a line per call is written on the call's path."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)  # as ``soma run`` sets it
    try:
        logs.configure("slm")
        for name in ("httpx", "httpx2"):
            assert not logging.getLogger(name).isEnabledFor(logging.INFO)
            assert logging.getLogger(name).isEnabledFor(logging.WARNING)
    finally:
        root.setLevel(level)


def test_a_message_without_credentials_is_left_as_it_is() -> None:
    text = "slm: chat soma-local-dev max_tokens=256 input_tokens=12 at nats://nats:4222"
    assert redact(text) == text


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    logs = tmp_path_factory.mktemp("json-logs")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="soma-nats-") as store:
        nats = subprocess.Popen(
            [
                *(nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", store),
                *("--user", "soma", "--pass", NATS_PASSWORD),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(port)
            with postgres_database() as url:
                env = {
                    **os.environ,
                    "NATS_URL": f"nats://soma:{NATS_PASSWORD}@127.0.0.1:{port}",
                    # trust authentication accepts the password: it is in the URL all the same
                    "DATABASE_URL": url.replace("postgres@", f"postgres:{DB_PASSWORD}@"),
                    "SOMA_DATA_DIR": str(tmp_path_factory.mktemp("json-data")),
                    "SOMA_LOG_FORMAT": "json",
                    "SOMA_LOG_LEVEL": "DEBUG",
                }
                env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
                with running(env, logs) as system:
                    yield system
        finally:
            nats.terminate()
            nats.wait(10)


@pytest.fixture(scope="module")
def used(system: Running) -> list[str]:
    """A token issued for the key, a turn with the token, a refused call: the secrets used."""
    token = httpx.post(
        f"{system.base_url}/v1/auth/token",
        headers={"Authorization": f"Bearer {system.api_key}"},
        timeout=30,
    )
    assert token.status_code == 200, token.text
    pair = token.json()
    turn = httpx.post(
        f"{system.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {pair['access_token']}"},
        json={"model": "soma-local-dev", "messages": [{"role": "user", "content": "Hello"}]},
        timeout=60,
    )
    assert turn.status_code == 200, turn.text
    refused = httpx.get(
        f"{system.base_url}/v1/models",
        headers={"Authorization": f"Bearer {system.api_key}x"},
        timeout=30,
    )
    assert refused.status_code == 401
    return [system.api_key, pair["access_token"], pair["refresh_token"]]


def _lines(logs: Path) -> dict[str, list[str]]:
    return {p.stem: p.read_text().splitlines() for p in sorted(logs.glob("*.log"))}


def test_no_log_line_of_a_full_run_holds_a_key_token_or_password(
    system: Running, used: list[str]
) -> None:
    found = []
    for name, lines in _lines(system.logs).items():
        for line in lines:
            for secret in [*used, NATS_PASSWORD, DB_PASSWORD]:
                if secret in line:
                    found.append((name, line))
    assert found == []


def test_every_process_writes_json_lines(system: Running, used: list[str]) -> None:
    by_process: dict[str, list[dict[str, Any]]] = {}
    for lines in _lines(system.logs).values():
        for line in lines:
            if line.startswith("{"):
                record = json.loads(line)
                assert FIELDS | {"process"} <= set(record), record
                by_process.setdefault(record["process"], []).append(record)
    expected = {"identity", "policy", "memory", "slm", "tools", "sagas", "gateway"}
    assert expected <= set(by_process)


def test_the_gateway_logs_a_turn_with_its_tenant_and_correlation(
    system: Running, used: list[str]
) -> None:
    records = [json.loads(line) for line in _lines(system.logs)["gateway"] if line.startswith("{")]
    turns = [r for r in records if "/v1/chat/completions" in r["message"]]
    assert turns, "no access line for the chat turn"
    assert all(r["tenant"] == "acme" and r["correlation_id"] for r in turns), turns
