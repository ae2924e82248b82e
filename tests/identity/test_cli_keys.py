"""``soma keys`` and ``soma token`` on a fresh store per test (SQLite; one run on PostgreSQL).

The commands are mounted the way ``soma/cli.py`` mounts them, and run through Typer's runner
with stdout and stderr apart: a key or a token is the only thing on stdout.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from handlers.identity.api_keys import KEY, verify_api_key
from handlers.identity.config import IdentitySettings
from handlers.identity.directory import create_tenant, create_user
from handlers.identity.errors import RevokedApiKey
from handlers.identity.principal import Principal
from handlers.identity.signing_keys import jwks
from handlers.identity.verify import Verifier
from kernel.db import make_engine
from kernel.settings import Settings
from soma import cli_keys
from tests.servers import postgres_database

soma = typer.Typer()
soma.add_typer(cli_keys.app, name="keys")
soma.command("token")(cli_keys.token)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A fresh SQLite store under its own data folder, nothing inherited that points elsewhere."""
    return {"SOMA_DATA_DIR": str(tmp_path), "DATABASE_URL": "", "SOMA_API_KEY": ""}


@pytest.fixture
def postgres_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    with postgres_database() as url:
        yield {"SOMA_DATA_DIR": str(tmp_path), "DATABASE_URL": url, "SOMA_API_KEY": ""}


def soma_cli(env: dict[str, str], *args: str, stdin: str | None = None) -> Any:
    return CliRunner().invoke(soma, list(args), env=env, input=stdin)


def store_url(env: dict[str, str]) -> str:
    return Settings.model_validate(env).resolved_database_url("identity")


def on_store(env: dict[str, str], work: Any) -> Any:
    async def run() -> Any:
        engine = make_engine(store_url(env))
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def principal_of(env: dict[str, str], key: str) -> Principal:
    return on_store(env, lambda engine: verify_api_key(engine, key))


def key_id_of(key: str) -> str:
    match = KEY.fullmatch(key)
    assert match is not None, key
    return match.group(1)


def created_key(env: dict[str, str], *args: str) -> str:
    result = soma_cli(env, "keys", "create", *args)
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


def test_keys_create_prints_only_a_new_key_that_verifies(env):
    result = soma_cli(
        env, "keys", "create", "--tenant", "acme", "--user", "alice", "--role", "member",
        "--models", "gpt-4o-mini, soma-local-dev", "--expires", "30d",
    )  # fmt: skip

    assert result.exit_code == 0, result.stderr
    key = result.stdout.removesuffix("\n")
    assert KEY.fullmatch(key), result.stdout
    principal = principal_of(env, key)
    assert (principal.tenant, principal.roles) == ("acme", ("member",))
    assert principal.models == ("gpt-4o-mini", "soma-local-dev")
    assert "created tenant acme" in result.stderr
    assert "created user alice" in result.stderr


def test_keys_create_without_options_makes_an_admin_key_of_the_default_tenant(env):
    principal = principal_of(env, created_key(env))

    assert (principal.tenant, principal.roles) == ("default", ("admin",))


def test_a_key_for_an_existing_user_may_narrow_its_roles(env):
    first = principal_of(
        env, created_key(env, "-t", "acme", "-u", "bob", "-r", "admin", "-r", "member")
    )

    narrow = principal_of(env, created_key(env, "-t", "acme", "-u", "bob", "-r", "member"))

    assert narrow.user == first.user
    assert (first.roles, narrow.roles) == (("admin", "member"), ("member",))


def test_a_role_the_user_lacks_is_refused_and_prints_no_key(env):
    created_key(env, "--tenant", "acme", "--user", "carol", "--role", "member")

    result = soma_cli(env, "keys", "create", "-t", "acme", "-u", "carol", "-r", "operator")

    assert result.exit_code == 2
    assert result.stdout == ""
    assert "operator" in result.stderr


def test_a_bad_expiry_is_a_usage_error(env):
    result = soma_cli(env, "keys", "create", "--expires", "soon")

    assert result.exit_code == 2
    assert result.stdout == ""


def test_keys_ls_lists_every_tenants_keys_without_secrets(env):
    acme = created_key(env, "--tenant", "acme", "--user", "alice", "--name", "laptop")
    globex = created_key(env, "--tenant", "globex", "--user", "mallory")

    everything = soma_cli(env, "keys", "ls", "--json")
    only_acme = soma_cli(env, "keys", "ls", "--tenant", "acme", "--json")

    rows = [json.loads(line) for line in everything.stdout.splitlines()]
    assert sorted((r["tenant"], r["user_name"], r["state"]) for r in rows) == [
        ("acme", "alice", "active"),
        ("globex", "mallory", "active"),
    ]
    assert [json.loads(line)["name"] for line in only_acme.stdout.splitlines()] == ["laptop"]
    for key in (acme, globex):
        assert key.split("-", 3)[-1] not in everything.stdout  # sk-soma-<id>-<secret>


def test_keys_revoke_withdraws_the_key_and_keeps_the_first_time(env):
    key = created_key(env, "--tenant", "acme", "--user", "alice")
    key_id = key_id_of(key)

    first = soma_cli(env, "keys", "revoke", key_id)
    again = soma_cli(env, "keys", "revoke", key_id)

    assert first.exit_code == 0 and f"revoked API key {key_id}" in first.stdout
    assert again.exit_code == 0 and "already revoked" in again.stdout
    with pytest.raises(RevokedApiKey):
        principal_of(env, key)


def test_revoking_an_unknown_key_fails(env):
    result = soma_cli(env, "keys", "revoke", "0123456789abcdef")

    assert result.exit_code == 1
    assert "no API key" in result.stderr


def verifier_for(env: dict[str, str]) -> Verifier:
    config = IdentitySettings()
    return Verifier(
        issuer=config.issuer, audience=config.audience, jwks=on_store(env, lambda e: jwks(e))
    )


def test_token_prints_only_an_access_token_that_verifies(env):
    key = created_key(env, "--tenant", "acme", "--user", "alice", "--role", "member")

    result = soma_cli(env, "token", "--key", key, "--scope", "chat")

    assert result.exit_code == 0, result.stderr
    access_token = result.stdout.removesuffix("\n")
    assert "\n" not in access_token
    principal = verifier_for(env).verify(access_token)
    assert (principal.tenant, principal.roles, principal.scope) == ("acme", ("member",), ("chat",))
    assert principal.key_id == key_id_of(key)
    assert principal.session is not None  # so revoking the key revokes the token too


def test_token_reads_the_key_from_stdin_or_the_environment(env):
    key = created_key(env, "--tenant", "acme", "--user", "alice")

    piped = soma_cli(env, "token", "--key", "-", stdin=key + "\n")
    from_env = soma_cli({**env, "SOMA_API_KEY": key}, "token")

    for result in (piped, from_env):
        assert result.exit_code == 0, result.stderr
        assert verifier_for(env).verify(result.stdout.strip()).tenant == "acme"


def test_token_for_a_revoked_key_is_refused(env):
    key = created_key(env, "--tenant", "acme", "--user", "alice")
    soma_cli(env, "keys", "revoke", key_id_of(key))

    result = soma_cli(env, "token", "--key", key)

    assert result.exit_code == 1
    assert result.stdout == ""
    assert "not accepted" in result.stderr


def test_bootstrap_credentials_returns_the_first_admin_key_once(env):
    settings = Settings.model_validate(env)

    first = cli_keys.bootstrap_credentials(settings)
    second = cli_keys.bootstrap_credentials(settings)

    assert first is not None and second is None
    principal = principal_of(env, first)
    assert (principal.tenant, principal.roles) == ("default", ("admin", "operator"))


def test_bootstrap_credentials_leave_an_existing_installation_alone(env):
    async def existing(engine: Any) -> None:
        from kernel.db import migrate

        await migrate(store_url(env), "identity")
        await create_tenant(engine, "default", now=time.time())
        await create_user(engine, "default", "admin", ["admin"])

    on_store(env, existing)

    assert cli_keys.bootstrap_credentials(Settings.model_validate(env)) is None


def test_keys_and_tokens_work_on_postgresql(postgres_env):
    key = created_key(postgres_env, "--tenant", "acme", "--user", "alice")

    result = soma_cli(postgres_env, "token", "--key", key)

    assert result.exit_code == 0, result.stderr
    assert verifier_for(postgres_env).verify(result.stdout.strip()).tenant == "acme"


def test_keys_ls_output_json_shows_each_keys_budget_and_limits(env):
    key = created_key(
        env,
        "--tenant",
        "acme",
        "--user",
        "bob",
        "--max-budget",
        "12.5",
        "--budget-duration",
        "7d",
        "--rpm",
        "30",
        "--metadata",
        "team=ops",
    )

    listed = soma_cli(env, "keys", "ls", "--tenant", "acme", "-o", "json")

    assert listed.exit_code == 0, listed.stderr
    (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert row["id"] == key_id_of(key)
    assert (row["max_budget"], row["budget_duration"], row["rpm_limit"], row["tpm_limit"]) == (
        12.5,
        "7d",
        30,
        None,
    )
    assert row["metadata"] == {"team": "ops"}


def test_keys_update_changes_limits_in_place_and_the_key_still_verifies(env):
    key = created_key(env, "--tenant", "acme", "--user", "carol", "--max-budget", "1")

    changed = soma_cli(
        env,
        "keys",
        "update",
        key_id_of(key),
        "--max-budget",
        "5",
        "--tpm",
        "1000",
        "--clear",
        "budget_duration",
    )

    assert changed.exit_code == 0, changed.stderr
    assert "max_budget       5.0" in changed.stdout
    assert principal_of(env, key).tenant == "acme"


def test_keys_info_before_analytics_ran_shows_limits_and_no_spend_and_creates_nothing(env):
    key = created_key(
        env, "--tenant", "acme", "--user", "dan", "--max-budget", "3", "--budget-duration", "1d"
    )

    shown = soma_cli(env, "keys", "info", key_id_of(key), "--json")

    assert shown.exit_code == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert (info["max_budget"], info["budget_duration"], info["spend"]) == (3.0, "1d", None)
    assert info["budget_reset_at"] is not None
    assert "has not counted usage here yet" in shown.stderr
    assert not (Path(env["SOMA_DATA_DIR"]) / "analytics.db").exists()
