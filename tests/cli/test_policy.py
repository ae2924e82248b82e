"""``soma policy``: the constitution in force for a tenant, and signing one that must be."""

from __future__ import annotations

import json
from pathlib import Path

from kernel.constitution import content_hash
from kernel.grants import default_source
from tests.cli.conftest import Soma, clean_env

CONSTITUTION = b"""\
version: 3
description: acme's rules
principles:
  - id: be-kind
    text: Be kind to everyone.
judge: {model: judge-model, stages: [answer], on_failure: open}
"""


def soma_in(data: Path, **extra: str) -> Soma:
    return Soma(clean_env(SOMA_DATA_DIR=str(data), **extra))


async def test_show_prints_the_hash_decisions_name_and_the_principles(tmp_path: Path) -> None:
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "acme.yaml").write_bytes(CONSTITUTION)
    shown = await soma_in(tmp_path)("policy", "show", "--tenant", "acme", "--json")
    assert shown.exit_code == 0, shown.stderr
    found = json.loads(shown.stdout)
    assert found["constitution"] == content_hash(CONSTITUTION, default_source())
    assert found["principles"] == [{"id": "be-kind", "text": "Be kind to everyone."}]
    assert found["judge"]["on_failure"] == "open"
    text = await soma_in(tmp_path)("policy", "show", "-t", "acme")
    assert found["constitution"] in text.stdout and "be-kind: Be kind" in text.stdout


async def test_a_keygen_key_signs_a_constitution_the_trust_file_then_accepts(
    tmp_path: Path,
) -> None:
    soma = soma_in(tmp_path)
    made = await soma("policy", "keygen", "--out", str(tmp_path / "acme.pem"))
    assert made.exit_code == 0, made.stderr
    public = made.stdout.strip()
    (tmp_path / "policy-trust.yaml").write_text(
        f"tenants:\n  acme:\n    require_signature: true\n    keys: ['{public}']\n"
    )
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "acme.yaml").write_bytes(CONSTITUTION)
    unsigned = await soma("policy", "show", "-t", "acme")
    assert unsigned.exit_code == 1 and "unsigned" in unsigned.stderr
    signed = await soma(
        "policy",
        "sign",
        str(tmp_path / "policy" / "acme.yaml"),
        "--key",
        str(tmp_path / "acme.pem"),
    )
    assert signed.exit_code == 0, signed.stderr
    shown = await soma("policy", "show", "-t", "acme")
    assert shown.exit_code == 0, shown.stderr
    assert "signed        required" in shown.stdout
