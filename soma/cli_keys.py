"""``soma keys`` and ``soma token``: credentials made at the console, straight on the SQL store.

These act on the identity tables through the identity functions (``handlers.identity``), not over
the bus, so they work before anything runs — which is how an operator gets the first credential,
and how the ``operator`` role (which no tenant admin can grant over HTTP) is handed out. Secrets
are printed once on stdout and nothing else is, so ``KEY=$(soma keys create …)`` just works;
everything said to the operator goes to stderr.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from kernel.settings import Settings
from soma import terminal

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")

app = typer.Typer(
    help="""API keys: make, list and revoke them on the identity store directly.

An API key `sk-soma-<id>-<secret>` speaks for one user of one tenant, with that user's roles
(or fewer) and optionally only some models. Its secret is shown once, when it is made; the store
keeps a SHA-256 of it. `soma keys create` also creates the tenant and the user when they are
missing, so on a fresh installation it is the way in. Revoking a key also ends the token
sessions started from it.

Roles: `member` / `user` (call the API), `service` (also any user's memories), `agent` (a tool
role of the default policy), `admin` (also users, keys, budgets and usage of its tenant),
`operator` (tenants, and the users and keys of any tenant). Any other role is refused. Only the
console (or an operator) can grant `operator`.

A key may carry a budget (`--max-budget` USD per `--budget-duration`, resetting), its own
requests and tokens per minute (`--rpm`, `--tpm`) and labels (`--metadata`); `soma keys update`
changes them without a new key, `soma keys info` shows them with the spend so far.

**Examples**

    soma keys create                  # an admin key of the default tenant
    soma keys create -t acme -u alice -r member --models gpt-4o-mini --expires 30d
    soma keys create -t ops -u root -r operator -r admin --name bootstrap
    soma keys create -t acme -u bob --max-budget 10 --budget-duration 30d --rpm 60
    soma keys ls --tenant acme
    soma keys update 3f9a0c1d2e4b5a69 --max-budget 25 --clear rpm_limit
    soma keys info 3f9a0c1d2e4b5a69
    soma keys revoke 3f9a0c1d2e4b5a69
    export SOMA_API_KEY=$(soma keys create --tenant acme --user alice)

**Environment**

* `DATABASE_URL` — the identity store (default: the SQLite file under `SOMA_DATA_DIR`)
* `SOMA_DATA_DIR` — data folder for the SQLite default (default: the running `soma up`'s)
* `SOMA_JWT_*` — token lifetimes, which also bound how long revocations are kept
""",
    rich_markup_mode="markdown",
    no_args_is_help=True,
)

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DEFAULT_TENANT = "default"
ADMIN_USER = "admin"


def expiry(value: str | None, now: float) -> float | None:
    """``30d`` / ``12h`` / ``90m`` from now, or an ISO time (UTC unless it says otherwise)."""
    if not value:
        return None
    found = _DURATION.match(value)
    if found:
        return now + float(found.group(1)) * _UNITS[found.group(2)]
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        terminal.fail(
            f"--expires {value!r}: use a duration (30d, 12h, 90m, 2w) or an ISO time",
            terminal.USAGE,
        )
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def labels(pairs: list[str]) -> dict[str, str]:
    """``--metadata team=search`` pairs as a dict; anything else is a usage error."""
    found: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            terminal.fail(f"--metadata {pair!r}: use KEY=VALUE", terminal.USAGE)
        found[name] = value
    return found


def _time(ts: float | None, layout: str = "%Y-%m-%d %H:%M:%S UTC") -> str:
    return datetime.fromtimestamp(ts, UTC).strftime(layout) if ts else "-"


@asynccontextmanager
async def identity_store(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """The migrated store: every command may be the first thing run on a fresh installation."""
    from kernel.db import make_engine, migrate

    url = settings.resolved_database_url("identity")
    await migrate(url, "identity")
    engine = make_engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()


def _run(settings: Settings, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Run ``work`` on the store; identity refusals and an unreachable database are one line."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    from handlers.identity.errors import (
        AlreadyExists,
        Forbidden,
        IdentityError,
        InvalidInput,
    )
    from soma.supervisor import safe_url

    async def main() -> T:
        async with identity_store(settings) as engine:
            return await work(engine)

    try:
        return asyncio.run(main())
    except (InvalidInput, AlreadyExists, Forbidden) as exc:
        terminal.fail(str(exc), terminal.USAGE)
    except IdentityError as exc:
        terminal.fail(str(exc))
    except (OperationalError, DBAPIError, OSError) as exc:
        where = safe_url(settings.resolved_database_url("identity"))
        terminal.fail(f"the identity store at {where} did not answer: {exc}")


@app.command()
def create(
    tenant: str = typer.Option(DEFAULT_TENANT, "--tenant", "-t", help="The key's tenant."),
    user: str = typer.Option(
        ADMIN_USER, "--user", "-u", help="The user it speaks for, by name (or id)."
    ),
    roles: list[str] = typer.Option(
        [],
        "--role",
        "-r",
        help="A role of the key (repeat for more). Default: all of the user's roles. A missing "
        "user is created with these (default: admin for the user named admin, else member).",
        show_default=False,
    ),
    name: str = typer.Option("", "--name", "-n", help="A label shown in `soma keys ls`."),
    models: str = typer.Option(
        "",
        "--models",
        "-m",
        help="Comma-separated models it may call (default: all).",
        show_default=False,
    ),
    expires: str = typer.Option(
        "",
        "--expires",
        "-e",
        help="Lifetime (30d, 12h, 90m, 2w) or an ISO time (default: never).",
        show_default=False,
    ),
    max_budget: float | None = typer.Option(
        None,
        "--max-budget",
        help="US dollars the key may spend per budget window.",
        min=0,
        show_default=False,
    ),
    budget_duration: str | None = typer.Option(
        None,
        "--budget-duration",
        help="How often the budget resets (1h, 7d, 30d); default: never.",
        show_default=False,
    ),
    rpm: int | None = typer.Option(
        None,
        "--rpm",
        help="Requests per minute (default: SOMA_RATE_RPM).",
        min=1,
        show_default=False,
    ),
    tpm: int | None = typer.Option(
        None,
        "--tpm",
        help="Tokens per minute (default: SOMA_RATE_TPM).",
        min=1,
        show_default=False,
    ),
    metadata: list[str] = typer.Option(
        [],
        "--metadata",
        help="A label KEY=VALUE kept with the key (repeat for more).",
        show_default=False,
    ),
) -> None:
    """Make an API key and print it — only it — on stdout. It cannot be shown again.

    The tenant and the user are created when missing (said on stderr). With --role on an
    existing user the key carries only those roles, which the user must hold.

    **Examples**

        soma keys create
        soma keys create --tenant acme --user alice --role member --expires 30d
        soma keys create -t acme -u ci-bot -r service --models gpt-4o-mini,soma-local-dev
        soma keys create -t acme -u bob --max-budget 10 --budget-duration 30d --rpm 60
    """
    from handlers.identity.api_keys import KeyLimits, insert_api_key
    from handlers.identity.directory import (
        insert_tenant,
        insert_user,
        load_tenant,
        load_user,
        load_user_by_name,
    )

    now = time.time()
    until = expiry(expires, now)
    allowed = [m.strip() for m in models.split(",") if m.strip()] or None
    limits = KeyLimits(
        max_budget=max_budget,
        budget_duration=budget_duration,
        rpm_limit=rpm,
        tpm_limit=tpm,
        metadata=labels(metadata),
    )
    settings = terminal.settings()

    async def make(engine: AsyncEngine) -> str:
        async with engine.begin() as conn:
            if await load_tenant(conn, tenant) is None:
                await insert_tenant(conn, tenant, None, now)
                terminal.note(f"created tenant {tenant}")
            holder = await load_user_by_name(conn, tenant, user) or await load_user(
                conn, tenant, user
            )
            if holder is None:
                given = roles or (["admin"] if user == ADMIN_USER else ["member"])
                holder = await insert_user(conn, tenant, user, given, now)
                terminal.note(
                    f"created user {holder.name} ({holder.id}) in {tenant} with roles "
                    f"{', '.join(holder.roles) or '(none)'}"
                )
            issued = await insert_api_key(
                conn, tenant, holder.id, name, roles or None, allowed, until, now, limits
            )
        info = issued.info
        terminal.note(
            f"API key {info.id} for {holder.name} in {tenant}: roles {', '.join(info.roles)}; "
            f"models {', '.join(info.models) if info.models else 'all'}; "
            f"expires {_time(info.expires_at) if info.expires_at else 'never'}. "
            "Keep it now: it cannot be shown again."
        )
        return issued.key

    key = _run(settings, make)
    sys.stdout.write(key + "\n")


@app.command("ls")
def ls(
    tenant: str = typer.Option(
        "", "--tenant", "-t", help="Only this tenant (default: every tenant).", show_default=False
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    output: str = typer.Option("table", "--output", "-o", help="table or json (as --json)."),
) -> None:
    """List API keys (never a secret): id, tenant, user, name, roles, models, dates, state,
    budget and limits.

    **Examples**

        soma keys ls
        soma keys ls --tenant acme --json | jq -r 'select(.state == "active") | .id'
    """
    from handlers.identity.api_keys import list_api_keys
    from handlers.identity.directory import list_tenants, list_users

    async def collect(engine: AsyncEngine) -> list[dict[str, Any]]:
        tenants = [tenant] if tenant else [t.id for t in await list_tenants(engine)]
        found = []
        for tenant_id in tenants:
            names = {u.id: u.name for u in await list_users(engine, tenant_id)}
            for key in await list_api_keys(engine, tenant_id):
                found.append(
                    {
                        "id": key.id,
                        "tenant": key.tenant,
                        "user": key.user,
                        "user_name": names.get(key.user, ""),
                        "name": key.name,
                        "roles": list(key.roles),
                        "models": None if key.models is None else list(key.models),
                        "created_at": key.created_at,
                        "expires_at": key.expires_at,
                        "revoked_at": key.revoked_at,
                        "state": _state(key.revoked_at, key.expires_at),
                        "max_budget": None if key.budget is None else key.budget.max_budget,
                        "budget_duration": None
                        if key.budget is None
                        else key.budget.budget_duration,
                        "rpm_limit": key.rpm_limit,
                        "tpm_limit": key.tpm_limit,
                        "metadata": dict(key.metadata),
                    }
                )
        return found

    if output not in ("table", "json"):
        terminal.fail(f"-o {output!r}: choose from table, json", terminal.USAGE)
    keys = _run(terminal.settings(), collect)
    if as_json or output == "json":
        for key in keys:
            sys.stdout.write(json.dumps(key) + "\n")
        return
    if not keys:
        terminal.note("no API keys" + (f" in tenant {tenant}" if tenant else ""))
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in (
        "id",
        "tenant",
        "user",
        "name",
        "roles",
        "models",
        "created",
        "expires",
        "state",
    ):
        table.add_column(column, no_wrap=column == "id", overflow="fold")
    for key in keys:
        table.add_row(
            key["id"],
            key["tenant"],
            key["user_name"] or key["user"],
            key["name"] or "-",
            ", ".join(key["roles"]),
            ", ".join(key["models"]) if key["models"] else "all",
            _time(key["created_at"], "%Y-%m-%d %H:%M"),
            _time(key["expires_at"], "%Y-%m-%d %H:%M"),
            key["state"],
        )
    terminal.out.print(table)


CLEARABLE = (
    "name",
    "models",
    "expires_at",
    "max_budget",
    "budget_duration",
    "rpm_limit",
    "tpm_limit",
    "metadata",
)


def _key_id(key_id: str) -> str:
    from handlers.identity.api_keys import KEY

    whole = KEY.fullmatch(key_id)
    return whole.group(1) if whole is not None else key_id


def _key_json(key: Any, spend: float | None, resets_at: float | None) -> dict[str, Any]:
    budget = key.budget
    return {
        "id": key.id,
        "tenant": key.tenant,
        "user": key.user,
        "name": key.name,
        "roles": list(key.roles),
        "models": None if key.models is None else list(key.models),
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
        "state": _state(key.revoked_at, key.expires_at),
        "max_budget": None if budget is None else budget.max_budget,
        "budget_duration": None if budget is None else budget.budget_duration,
        "budget_reset_at": resets_at,
        "spend": spend,
        "rpm_limit": key.rpm_limit,
        "tpm_limit": key.tpm_limit,
        "metadata": dict(key.metadata),
    }


def _print_key(info: dict[str, Any]) -> None:
    for field, value in info.items():
        if field.endswith("_at") and isinstance(value, float):
            value = _time(value)
        elif isinstance(value, list | dict):
            value = json.dumps(value)
        elif value is None:
            value = "-"
        terminal.out.print(f"{field:<16} {value}")


@app.command()
def update(
    key_id: str = typer.Argument(..., help="The key's id (or the whole key).", show_default=False),
    name: str | None = typer.Option(None, "--name", "-n", help="A new label.", show_default=False),
    models: str | None = typer.Option(
        None, "--models", "-m", help="Comma-separated models it may call.", show_default=False
    ),
    expires: str | None = typer.Option(
        None,
        "--expires",
        "-e",
        help="Lifetime from now (30d) or an ISO time.",
        show_default=False,
    ),
    max_budget: float | None = typer.Option(
        None, "--max-budget", help="US dollars per budget window.", min=0, show_default=False
    ),
    budget_duration: str | None = typer.Option(
        None,
        "--budget-duration",
        help="How often the budget resets (1h, 7d, 30d).",
        show_default=False,
    ),
    rpm: int | None = typer.Option(
        None, "--rpm", help="Requests per minute.", min=1, show_default=False
    ),
    tpm: int | None = typer.Option(
        None, "--tpm", help="Tokens per minute.", min=1, show_default=False
    ),
    metadata: list[str] = typer.Option(
        [],
        "--metadata",
        help="Labels KEY=VALUE, replacing the key's (repeat for more).",
        show_default=False,
    ),
    clear: list[str] = typer.Option(
        [],
        "--clear",
        help=f"Remove a limit (repeat for more): {', '.join(CLEARABLE)}.",
        show_default=False,
    ),
) -> None:
    """Change a key's budget, limits, models, expiry or labels in place; the key stays valid.

    A budget whose amount or duration changes starts a new window now. Gateways apply the new
    limits within their key cache time (`SOMA_API_KEY_CACHE_SECONDS`).

    **Examples**

        soma keys update 3f9a0c1d2e4b5a69 --max-budget 25 --budget-duration 7d
        soma keys update 3f9a0c1d2e4b5a69 --rpm 120 --clear tpm_limit
    """
    from handlers.identity.api_keys import find_api_key, update_api_key
    from handlers.identity.errors import NotFound

    unknown = [c for c in clear if c not in CLEARABLE]
    if unknown:
        terminal.fail(
            f"--clear {', '.join(unknown)}: choose from {', '.join(CLEARABLE)}", terminal.USAGE
        )
    now = time.time()
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = name
    if models is not None:
        changes["models"] = [m.strip() for m in models.split(",") if m.strip()]
    if expires is not None:
        changes["expires_at"] = expiry(expires, now)
    for field, value in (
        ("max_budget", max_budget),
        ("budget_duration", budget_duration),
        ("rpm_limit", rpm),
        ("tpm_limit", tpm),
    ):
        if value is not None:
            changes[field] = value
    if metadata:
        changes["metadata"] = labels(metadata)
    if not changes and not clear:
        terminal.fail("nothing to change: give an option (see --help)", terminal.USAGE)
    key_id = _key_id(key_id)

    async def change(engine: AsyncEngine) -> Any:
        found = await find_api_key(engine, key_id)
        if found is None:
            raise NotFound(f"no API key {key_id!r}; `soma keys ls` lists them")
        return await update_api_key(engine, found.tenant, key_id, changes, clear, now)

    updated = _run(terminal.settings(), change)
    _print_key(_key_json(updated, None, None))


@app.command()
def info(
    key_id: str = typer.Argument(..., help="The key's id (or the whole key).", show_default=False),
    as_json: bool = typer.Option(False, "--json", "-o", help="One JSON object."),
) -> None:
    """A key's limits and its spend in the current budget window (without a budget: all of it).

    Spend is what the analytics process counted from the usage events, in whole UTC days: the
    gateway enforces the budget to the minute from the events themselves.

    **Example**

        soma keys info 3f9a0c1d2e4b5a69 --json | jq .spend
    """
    from handlers.identity.api_keys import find_api_key
    from handlers.identity.errors import NotFound
    from schemas.durations import budget_window

    key_id = _key_id(key_id)
    settings = terminal.settings()

    async def look(engine: AsyncEngine) -> Any:
        found = await find_api_key(engine, key_id)
        if found is None:
            raise NotFound(f"no API key {key_id!r}; `soma keys ls` lists them")
        return found

    key = _run(settings, look)
    start, resets_at = (
        budget_window(key.budget.budget_start, key.budget.budget_duration, time.time())
        if key.budget is not None
        else (None, None)
    )
    url = settings.resolved_database_url("analytics")
    if url.startswith("sqlite") and not Path(url.split(":///", 1)[1]).exists():
        terminal.note("no spend: the analytics process has not counted usage here yet")
        spend = None
    else:
        spend = asyncio.run(_analytics_spend(settings, key.tenant, key.id, start))
    out = _key_json(key, spend, resets_at)
    if as_json:
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        _print_key(out)


async def _analytics_spend(
    settings: Settings, tenant: str, key_id: str, since: float | None
) -> float | None:
    """What analytics counted for the key; None (said on stderr) where it has counted nothing
    yet — this command never creates the analytics store."""
    from sqlalchemy.exc import DBAPIError

    from handlers.analytics.report import report
    from kernel.db import make_engine

    url = settings.resolved_database_url("analytics")
    engine = make_engine(url)
    try:
        rows = await report(engine, tenant, since, None, ["key"])
    except DBAPIError:
        terminal.note("no spend: the analytics process has not counted usage here yet")
        return None
    finally:
        await engine.dispose()
    return sum(r.cost_usd for r in rows if r.group.get("key") == key_id)


def _state(revoked_at: float | None, expires_at: float | None) -> str:
    if revoked_at is not None:
        return "revoked"
    if expires_at is not None and expires_at <= time.time():
        return "expired"
    return "active"


@app.command()
def revoke(
    key_id: str = typer.Argument(
        ...,
        help="The key's id: the 16 hex digits after sk-soma- (see `soma keys ls`).",
        show_default=False,
    ),
) -> None:
    """Revoke an API key, and end the token sessions started from it.

    Takes effect at once for the key (gateways cache a verdict for a few seconds) and, for
    access tokens issued from it, within the gateways' revocation poll. Revoking twice keeps
    the first revocation time.

    **Example**

        soma keys revoke 3f9a0c1d2e4b5a69
    """
    from handlers.identity.api_keys import KEY, find_api_key, revoke_api_key
    from handlers.identity.config import IdentitySettings
    from handlers.identity.errors import NotFound

    whole = KEY.fullmatch(key_id)
    if whole is not None:  # a whole key pasted: only its id is needed
        key_id = whole.group(1)

    async def withdraw(engine: AsyncEngine) -> tuple[bool, Any]:
        found = await find_api_key(engine, key_id)
        if found is None:
            raise NotFound(f"no API key {key_id!r}; `soma keys ls` lists them")
        info = await revoke_api_key(engine, found.tenant, key_id, IdentitySettings())
        return found.revoked_at is None, info

    now_revoked, info = _run(terminal.settings(), withdraw)
    if now_revoked:
        terminal.out.print(f"revoked API key {info.id} of tenant {info.tenant}")
    else:
        terminal.out.print(f"API key {info.id} was already revoked at {_time(info.revoked_at)}")


def token(
    key: str = typer.Option(
        "",
        "--key",
        "-k",
        envvar="SOMA_API_KEY",
        help="The API key (sk-soma-…); `-` reads it from stdin. Default: $SOMA_API_KEY.",
        show_default=False,
    ),
    scope: list[str] = typer.Option(
        [],
        "--scope",
        "-s",
        help="An API area the token may reach (repeat for more; default: all the roles allow).",
        show_default=False,
    ),
) -> None:
    """Print an access token (a signed JWT) for an API key, and nothing else, on stdout.

    The token speaks for the key's user with the key's roles and models, for `SOMA_JWT_TTL_SECONDS`
    (15 minutes by default), and is revoked with the key. It is signed on the identity store
    directly, so it works whenever the store is reachable. Prefer `--key -` or `SOMA_API_KEY`
    to putting the key on the command line, where other users of the machine can see it.

    **Examples**

        soma token --key sk-soma-3f9a0c1d2e4b5a69-…
        curl -H "Authorization: Bearer $(soma token)" localhost:8080/v1/models
        soma keys create --tenant acme --user alice | soma token --key - --scope chat

    **Environment**

    * `SOMA_API_KEY` — the key, when --key is not given
    * `DATABASE_URL`, `SOMA_DATA_DIR` — the identity store
    * `SOMA_JWT_*` — issuer, audience, lifetime, and `SOMA_JWT_KEY_PASSPHRASE` when the signing
      keys are stored encrypted (it must be the identity process's own)
    """
    from handlers.identity.api_keys import verify_api_key
    from handlers.identity.config import IdentitySettings
    from handlers.identity.errors import InvalidApiKey, InvalidInput
    from handlers.identity.signing_keys import active_signing_key, ensure_signing_keys
    from handlers.identity.tokens import check_scope, issue_tokens

    if key == "-":
        key = sys.stdin.readline().strip()
    if not key:
        terminal.fail(
            "give the API key with --key (or - for stdin) or SOMA_API_KEY", terminal.USAGE
        )
    try:
        areas = check_scope(scope)
    except InvalidInput as exc:
        terminal.fail(str(exc), terminal.USAGE)
    config = IdentitySettings()

    async def sign(engine: AsyncEngine) -> str:
        try:
            principal = await verify_api_key(engine, key)
        except InvalidApiKey as exc:
            terminal.fail(f"the API key was not accepted: {exc}")
        await ensure_signing_keys(engine, config)
        try:
            async with engine.connect() as conn:
                await active_signing_key(conn, config)
        except (TypeError, ValueError) as exc:
            terminal.fail(
                "cannot open the signing key; set SOMA_JWT_KEY_PASSPHRASE to the identity "
                f"process's passphrase ({exc})"
            )
        # A session of its own, with a refresh token nobody holds: revoking the key ends it.
        unheld = hashlib.sha256(secrets.token_bytes(32)).hexdigest()
        issued = await issue_tokens(
            engine, config, principal, unheld, client_id="soma-cli", scope=" ".join(areas)
        )
        return issued.access_token

    sys.stdout.write(_run(terminal.settings(), sign) + "\n")


def bootstrap_credentials(settings: Settings) -> str | None:
    """The first admin API key when this call created it (a fresh store), else None.

    Creates what is missing of the ``default`` tenant and its ``admin`` user; the key exists
    only in the returned string, so the caller must show it. Runs its own event loop.
    """
    from handlers.identity.bootstrap import bootstrap

    async def first_key(engine: AsyncEngine) -> str | None:
        _, _, issued = await bootstrap(engine)
        return issued.key if issued is not None else None

    return _run(settings, first_key)
