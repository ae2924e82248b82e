"""What the console reads is narrowed to the signed-in tenant unless the role is operator;
checked on the console's own API, the way a hostile client would call it."""

from __future__ import annotations

import httpx
import pytest

from console.access import AccessError, Operator
from tests.console.conftest import System


def _admin(tenant: str = "acme") -> Operator:
    return Operator(tenant=tenant, user="u1", roles=("admin",), credential="x")


def test_an_admin_reads_its_own_tenant_when_none_is_named() -> None:
    assert _admin().tenant_scope(None) == "acme"
    assert _admin().tenant_scope("acme") == "acme"


def test_an_admin_naming_another_tenant_is_refused() -> None:
    with pytest.raises(AccessError) as refused:
        _admin().tenant_scope("globex")
    assert refused.value.status == 403


def test_an_operator_reads_every_tenant_or_the_one_it_names() -> None:
    operator = Operator(tenant="default", user="ops", roles=("operator",), credential="x")
    assert operator.tenant_scope(None) is None
    assert operator.tenant_scope("globex") == "globex"


@pytest.mark.parametrize(
    "path",
    [
        "/console/api/events?tenant=globex",
        "/console/api/story/abc?tenant=globex",
        "/console/api/sagas?tenant=globex",
        "/console/api/dead-letters?tenant=globex",
    ],
)
def test_an_admin_asking_for_another_tenants_data_gets_403(system: System, path: str) -> None:
    answer = httpx.get(
        f"{system.console}{path}",
        headers={"Authorization": f"Bearer {system.admin_key}"},
        timeout=30,
    )
    assert answer.status_code == 403, answer.text
    assert answer.json()["error"]["code"] == "forbidden"


def test_a_call_without_a_credential_is_401_in_the_api_error_shape(system: System) -> None:
    answer = httpx.get(f"{system.console}/console/api/sagas", timeout=30)
    assert answer.status_code == 401
    assert set(answer.json()["error"]) == {"message", "type", "param", "code"}


def test_a_member_key_is_refused_by_the_console_api(system: System) -> None:
    answer = httpx.get(
        f"{system.console}/console/api/dead-letters",
        headers={"Authorization": f"Bearer {system.member_key}"},
        timeout=30,
    )
    assert answer.status_code == 403
    assert "operators and admins" in answer.json()["error"]["message"]


@pytest.mark.parametrize(
    "path", ["v1/chat/completions", "v1/tasks/../chat/completions", "v1/tasks/%2E%2E/memory"]
)
def test_the_console_passes_only_the_apis_own_routes_to_the_gateway(
    system: System, path: str
) -> None:
    answer = httpx.get(
        f"{system.console}/console/api/gateway/{path}",
        headers={"Authorization": f"Bearer {system.admin_key}"},
        timeout=30,
    )
    assert answer.status_code == 404


def test_what_the_api_refuses_the_console_refuses(system: System) -> None:
    """Usage is an admin's; an operator key is refused by the API, through the console too."""
    answer = httpx.get(
        f"{system.console}/console/api/gateway/v1/usage",
        headers={"Authorization": f"Bearer {system.operator_key}"},
        timeout=30,
    )
    assert answer.status_code == 403


def test_the_page_may_load_nothing_from_elsewhere(system: System) -> None:
    page = httpx.get(f"{system.console}/console/", timeout=30)
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="app.js"></script>' in page.text
