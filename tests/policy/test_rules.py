"""Rule files: validation, how a tenant file builds on the default, and hot reload."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from handlers.policy.evaluate import evaluate
from handlers.policy.rules import (
    InvalidTenant,
    PolicyError,
    RuleSet,
    RuleStore,
    build_ruleset,
    default_source,
)
from schemas.policy import PolicyEvaluate
from tests.clock import Clock


def tenant_rules(yaml_text: str) -> RuleSet:
    return build_ruleset("acme", default_source(), yaml_text.encode(), "acme.yaml")


def decision(rules: RuleSet, text: str, stage: str = "prompt") -> str:
    return evaluate(rules, PolicyEvaluate(stage=stage, text=text)).decision  # type: ignore[arg-type]


def write(path: Path, text: str) -> None:
    """Replace the file atomically, the way editors and deploy tools do."""
    staging = path.with_suffix(".tmp")
    staging.write_text(text)
    os.replace(staging, path)


ZEUS = """
version: 1
blocked_topics:
  - id: topic.project-zeus
    keywords: [project zeus]
    examples: [what is Project  Zeus about]
"""
HERA = """
version: 2
blocked_topics:
  - id: topic.project-hera
    keywords: [project hera]
"""


def test_the_default_rule_set_is_versioned_by_name_version_and_content(
    default_rules: RuleSet,
) -> None:
    name, rest = default_rules.version.split("@")
    version, digest = rest.split("+")
    assert name == "default" and version and len(digest) == 8


def test_a_tenant_file_adds_its_rules_to_the_default_ones() -> None:
    rules = tenant_rules(ZEUS)
    assert decision(rules, "Tell me about project   ZEUS.") == "deny"
    assert decision(rules, "mail ann@example.com") == "redact"
    assert rules.version.startswith("acme@1+")


def test_keywords_match_whole_words_only() -> None:
    rules = tenant_rules(ZEUS)
    assert decision(rules, "project zeusian architecture") == "allow"


def test_a_tenant_rule_with_a_default_id_replaces_it() -> None:
    rules = tenant_rules(
        """
version: 1
pii:
  - id: pii.email
    detect: email
    action: deny
"""
    )
    assert decision(rules, "mail ann@example.com") == "deny"
    assert [r.id for r in rules.rules].count("pii.email") == 1


def test_disabled_default_rules_no_longer_apply() -> None:
    rules = tenant_rules("version: 1\ndisable: [pii.phone, injection.zero_width]\n")
    assert decision(rules, "call +1 415-555-2671") == "allow"
    assert decision(rules, "pay\u200bpal") == "allow"
    assert decision(rules, "mail ann@example.com") == "redact"


def test_a_file_that_extends_nothing_has_only_its_own_rules() -> None:
    rules = tenant_rules(ZEUS.replace("version: 1", "version: 1\nextends: none"))
    assert decision(rules, "mail ann@example.com") == "allow"
    assert decision(rules, "project zeus") == "deny"
    assert rules.budget.max_tokens_per_request is None
    assert not rules.tools.allows("user", "calculator")


def test_a_tenant_pii_pattern_redacts_with_its_own_replacement() -> None:
    rules = tenant_rules(
        """
version: 1
pii:
  - id: pii.employee-id
    pattern: 'EMP-\\d{6}'
    kind: employee_id
    replacement: '<employee>'
    examples: [{text: "ask EMP-123456", match: EMP-123456}]
"""
    )
    verdict = evaluate(rules, PolicyEvaluate(stage="prompt", text="ask EMP-123456 now"))
    assert verdict.redacted_text == "ask <employee> now"
    assert [span.kind for span in verdict.spans] == ["employee_id"]


def test_rules_apply_only_in_their_stages() -> None:
    rules = tenant_rules(
        """
version: 1
blocked_topics:
  - id: topic.pricing
    keywords: [internal price list]
    stages: [answer]
"""
    )
    assert decision(rules, "show the internal price list", stage="prompt") == "allow"
    assert decision(rules, "here is the internal price list", stage="answer") == "deny"


def test_tool_roles_override_the_default_role_by_role() -> None:
    rules = tenant_rules(
        """
version: 1
tools:
  roles:
    user: [calculator, "github.*"]
    "*": [current_time]
"""
    )
    assert rules.tools.allows("user", "github.create_issue")
    assert not rules.tools.allows("user", "python")
    assert rules.tools.allows("admin", "slack.post_message")
    assert rules.tools.allows("guest", "current_time")
    assert not rules.tools.allows("guest", "calculator")


def test_budgets_override_field_by_field_and_null_means_unlimited() -> None:
    rules = tenant_rules(
        """
version: 1
budgets:
  tenant_daily_tokens: null
  key_daily_tokens: 1000
  keys:
    k-big: {daily_tokens: 50000, max_tokens_per_request: 64000}
"""
    )
    assert rules.budget.tenant_daily_tokens is None
    assert rules.budget.max_tokens_per_request == 32000
    assert rules.budget.key_daily_limit("k-small") == 1000
    assert rules.budget.key_daily_limit("k-big") == 50000
    assert rules.budget.request_limit("k-big") == 64000
    assert rules.budget.request_limit("k-small") == 32000
    assert rules.budget.key_daily_limit(None) is None


@pytest.mark.parametrize(
    ("yaml_text", "complaint"),
    [
        pytest.param(*case, id=case[1])
        for case in [
            ("version: 1\nblocked_topic: []\n", "blocked_topic"),
            ("blocked_topics: []\n", "version"),
            ("version: 1\nblocked_topics: [{id: t.x, patterns: ['(unclosed']}]\n", "'t.x'"),
            ("version: 1\nblocked_topics: [{id: t.x, patterns: ['a*']}]\n", "matches empty"),
            ("version: 1\nblocked_topics: [{id: t.x}]\n", "needs keywords"),
            ("version: 1\nblocked_topics: [{id: t.x, keywords: [' ']}]\n", "empty keyword"),
            ("version: 1\nblocked_topics: [{id: t.x, keywords: [a], action: redact}]\n", "action"),
            ("version: 1\nblocked_topics: [{id: T X, keywords: [a]}]\n", "ids are"),
            ("version: 1\nblocked_topics: [{id: t.x, keywords: [a], stages: []}]\n", "stages"),
            ("version: 1\nblocked_topics: [{id: t.x, keywords: [a], stages: [later]}]\n", "stages"),
            (
                "version: 1\nblocked_topics: [{id: t.x, keywords: [zeus], examples: [hera]}]\n",
                "does not trigger",
            ),
            (
                "version: 1\n"
                "blocked_topics: [{id: t.x, keywords: [zeus], counterexamples: [zeus]}]\n",
                "counterexample",
            ),
            ("version: 1\ninjection: [{id: i.x, detect: telepathy}]\n", "unknown detector"),
            ("version: 1\npii: [{id: p.x, detect: email, pattern: x}]\n", "exactly one"),
            ("version: 1\npii: [{id: p.x, detect: email, action: allow}]\n", "action"),
            (
                "version: 1\n"
                "pii: [{id: pii.email, detect: phone}, {id: pii.email, detect: email}]\n",
                "used twice",
            ),
            ("version: 1\ndisable: [pii.fingerprint]\n", "pii.fingerprint"),
            ("version: 1\nbudgets: {tenant_daily_tokens: -5}\n", "tenant_daily_tokens"),
            ("version: 1\ntools: {roles: {user: ['']}}\n", "empty tool name"),
            ("version: [1\n", "not valid YAML"),
        ]
    ],
)
def test_an_invalid_file_is_refused_with_a_reason(yaml_text: str, complaint: str) -> None:
    with pytest.raises(PolicyError, match=r"acme\.yaml") as refused:
        tenant_rules(yaml_text)
    assert complaint in str(refused.value)


def test_a_tenant_without_a_file_gets_the_default(policy_dir: Path) -> None:
    store = RuleStore(policy_dir)
    assert store.get("acme") is store.default


@pytest.mark.parametrize("tenant", ["../etc/passwd", "a/b", "", ".hidden", "x" * 200])
def test_a_tenant_name_that_is_not_a_file_name_is_refused(policy_dir: Path, tenant: str) -> None:
    with pytest.raises(InvalidTenant):
        RuleStore(policy_dir).get(tenant)


def test_a_changed_tenant_file_is_picked_up_after_at_most_a_second(
    policy_dir: Path, clock: Clock
) -> None:
    store = RuleStore(policy_dir, clock=clock)
    write(policy_dir / "acme.yaml", ZEUS)
    assert decision(store.get("acme"), "project zeus") == "deny"

    write(policy_dir / "acme.yaml", HERA)
    clock.advance(0.5)
    assert store.get("acme").version.startswith("acme@1+")  # not looked at again yet
    clock.advance(0.6)
    rules = store.get("acme")
    assert rules.version.startswith("acme@2+")
    assert decision(rules, "project hera") == "deny"
    assert decision(rules, "project zeus") == "allow"


def test_a_file_edited_in_place_is_picked_up(policy_dir: Path, clock: Clock) -> None:
    store = RuleStore(policy_dir, clock=clock)
    path = policy_dir / "acme.yaml"
    path.write_text(ZEUS)
    first = store.get("acme")
    with path.open("a") as appended:
        appended.write("description: now with a description\n")
    clock.advance(1.0)
    assert store.get("acme").version != first.version


def test_an_unchanged_file_is_not_read_again(policy_dir: Path, clock: Clock) -> None:
    store = RuleStore(policy_dir, clock=clock)
    write(policy_dir / "acme.yaml", ZEUS)
    first = store.get("acme")
    clock.advance(5)
    assert store.get("acme") is first


def test_a_tenant_file_created_or_deleted_later_is_noticed(policy_dir: Path, clock: Clock) -> None:
    store = RuleStore(policy_dir, clock=clock)
    assert store.get("acme") is store.default
    write(policy_dir / "acme.yaml", ZEUS)
    clock.advance(1)
    assert decision(store.get("acme"), "project zeus") == "deny"
    (policy_dir / "acme.yaml").unlink()
    clock.advance(1)
    assert store.get("acme") is store.default


def test_a_broken_tenant_file_is_an_error_until_it_is_fixed(policy_dir: Path, clock: Clock) -> None:
    store = RuleStore(policy_dir, clock=clock)
    write(policy_dir / "acme.yaml", "version: 1\nblocked_topics: [{id: t.x, patterns: ['(']}]\n")
    with pytest.raises(PolicyError, match=r"t\.x"):
        store.get("acme")
    with pytest.raises(PolicyError):  # the error is remembered, not re-parsed each call
        store.get("acme")
    write(policy_dir / "acme.yaml", ZEUS)
    clock.advance(1)
    assert decision(store.get("acme"), "project zeus") == "deny"


def test_tenants_do_not_share_rules(policy_dir: Path, clock: Clock) -> None:
    store = RuleStore(policy_dir, clock=clock)
    write(policy_dir / "acme.yaml", ZEUS)
    assert decision(store.get("acme"), "project zeus") == "deny"
    assert decision(store.get("globex"), "project zeus") == "allow"
