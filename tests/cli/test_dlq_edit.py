"""`soma dlq replay --edit` / `--body`: correct a dead letter's body, checked before it is sent."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from nats.js import JetStreamContext

from schemas.catalogue import STREAMS
from tests.cli.conftest import Soma
from tests.cli.test_dlq import _dead_letters, _plant
from tests.servers import NatsServer


def _editor(tmp_path: Path, script: str) -> str:
    """An $EDITOR that edits the file it is given as ``script`` says (sh, the file is $1)."""
    path = tmp_path / "editor.sh"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return str(path)


async def _last_command(js: JetStreamContext) -> tuple[dict, dict[str, str]]:
    last = (await js.stream_info(STREAMS["cmd"])).state.last_seq
    message = await js.get_msg(STREAMS["cmd"], last)
    return json.loads(message.data or b""), dict(message.headers or {})


async def _dead_letter_count(js: JetStreamContext) -> int:
    return (await js.stream_info(STREAMS["dlq"])).state.messages


async def test_replay_edit_sends_the_body_as_edited_in_the_editor(
    js: JetStreamContext, fresh_nats: NatsServer, soma: Soma, tmp_path: Path
) -> None:
    await _dead_letters(js, fresh_nats.url, ["fix my stage"])
    soma.env["EDITOR"] = _editor(tmp_path, 'sed -i \'s/"nowhere"/"prompt"/\' "$1"')
    result = await soma("dlq", "replay", "1", "--edit")
    assert result.exit_code == 0, result.stderr
    assert "replayed 1 to soma.cmd.acme.policy.evaluate" in result.stdout
    body, _ = await _last_command(js)
    assert body == {"stage": "prompt", "text": "fix my stage"}
    assert await _dead_letter_count(js) == 0


async def test_an_edited_replay_keeps_the_correlation_and_gets_an_id_of_its_own(
    js: JetStreamContext, fresh_nats: NatsServer, soma: Soma, tmp_path: Path
) -> None:
    await _dead_letters(js, fresh_nats.url, ["twice"])
    plain = await soma("dlq", "replay", "1", "--keep")
    assert plain.exit_code == 0, plain.stderr
    _, first = await _last_command(js)
    soma.env["VISUAL"] = _editor(tmp_path, 'sed -i \'s/"nowhere"/"answer"/\' "$1"')
    edited = await soma("dlq", "replay", "1", "--edit")
    assert edited.exit_code == 0, edited.stderr
    body, headers = await _last_command(js)
    assert body["stage"] == "answer", "not dropped by the dedup window as a repeat"
    assert headers["Soma-Correlation-Id"] == first["Soma-Correlation-Id"] == "c-0"
    assert headers["Nats-Msg-Id"].startswith("bad-0-replay1-edit")
    assert headers["Nats-Msg-Id"] != first["Nats-Msg-Id"]


async def test_replay_edit_refuses_a_body_its_schema_rejects_and_keeps_the_dead_letter(
    js: JetStreamContext, fresh_nats: NatsServer, soma: Soma, tmp_path: Path
) -> None:
    await _dead_letters(js, fresh_nats.url, ["still wrong"])
    commands = (await js.stream_info(STREAMS["cmd"])).state.messages
    soma.env["EDITOR"] = _editor(tmp_path, 'echo \'{"stage": 5}\' > "$1"')
    result = await soma("dlq", "replay", "1", "--edit")
    assert result.exit_code == 2
    assert "not replayed; dead letter 1 stays" in result.stderr
    assert "not a valid policy.evaluate" in result.stderr
    kept = result.stderr.split("your edit is kept in ")[1].split(":")[0]
    assert json.loads(await asyncio.to_thread(Path(kept).read_text)) == {"stage": 5}
    assert (await js.stream_info(STREAMS["cmd"])).state.messages == commands
    assert await _dead_letter_count(js) == 1


async def test_replay_edit_that_changes_nothing_sends_nothing(
    js: JetStreamContext, fresh_nats: NatsServer, soma: Soma, tmp_path: Path
) -> None:
    await _dead_letters(js, fresh_nats.url, ["untouched"])
    soma.env["EDITOR"] = _editor(tmp_path, "true")
    result = await soma("dlq", "replay", "1", "--edit")
    assert result.exit_code == 1
    assert "unchanged" in result.stderr
    assert await _dead_letter_count(js) == 1


async def test_replay_body_from_stdin_is_checked_and_sent(
    js: JetStreamContext, fresh_nats: NatsServer, soma: Soma
) -> None:
    await _dead_letters(js, fresh_nats.url, ["scripted"])
    result = await soma(
        "dlq", "replay", "1", "--body", "-", stdin='{"stage": "prompt", "text": "from a script"}'
    )
    assert result.exit_code == 0, result.stderr
    body, _ = await _last_command(js)
    assert body == {"stage": "prompt", "text": "from a script"}


async def test_replay_body_from_a_file_that_is_not_json_is_refused(
    js: JetStreamContext, fresh_nats: NatsServer, soma: Soma, tmp_path: Path
) -> None:
    await _dead_letters(js, fresh_nats.url, ["x"])
    broken = tmp_path / "body.json"
    broken.write_text("{stage: prompt")
    result = await soma("dlq", "replay", "1", "--body", str(broken))
    assert result.exit_code == 2
    assert "not valid JSON" in result.stderr
    assert await _dead_letter_count(js) == 1


async def test_replay_edit_of_a_forged_dead_letter_is_refused_before_the_editor_opens(
    js: JetStreamContext, soma: Soma, tmp_path: Path
) -> None:
    await _plant(js, "soma.dlq.acme.policy", "soma.cmd.acme.identity.create_key", "identity")
    opened = tmp_path / "opened"
    soma.env["EDITOR"] = _editor(tmp_path, f"touch {opened}")
    result = await soma("dlq", "replay", "1", "--edit")
    assert result.exit_code == 1
    assert "refused to replay dead letter 1" in result.stderr
    assert not opened.exists()
