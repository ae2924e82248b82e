"""A constitution's identity, its signature, the summary of a change and the judge's answer read
back — the parts that need no bus."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.ext.asyncio import AsyncEngine

from handlers.policy.constitutions import Announcer, outline, summarize
from handlers.policy.judge import JudgeUnavailable, ModelJudge, read_answer
from handlers.policy.judgements import SqlJudgements
from handlers.policy.rules import PolicyError, RuleStore, build_ruleset
from kernel.constitution import (
    SignatureRefused,
    TenantTrust,
    Trust,
    TrustError,
    content_hash,
    load_trust,
    public_text,
    sign,
    verify,
)
from kernel.grants import GrantStore, default_source
from tests.clock import Clock

PRINCIPLES = b"""\
version: 1
principles:
  - id: be-kind
    text: Be kind.
  - id: no-diagnosis
    text: Never diagnose.
judge: {model: judge-model, stages: [prompt, answer], timeout: 2, on_failure: open}
"""


@pytest.fixture
def signer() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def trust(signer: Ed25519PrivateKey) -> Trust:
    return Trust({"acme": TenantTrust(True, (signer.public_key(),))})


def write(folder: Path, tenant: str, source: bytes, key: Ed25519PrivateKey | None = None) -> None:
    (folder / f"{tenant}.yaml").write_bytes(source)
    if key is not None:
        (folder / f"{tenant}.yaml.sig").write_text(sign(source, key))


def test_the_hash_names_the_content_and_the_base_it_builds_on() -> None:
    base = default_source()
    ruleset = build_ruleset("acme", base, b"version: 1\n", "acme.yaml")
    assert ruleset.constitution == content_hash(b"version: 1\n", base)
    assert ruleset.constitution != content_hash(b"version: 1\n")
    alone = build_ruleset("acme", base, b"version: 1\nextends: none\n", "acme.yaml")
    assert alone.constitution == content_hash(b"version: 1\nextends: none\n")
    assert ruleset.version.endswith("+" + ruleset.constitution.removeprefix("sha256:")[:8])


def test_principles_and_the_judge_are_read_with_the_rules() -> None:
    ruleset = build_ruleset("acme", default_source(), PRINCIPLES, "acme.yaml")
    assert [p.id for p in ruleset.principles] == ["be-kind", "no-diagnosis"]
    assert ruleset.judge is not None and ruleset.judge.fail_open
    assert ruleset.judged_principles("prompt") == ruleset.principles
    assert ruleset.judged_principles("tool_call") == ()


def test_a_judge_without_principles_is_refused_at_load() -> None:
    with pytest.raises(PolicyError, match="needs principles"):
        build_ruleset("acme", None, b"version: 1\njudge: {model: m}\n", "acme.yaml")


def test_a_signed_constitution_verifies_with_the_tenants_key(signer: Ed25519PrivateKey) -> None:
    source = b"version: 1\n"
    verify("acme", source, sign(source, signer).encode(), TenantTrust(True, (signer.public_key(),)))


def test_a_tenant_without_a_signing_requirement_loads_unsigned_files() -> None:
    verify("acme", b"version: 1\n", None, TenantTrust())


def test_an_edited_file_no_longer_verifies(signer: Ed25519PrivateKey) -> None:
    signature = sign(b"version: 1\n", signer).encode()
    with pytest.raises(SignatureRefused, match="does not verify"):
        verify("acme", b"version: 2\n", signature, TenantTrust(True, (signer.public_key(),)))


def test_an_unsigned_file_is_refused_saying_how_to_sign_it(trust: Trust, tmp_path: Path) -> None:
    write(tmp_path, "acme", b"version: 1\n")
    store = RuleStore(tmp_path, trust=trust)
    with pytest.raises(PolicyError, match=r"unsigned.*soma policy sign"):
        store.get("acme")


def test_a_refused_file_leaves_the_previous_constitution_in_force(
    trust: Trust, signer: Ed25519PrivateKey, tmp_path: Path, clock: Clock
) -> None:
    store = RuleStore(tmp_path, trust=trust, clock=clock)
    write(tmp_path, "acme", b"version: 1\n", signer)
    before = store.get("acme").constitution
    write(tmp_path, "acme", b"version: 2\n", Ed25519PrivateKey.generate())
    clock.advance(2)
    assert store.get("acme").constitution == before
    assert "does not verify" in (store.refusal("acme") or "")
    write(tmp_path, "acme", b"version: 2\n", signer)
    clock.advance(2)
    assert store.get("acme").constitution != before
    assert store.refusal("acme") is None


def test_removing_a_signed_constitution_leaves_it_in_force(
    trust: Trust, signer: Ed25519PrivateKey, tmp_path: Path, clock: Clock
) -> None:
    store = RuleStore(tmp_path, trust=trust, clock=clock)
    write(tmp_path, "acme", b"version: 1\n", signer)
    before = store.get("acme").constitution
    (tmp_path / "acme.yaml").unlink()
    clock.advance(2)
    assert store.get("acme").constitution == before
    assert "removed" in (store.refusal("acme") or "")


def test_an_unsigned_file_changes_no_grant_of_the_tools_and_memory_processes(
    trust: Trust, tmp_path: Path
) -> None:
    write(tmp_path, "acme", b"version: 1\ntools: {roles: {member: ['*']}}\n")
    with pytest.raises(PolicyError, match="unsigned"):
        GrantStore(tmp_path, trust=trust).get("acme")
    assert GrantStore(tmp_path).get("acme").tools.allows("member", "python")


def test_the_trust_file_lists_keys_in_base64_or_pem(
    signer: Ed25519PrivateKey, tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives import serialization

    pem = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    indented = "\n".join("        " + line for line in pem.splitlines())
    (tmp_path / "trust.yaml").write_text(
        "tenants:\n  acme:\n    require_signature: true\n    keys:\n"
        f"      - {public_text(signer.public_key())}\n      - |\n{indented}\n"
    )
    trust = load_trust(tmp_path / "trust.yaml")
    assert trust.of("acme").require_signature and len(trust.of("acme").keys) == 2
    assert not trust.of("other").require_signature


def test_a_trust_file_requiring_signatures_without_keys_is_refused(tmp_path: Path) -> None:
    (tmp_path / "trust.yaml").write_text("tenants: {acme: {require_signature: true}}\n")
    with pytest.raises(TrustError, match="lists no keys"):
        load_trust(tmp_path / "trust.yaml")


def test_the_summary_names_what_was_added_removed_and_changed() -> None:
    base = default_source()
    old = build_ruleset("acme", base, PRINCIPLES, "acme.yaml")
    new_source = PRINCIPLES.replace(b"Be kind.", b"Be kind, always.").replace(
        b"version: 1", b"version: 2\ndisable: [injection.ignore_instructions]"
    )
    new = build_ruleset("acme", base, new_source, "acme.yaml")
    summary = summarize(outline(old), outline(new))
    assert "version 1 -> 2" in summary
    assert "rules removed: injection.ignore_instructions" in summary
    assert "principles changed: be-kind" in summary


def test_the_judges_answer_names_the_broken_principles() -> None:
    ruleset = build_ruleset("acme", None, PRINCIPLES, "acme.yaml")
    broken = read_answer(
        'Sure. {"violated": [{"principle": "no-diagnosis", "reason": "diagnoses"}]}',
        ruleset.principles,
    )
    assert [(p.id, reason) for p, reason in broken] == [("no-diagnosis", "diagnoses")]
    assert read_answer('{"violated": []}', ruleset.principles) == []


@pytest.mark.parametrize(
    "answer",
    ["I think it is fine", '{"ok": true}', '{"violated": [{"principle": "made-up"}]}'],
)
def test_an_answer_that_is_not_a_verdict_counts_as_a_silent_judge(answer: str) -> None:
    ruleset = build_ruleset("acme", None, PRINCIPLES, "acme.yaml")
    with pytest.raises(JudgeUnavailable):
        read_answer(answer, ruleset.principles)


async def test_a_change_recorded_by_one_replica_is_not_announced_again_by_another(
    engine: AsyncEngine,
) -> None:
    published: list[tuple[str, str]] = []

    async def publish(event: object, tenant: str, message_id: str, correlation: str) -> None:
        published.append((type(event).__name__, message_id))

    ruleset = build_ruleset("acme", None, PRINCIPLES, "acme.yaml")
    first, second = Announcer(engine, publish), Announcer(engine, publish)
    await first.observe("acme-once", ruleset, "c1")
    await second.observe("acme-once", ruleset, "c2")
    await first.observe("acme-once", ruleset, "c3")
    assert [name for name, _ in published] == ["PolicyConstitutionChanged"]


async def test_a_text_judged_by_one_replica_is_not_judged_again_by_another(
    engine: AsyncEngine,
) -> None:
    asked: list[str] = []

    async def ask(command: object, tenant: str, correlation: str, timeout: float) -> str:
        asked.append(correlation)
        return '{"violated": [{"principle": "be-kind", "reason": "it is rude"}]}'

    ruleset = build_ruleset("acme", None, PRINCIPLES, "acme.yaml")
    shared = SqlJudgements(engine)
    first = await ModelJudge(ask, shared).judge("acme", ruleset, "prompt", "you fool", "c1")
    again = await ModelJudge(ask, shared).judge("acme", ruleset, "prompt", "you fool", "c2")
    assert len(asked) == 1
    assert first is not None and again is not None
    assert again.verdict.cached and again.verdict.violated == ["be-kind"]
    assert again.findings == first.findings


async def test_a_silent_judge_is_asked_again_next_time(engine: AsyncEngine) -> None:
    asked: list[str] = []

    async def ask(command: object, tenant: str, correlation: str, timeout: float) -> str:
        asked.append(correlation)
        raise JudgeUnavailable("no answer within 2s")

    ruleset = build_ruleset("acme", None, PRINCIPLES, "acme.yaml")
    judge = ModelJudge(ask, SqlJudgements(engine))
    for _ in range(2):
        judged = await judge.judge("acme-silent", ruleset, "prompt", "hello", "c")
        assert judged is not None and judged.findings[0].action == "flag"  # on_failure: open
    assert len(asked) == 2


async def test_replicas_seeing_a_change_at_once_publish_it_under_one_message_id(
    engine: AsyncEngine,
) -> None:
    published: list[str] = []

    async def publish(event: object, tenant: str, message_id: str, correlation: str) -> None:
        published.append(message_id)

    ruleset = build_ruleset("acme", None, PRINCIPLES, "acme.yaml")
    replicas = [Announcer(engine, publish) for _ in range(3)]
    await asyncio.gather(
        *(r.observe("acme-race", ruleset, f"c{i}") for i, r in enumerate(replicas))
    )
    assert published and len(set(published)) == 1  # the server keeps one of them
