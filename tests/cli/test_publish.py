"""`soma publish`: only catalogue messages reach the bus, with a full envelope."""

from __future__ import annotations

import json
import re
from pathlib import Path

from nats.js import JetStreamContext

from schemas.catalogue import STREAMS
from tests.cli.conftest import Soma, clean_env
from tests.servers import free_port

BODY = '{"stage": "prompt", "text": "hello"}'


async def test_an_unknown_subject_exits_2_and_lists_the_valid_subjects(
    soma: Soma, js: JetStreamContext
) -> None:
    result = await soma("publish", "soma.cmd.acme.nosuch.thing", BODY)
    assert result.exit_code == 2
    assert "not in the catalogue" in result.stderr
    assert "soma.cmd.<tenant>.policy.evaluate" in result.stderr
    assert (await js.stream_info(STREAMS["cmd"])).state.messages == 0


async def test_a_body_that_does_not_fit_the_type_exits_2_naming_the_field(
    soma: Soma, js: JetStreamContext
) -> None:
    result = await soma("publish", "soma.cmd.acme.policy.evaluate", '{"stage": "sideways"}')
    assert result.exit_code == 2
    assert "stage" in result.stderr and "not a valid policy.evaluate" in result.stderr
    assert (await js.stream_info(STREAMS["cmd"])).state.messages == 0


async def test_a_body_that_is_not_json_exits_2(soma: Soma) -> None:
    result = await soma("publish", "soma.cmd.acme.policy.evaluate", "{stage: prompt")
    assert result.exit_code == 2
    assert "not valid JSON" in result.stderr


async def test_a_valid_command_is_stored_with_its_envelope(
    soma: Soma, js: JetStreamContext
) -> None:
    result = await soma(
        "publish",
        "soma.cmd.acme.policy.evaluate",
        BODY,
        "--correlation-id",
        "corr-1",
        "--message-id",
        "msg-1",
        "--actor",
        "ops@acme",
    )
    assert result.exit_code == 0, result.stderr
    found = re.search(r"stream\s+SOMA_CMD seq (\d+)", result.stdout)
    assert found, result.stdout
    stored = await js.get_msg(STREAMS["cmd"], int(found.group(1)))
    assert stored.subject == "soma.cmd.acme.policy.evaluate"
    body = json.loads(stored.data or b"")
    assert (body["stage"], body["text"], body["role"]) == ("prompt", "hello", "user")
    headers = stored.headers or {}
    assert headers["Nats-Msg-Id"] == "msg-1"
    assert headers["Soma-Correlation-Id"] == "corr-1"
    assert headers["Soma-Tenant"] == "acme"
    assert headers["Soma-Actor"] == "ops@acme"
    assert headers["Soma-Schema"] == "policy.evaluate"


async def test_the_same_message_id_twice_is_reported_as_a_duplicate_and_stored_once(
    soma: Soma, js: JetStreamContext
) -> None:
    first = await soma("publish", "soma.cmd.acme.policy.evaluate", BODY, "-m", "same")
    again = await soma("publish", "soma.cmd.acme.policy.evaluate", BODY, "-m", "same")
    assert "duplicate" not in first.stdout
    assert again.exit_code == 0 and "duplicate" in again.stdout
    assert (await js.stream_info(STREAMS["cmd"])).state.messages == 1


async def test_the_body_can_come_from_a_file(
    soma: Soma, js: JetStreamContext, tmp_path: Path
) -> None:
    path = tmp_path / "cmd.json"
    path.write_text(BODY)
    result = await soma("publish", "soma.cmd.globex.policy.evaluate", f"@{path}")
    assert result.exit_code == 0, result.stderr
    stored = await js.get_last_msg(STREAMS["cmd"], "soma.cmd.globex.policy.evaluate")
    assert (stored.headers or {})["Soma-Tenant"] == "globex"


async def test_an_unreachable_nats_is_one_clear_line_and_exit_1(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    soma = Soma(clean_env(NATS_URL=url, SOMA_DATA_DIR=str(tmp_path)))
    result = await soma("publish", "soma.cmd.acme.policy.evaluate", BODY)
    assert result.exit_code == 1
    assert f"cannot reach NATS at {url}" in result.stderr
    assert "soma up" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
