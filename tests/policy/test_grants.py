"""The grants the tools and memory processes enforce: read from the same rule files, compiled by the
same code as the policy's own rule sets, so an allow-list never says one thing to policy and
another to the process that runs the tool."""

from __future__ import annotations

from pathlib import Path

import pytest

from handlers.policy.rules import RuleStore
from kernel.grants import GrantStore, PolicyError, build_grants, default_source
from tests.clock import Clock

MEMBERS_CALCULATE = """
version: 1
tools:
  roles:
    member: [calc*]
memory:
  tenant_wide_roles: [auditor]
"""


def test_by_default_admins_and_services_have_tenant_wide_memory_and_members_do_not() -> None:
    grants = build_grants(None, default_source(), "default_policy.yaml")
    assert grants.memory.tenant_wide("admin") and grants.memory.tenant_wide("service")
    assert not grants.memory.tenant_wide("member")
    assert not grants.memory.tenant_wide(None)


def test_by_default_a_member_may_call_no_tool_and_no_role_may_call_any() -> None:
    grants = build_grants(None, default_source(), "default_policy.yaml")
    assert not grants.tools.allows("member", "python")
    assert not grants.tools.allows(None, "calculator")
    assert not grants.tools.allows("", "calculator")
    assert grants.tools.allows("admin", "python")


def test_a_tenant_file_adds_roles_to_the_default_and_replaces_its_memory_section() -> None:
    grants = build_grants(default_source(), MEMBERS_CALCULATE.encode(), "acme.yaml")
    assert grants.tools.allows("member", "calculator")
    assert not grants.tools.allows("member", "python")
    assert grants.tools.allows("admin", "python")  # inherited
    assert grants.memory.tenant_wide("auditor")
    assert not grants.memory.tenant_wide("admin")  # the tenant's list replaces the default's


@pytest.mark.parametrize("role", ["member", "admin", "user", "agent", "nobody"])
@pytest.mark.parametrize("tool", ["python", "calculator", "current_time", "github.list_issues"])
def test_policy_and_the_grant_store_read_one_allow_list(
    policy_dir: Path, clock: Clock, role: str, tool: str
) -> None:
    (policy_dir / "acme.yaml").write_text(MEMBERS_CALCULATE)
    rules = RuleStore(policy_dir, clock=clock).get("acme")
    grants = GrantStore(policy_dir, clock=clock).get("acme")
    assert rules.tools.allows(role, tool) == grants.tools.allows(role, tool)
    assert rules.memory == grants.memory


def test_a_tenant_file_whose_grants_do_not_parse_is_an_error_until_fixed(
    policy_dir: Path, clock: Clock
) -> None:
    store = GrantStore(policy_dir, clock=clock)
    (policy_dir / "acme.yaml").write_text("version: 1\nmemory: {tenant_wide_roles: admin}\n")
    with pytest.raises(PolicyError, match=r"acme\.yaml"):
        store.get("acme")
    (policy_dir / "acme.yaml").write_text(MEMBERS_CALCULATE)
    clock.advance(2)
    assert store.get("acme").memory.tenant_wide("auditor")
