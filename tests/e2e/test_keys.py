"""Keys with budgets and limits, spend and usage per key, the admin flows that make tenants,
users and keys, and tools' errors — through the real CLI and a real gateway, every process
running.

The handlers and the saga runner run as OS processes; the gateway runs in the test's loop so its
clock can be moved on (a budget window of a day passes in a moment). The offline model is
priced here (``SOMA_MODELS_FILE``), so real chat turns spend real dollars of a budget.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from bus.connection import connect
from kernel.settings import Settings
from schemas.catalogue import STREAMS
from schemas.slm import SlmCompleted
from soma.cli_keys import bootstrap_credentials
from tests.e2e.conftest import ROOT, wait_for_consumers
from tests.gateway.serving import auth, gateway_config, served
from tests.servers import NatsServer, nats_server, stop_processes

PROCESSES = ["identity", "policy", "memory", "slm", "tools", "sagas", "analytics"]
CONSUMERS = [
    "identity",
    "policy",
    "memory",
    "slm",
    "tools",
    "sagas",
    "sagas-events",
    "analytics-events",
]
# http_fetch's own limit, longer than the bus timeout of the gateway that calls it.
FETCH_TIMEOUT = 2
# Two cents a token: a short turn of the offline model costs well under a dollar.
PRICE_PER_1M = 20_000.0
DAY = 86400.0


@dataclass
class Clock:
    """The gateway's clock: the time, plus however far a test has moved it on."""

    offset: float = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class System:
    nats: NatsServer
    env: dict[str, str]
    clock: Clock = field(default_factory=Clock)
    url: str = ""


def soma(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "soma.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def new_key(env: dict[str, str], *args: str) -> str:
    made = soma(env, "keys", "create", *args)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def key_id(key: str) -> str:
    return key.split("-")[2]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    data = tmp_path_factory.mktemp("budgets")
    models = data / "models.yaml"
    models.write_text(
        "models:\n  - name: soma-local-dev\n    deployments:\n"
        "      - {provider: local, model: soma-local-dev, "
        f"input_per_1m: {PRICE_PER_1M}, output_per_1m: {PRICE_PER_1M}}}\n"
    )
    with nats_server() as server:
        env = {
            **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
            "PYTHONPATH": str(ROOT),
            "NATS_URL": server.url,
            "SOMA_DATA_DIR": str(data),
            "SOMA_MODELS_FILE": str(models),
            "SOMA_RETRY_INITIAL": "0.2",
            "SOMA_TOOLS_HTTP_TIMEOUT": str(FETCH_TIMEOUT),
            "SOMA_TOOLS_HTTP_ALLOW": "127.0.0.1",
        }
        migrated = soma(env, "migrate")
        assert migrated.returncode == 0, migrated.stderr
        procs = [
            subprocess.Popen([sys.executable, "-m", "soma.cli", "run", name], env=env, cwd=ROOT)
            for name in PROCESSES
        ]
        try:
            yield System(server, env)
        finally:
            stop_processes(procs)


@pytest.fixture(scope="module")
async def system(running: System) -> AsyncIterator[System]:
    nc = await connect(running.nats.url, "budgets-ready")
    try:
        await wait_for_consumers(nc.jetstream(), CONSUMERS, timeout=120)
    finally:
        await nc.close()
    settings = Settings(NATS_URL=running.nats.url, SOMA_DATA_DIR=running.env["SOMA_DATA_DIR"])
    config = gateway_config(SOMA_CHAT_TIMEOUT=60, SOMA_BUS_TIMEOUT=20)
    async with served(settings, config, running.clock) as url:
        running.url = url
        yield running


@pytest.fixture(scope="module")
def admin_key(running: System) -> str:
    return new_key(running.env, "--tenant", "acme", "--user", "boss", "--role", "admin")


async def chat(client: httpx.AsyncClient, key: str, text: str = "Hello there") -> httpx.Response:
    return await client.post(
        "/v1/chat/completions",
        headers=auth(key),
        json={"model": "soma-local-dev", "messages": [{"role": "user", "content": text}]},
    )


async def spend_until_refused(client: httpx.AsyncClient, key: str) -> httpx.Response:
    """Chat turns until the budget refuses one (the spend reaches the gateway a moment after
    each turn, so a turn or two may pass before the refusal)."""
    for _ in range(12):
        answer = await chat(client, key)
        if answer.status_code != 200:
            return answer
        await asyncio.sleep(0.3)
    raise AssertionError("the budget never refused a turn")


async def completions_of(nats_url: str, key: str) -> list[SlmCompleted]:
    """Every usage event of the key, read back from the events stream."""
    nc = await connect(nats_url, "budgets-read")
    try:
        js = nc.jetstream()
        sub = await js.subscribe(
            "soma.evt.*.slm.completed", stream=STREAMS["evt"], ordered_consumer=True
        )
        found: list[SlmCompleted] = []
        while True:
            try:
                msg = await sub.next_msg(timeout=1.0)
            except TimeoutError:
                break
            event = SlmCompleted(**json.loads(msg.data))
            if event.key_id == key_id(key):
                found.append(event)
        await sub.unsubscribe()
        return found
    finally:
        await nc.close()


async def eventually(check, seconds: float = 20):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


async def test_a_budget_spent_by_chat_turns_stops_the_key_until_its_window_resets(
    system: System,
) -> None:
    key = new_key(
        system.env,
        "--tenant",
        "acme",
        "--user",
        "dana",
        "--role",
        "member",
        "--max-budget",
        "1",
        "--budget-duration",
        "1d",
    )
    async with httpx.AsyncClient(base_url=system.url, timeout=90) as client:
        refused = await spend_until_refused(client, key)
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert error["code"] == "budget_exceeded"
        assert error["type"] == "insufficient_quota"
        assert f"API key {key_id(key)}" in error["message"]
        assert "$1.0000 per 1d budget" in error["message"]
        assert "resets at" in error["message"]
        assert 0 < int(refused.headers["Retry-After"]) <= DAY

        system.clock.offset += DAY
        try:
            again = await chat(client, key)
            assert again.status_code == 200, again.text
        finally:
            system.clock.offset -= DAY


async def test_spend_per_key_equals_the_sum_of_its_usage_events(
    system: System, admin_key: str
) -> None:
    key = new_key(system.env, "--tenant", "acme", "--user", "erin", "--role", "member")
    async with httpx.AsyncClient(base_url=system.url, timeout=90) as client:
        for text in ("One", "Two, a little longer", "Three"):
            assert (await chat(client, key, text)).status_code == 200

        async def matches() -> float:
            events = await completions_of(system.nats.url, key)
            assert len(events) == 3
            total = sum(e.cost_usd for e in events)
            assert total > 0
            info = (
                await client.get(f"/v1/admin/keys/{key_id(key)}", headers=auth(admin_key))
            ).json()
            assert info["spend"] == pytest.approx(total)
            usage = (
                await client.get("/v1/usage", headers=auth(admin_key), params={"group_by": "key"})
            ).json()
            rows = [r for r in usage["data"] if r["group"]["key"] == key_id(key)]
            assert len(rows) == 1 and rows[0]["cost_usd"] == pytest.approx(total)
            return total

        total = await eventually(matches)
    shown = soma(system.env, "keys", "info", key_id(key), "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["spend"] == pytest.approx(total)


async def test_raising_a_spent_budget_over_http_lets_the_same_key_work_again(
    system: System, admin_key: str
) -> None:
    key = new_key(
        system.env,
        "--tenant",
        "acme",
        "--user",
        "fay",
        "--role",
        "member",
        "--max-budget",
        "0.5",
    )
    async with httpx.AsyncClient(base_url=system.url, timeout=90) as client:
        refused = await spend_until_refused(client, key)
        assert refused.json()["error"]["code"] == "budget_exceeded"
        assert "does not reset" in refused.json()["error"]["message"]
        raised = await client.patch(
            f"/v1/admin/keys/{key_id(key)}",
            headers=auth(admin_key),
            json={"max_budget": 1000, "budget_duration": "30d"},
        )
        assert raised.status_code == 200, raised.text
        body = raised.json()
        assert (body["max_budget"], body["budget_duration"]) == (1000, "30d")
        assert body["spend"] == 0  # a changed budget starts a new window
        assert (await chat(client, key)).status_code == 200


async def test_a_token_of_a_spent_key_is_refused_on_its_first_request_to_a_fresh_gateway(
    system: System,
) -> None:
    key = new_key(
        system.env,
        "--tenant",
        "acme",
        "--user",
        "max",
        "--role",
        "member",
        "--max-budget",
        "0.5",
    )
    async with httpx.AsyncClient(base_url=system.url, timeout=90) as client:
        made = await client.post("/v1/auth/token", headers=auth(key))
        assert made.status_code == 200, made.text
        refused = await spend_until_refused(client, key)
        assert refused.json()["error"]["code"] == "budget_exceeded"
    settings = Settings(NATS_URL=system.nats.url, SOMA_DATA_DIR=system.env["SOMA_DATA_DIR"])
    async with served(settings, gateway_config(), system.clock) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as fresh:
            first = await chat(fresh, made.json()["access_token"])
    assert first.status_code == 429, first.text
    assert first.json()["error"]["code"] == "budget_exceeded"
    assert f"API key {key_id(key)}" in first.json()["error"]["message"]


async def test_a_key_s_own_rpm_limit_set_by_the_cli_refuses_the_next_request(
    system: System,
) -> None:
    key = new_key(system.env, "--tenant", "acme", "--user", "gus", "--role", "member")
    changed = soma(
        system.env, "keys", "update", key_id(key), "--rpm", "1", "--metadata", "team=search"
    )
    assert changed.returncode == 0, changed.stderr
    async with httpx.AsyncClient(base_url=system.url, timeout=90) as client:
        first = await client.get("/v1/models", headers=auth(key))
        second = await client.get("/v1/models", headers=auth(key))
    assert first.status_code == 200, first.text
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "rate_limit_exceeded"


async def test_an_unknown_field_to_clear_is_a_usage_error_naming_the_fields(
    running: System,
) -> None:
    key = new_key(running.env, "--tenant", "acme", "--user", "hal", "--role", "member")
    refused = soma(running.env, "keys", "update", key_id(key), "--clear", "roles")
    assert refused.returncode == 2
    assert "choose from name, models, expires_at, max_budget" in refused.stderr


async def test_a_tenant_budget_set_by_an_operator_stops_every_key_of_the_tenant(
    system: System,
) -> None:
    operator = new_key(system.env, "--tenant", "ops", "--user", "root", "--role", "operator")
    member = new_key(system.env, "--tenant", "lean", "--user", "ivy", "--role", "member")
    async with httpx.AsyncClient(base_url=system.url, timeout=90) as client:
        capped = await client.patch(
            "/v1/admin/tenants/lean",
            headers=auth(operator),
            json={"max_budget": 0.5, "budget_duration": "7d"},
        )
        assert capped.status_code == 200, capped.text
        await asyncio.sleep(0.6)  # the gateway's cached verdict of the key expires
        refused = await spend_until_refused(client, member)
        assert refused.status_code == 429
        assert "tenant lean" in refused.json()["error"]["message"]


async def test_a_budget_duration_that_is_not_a_duration_is_400_naming_the_forms(
    system: System, admin_key: str
) -> None:
    key = new_key(system.env, "--tenant", "acme", "--user", "jo", "--role", "member")
    async with httpx.AsyncClient(base_url=system.url, timeout=30) as client:
        answer = await client.patch(
            f"/v1/admin/keys/{key_id(key)}",
            headers=auth(admin_key),
            json={"max_budget": 5, "budget_duration": "monthly"},
        )
    assert answer.status_code == 400
    assert "90s, 30m, 12h, 7d, 2w" in answer.json()["error"]["message"]


async def test_usage_groups_by_key_user_tenant_model_and_day_given_as_a_list_or_comma_separated(
    system: System, admin_key: str
) -> None:
    key = new_key(system.env, "--tenant", "acme", "--user", "kim", "--role", "member")
    async with httpx.AsyncClient(base_url=system.url, timeout=90) as client:
        assert (await chat(client, key)).status_code == 200

        async def both() -> tuple[dict, dict]:
            dims = "key,user,tenant,model,day"
            comma = (
                await client.get(
                    "/v1/usage", headers=auth(admin_key), params={"group_by": dims, "since": "7d"}
                )
            ).json()
            listed = (
                await client.get(
                    "/v1/usage",
                    headers=auth(admin_key),
                    params=[("group_by", d) for d in dims.split(",")] + [("since", "1764460800")],
                )
            ).json()
            rows = [r for r in comma["data"] if r["group"]["key"] == key_id(key)]
            assert len(rows) == 1
            return comma, listed

        comma, listed = await eventually(both)
    assert comma["data"] == listed["data"]
    row = next(r for r in comma["data"] if r["group"]["key"] == key_id(key))
    assert set(row["group"]) == {"key", "user", "tenant", "model", "day"}
    assert (row["group"]["tenant"], row["group"]["model"]) == ("acme", "soma-local-dev")
    cli = soma(
        system.env,
        "usage",
        "--tenant",
        "acme",
        "--group-by",
        "key",
        "-g",
        "model,user",
        "--since",
        "1764460800",
        "--json",
    )
    assert cli.returncode == 0, cli.stderr
    cli_rows = [r for r in json.loads(cli.stdout)["rows"] if r["group"]["key"] == key_id(key)]
    assert cli_rows[0]["cost_usd"] == pytest.approx(row["cost_usd"])


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"group_by": "model,colour"}, "choose from model, saga_type, day, user, key, tenant"),
        ({"since": "last tuesday"}, "unix seconds, a duration"),
    ],
)
async def test_a_usage_query_it_cannot_read_is_400_naming_what_it_takes(
    system: System, admin_key: str, params: dict[str, str], named: str
) -> None:
    async with httpx.AsyncClient(base_url=system.url, timeout=30) as client:
        answer = await client.get("/v1/usage", headers=auth(admin_key), params=params)
    assert answer.status_code == 400
    assert named in answer.json()["error"]["message"]


@pytest.fixture(scope="module")
def bootstrap_key(running: System) -> str:
    """The key ``soma up`` prints on a fresh data folder."""
    key = bootstrap_credentials(Settings(SOMA_DATA_DIR=running.env["SOMA_DATA_DIR"]))
    assert key is not None
    return key


async def test_the_bootstrap_key_creates_a_tenant_its_first_user_and_a_key_that_works(
    system: System, bootstrap_key: str
) -> None:
    boss = auth(bootstrap_key)
    async with httpx.AsyncClient(base_url=system.url, timeout=30) as client:
        tenant = await client.post("/v1/admin/tenants", headers=boss, json={"id": "newco"})
        assert tenant.status_code == 201, tenant.text
        user = await client.post(
            "/v1/admin/users",
            headers=boss,
            json={"name": "Ada Lovelace", "roles": ["admin"], "tenant": "newco"},
        )
        assert user.status_code == 201, user.text
        assert (user.json()["name"], user.json()["tenant"]) == ("Ada Lovelace", "newco")
        made = await client.post(
            "/v1/admin/keys",
            headers=boss,
            json={
                "user_id": user.json()["id"],
                "tenant": "newco",
                "max_budget": 5,
                "budget_duration": "30d",
                "metadata": {"team": "founders"},
            },
        )
        assert made.status_code == 201, made.text
        key = made.json()["key"]
        assert made.json()["tenant"] == "newco" and made.json()["max_budget"] == 5
        own = await client.get("/v1/admin/keys", headers=auth(key))
        assert own.status_code == 200, own.text
        assert [k["id"] for k in own.json()["data"]] == [key_id(key)]
        assert own.json()["data"][0]["metadata"] == {"team": "founders"}
        listed = await client.get("/v1/admin/users", headers=boss, params={"tenant": "newco"})
        assert [u["name"] for u in listed.json()["data"]] == ["Ada Lovelace"]


async def test_an_unknown_role_is_400_naming_the_known_roles(
    system: System, bootstrap_key: str
) -> None:
    async with httpx.AsyncClient(base_url=system.url, timeout=30) as client:
        answer = await client.post(
            "/v1/admin/users",
            headers=auth(bootstrap_key),
            json={"name": "Eve", "roles": ["superuser"]},
        )
    assert answer.status_code == 400
    assert (
        "unknown role 'superuser'; choose from operator, admin, service, member, user"
        in (answer.json()["error"]["message"])
    )


async def test_an_admin_naming_another_tenant_is_403(system: System, admin_key: str) -> None:
    async with httpx.AsyncClient(base_url=system.url, timeout=30) as client:
        answer = await client.get(
            "/v1/admin/keys", headers=auth(admin_key), params={"tenant": "newco"}
        )
    assert answer.status_code == 403
    assert "Only an operator acts in another tenant" in answer.json()["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/admin/tenants", {"id": "mallory-co"}),
        ("POST", "/v1/admin/users", {"name": "Mallory", "roles": ["admin"]}),
        ("POST", "/v1/admin/keys", {"user_id": "anyone"}),
        ("PATCH", "/v1/admin/keys/0000000000000000", {"max_budget": 1000}),
        ("DELETE", "/v1/admin/keys/0000000000000000", None),
    ],
)
async def test_a_member_key_is_refused_admin_commands_with_403(
    system: System, method: str, path: str, body: dict | None
) -> None:
    member = new_key(system.env, "--tenant", "acme", "--user", "mallory", "--role", "member")
    async with httpx.AsyncClient(base_url=system.url, timeout=30) as client:
        answer = await client.request(method, path, headers=auth(member), json=body)
    assert answer.status_code == 403, answer.text
    assert answer.json()["error"]["type"] == "permission_error"


def test_the_cli_refuses_an_unknown_role_naming_the_known_roles(running: System) -> None:
    refused = soma(
        running.env,
        "keys",
        "create",
        "--tenant",
        "cli-co",
        "--user",
        "Grace Hopper",
        "--role",
        "wizard",
    )
    assert refused.returncode == 2
    assert "unknown role 'wizard'; choose from operator, admin" in refused.stderr
    assert refused.stdout == ""


@pytest.mark.parametrize("who", ["member", "admin"])
async def test_invoking_a_tool_that_does_not_exist_is_404_whatever_the_policy_allows(
    system: System, admin_key: str, who: str
) -> None:
    key = (
        admin_key
        if who == "admin"
        else new_key(system.env, "--tenant", "acme", "--user", "lou", "--role", "member")
    )
    async with httpx.AsyncClient(base_url=system.url, timeout=30) as client:
        answer = await client.post(
            "/v1/tools/no_such_tool/invoke", headers=auth(key), json={"arguments": {}}
        )
    assert answer.status_code == 404, answer.text
    assert answer.json()["error"]["code"] == "tool_not_found"


async def test_a_tool_that_runs_out_of_time_reports_its_own_timeout_not_a_503(
    system: System, admin_key: str
) -> None:
    settings = Settings(NATS_URL=system.nats.url, SOMA_DATA_DIR=system.env["SOMA_DATA_DIR"])
    impatient = gateway_config(SOMA_BUS_TIMEOUT=FETCH_TIMEOUT / 2)
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        async with served(settings, impatient) as url:
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                answer = await client.post(
                    "/v1/tools/http_fetch/invoke",
                    headers=auth(admin_key),
                    json={"arguments": {"url": f"http://127.0.0.1:{port}/"}},
                )
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["ok"] is False
    assert f"did not answer within {FETCH_TIMEOUT} s" in result["error"], result
