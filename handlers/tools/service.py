"""The tools process: run a named tool once per call id and answer with its result, and list
the registry (``tools.list``) without the tools the tenant's policy never lets a role call.

Every call is authorized here, where the tool runs, by the tenant's tool allow-list for the role
the command carries (``kernel.grants``, the very grants policy judges by): whatever a saga did or
skipped before, and whoever published the command, a role the allow-list does not name for the
tool — or no role at all — gets a refusal naming the rule, and nothing runs. Refusals are not
recorded as calls: nothing ran, and the same command is refused the same way again.

Composition root: the registry (built-in tools, adapters whose secrets are set, the tools of
configured MCP servers), the HTTP client and the SQL engine are opened at startup, not in
``build``, so building the service to inspect its routes starts no MCP server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import httpx
from opentelemetry.trace import StatusCode

from bus import tracing
from bus.errors import Conflict, Invalid
from bus.service import Clock, Connected, Service
from handlers.tools import builtin, fetch, github, slack
from handlers.tools.calls import CallIdTaken, invoke_once
from handlers.tools.config import ToolsConfig
from handlers.tools.mcp_servers import Connection, connect_all
from handlers.tools.registry import Registry
from handlers.tools.sandbox import SandboxUnavailable, isolation_for
from kernel.constitution import load_trust, trust_file
from kernel.db import make_engine, migrate
from kernel.grants import (
    POLICY_ERROR,
    TOOL_NOT_ALLOWED,
    GrantStore,
    InvalidTenant,
    PolicyError,
    policy_dir,
)
from kernel.settings import Settings
from schemas.envelope import Envelope
from schemas.tools import ToolDescriptor, ToolInvoke, ToolResult, ToolsList, ToolsListed

log = logging.getLogger(__name__)


def local_registry(config: ToolsConfig, client: httpx.AsyncClient) -> Registry:
    """Built-in tools and the adapters whose secrets are set; the others listed with the reason."""
    registry = Registry()
    registry.add(builtin.calculator())
    registry.add(builtin.current_time())

    try:
        isolation = isolation_for(config.python_executable, config.sandbox_user, config.bwrap)
    except SandboxUnavailable as exc:
        registry.mark_unavailable("python", str(exc))
    else:
        registry.add(builtin.python(config.python_limits(), isolation))

    hosts = config.allowed_hosts()
    if hosts:
        registry.add(fetch.http_fetch(client, hosts, config.http_max_bytes, config.http_timeout))
    else:
        registry.mark_unavailable("http_fetch", "no host is allowed: set SOMA_TOOLS_HTTP_ALLOW")

    if config.github_token:
        for tool in github.tools(client, config.github_base_url, config.github_token):
            registry.add(tool)
    else:
        for name in github.TOOL_NAMES:
            registry.mark_unavailable(name, f"{github.TOKEN_SETTING} is not set")

    if config.slack_token:
        for tool in slack.tools(client, config.slack_base_url, config.slack_token):
            registry.add(tool)
    else:
        for name in slack.TOOL_NAMES:
            registry.mark_unavailable(name, f"{slack.TOKEN_SETTING} is not set")
    return registry


def refusal(grants: GrantStore, tenant: str, cmd: ToolInvoke) -> ToolResult | None:
    """The refusal of a call the tenant's allow-list does not grant the caller's role, else None.

    A tenant policy that does not load grants nothing: the call is refused with the reason.
    """

    def refused(rule: str, reason: str) -> ToolResult:
        log.warning("refused %s for tenant %s, role %r: %s", cmd.name, tenant, cmd.role, reason)
        return ToolResult(
            call_id=cmd.call_id,
            name=cmd.name,
            ok=False,
            error=f"refused by policy ({rule}): {reason}",
            refused_by=rule,
        )

    try:
        allows = grants.get(tenant).tools.allows
    except InvalidTenant as exc:
        raise Invalid(f"{exc}") from exc
    except PolicyError as exc:
        return refused(POLICY_ERROR, f"the tenant's policy could not be loaded: {exc}")
    if not cmd.role:
        return refused(TOOL_NOT_ALLOWED, f"a call of {cmd.name!r} must carry the caller's role")
    if not allows(cmd.role, cmd.name):
        return refused(TOOL_NOT_ALLOWED, f"role {cmd.role!r} may not call tool {cmd.name!r}")
    return None


def listing(registry: Registry, rules: GrantStore, tenant: str, role: str | None) -> ToolsListed:
    """Every callable tool, or for a ``role`` those its tenant's tool allow-list lets it call.

    A tenant policy that does not load hides nothing here: the calls are refused by policy with
    the reason, which says more than a tool list gone empty.
    """
    allows = None
    if role is not None:
        try:
            allows = rules.get(tenant).tools.allows
        except (InvalidTenant, PolicyError) as exc:
            log.warning("listing every tool for tenant %s: its policy is unusable: %s", tenant, exc)
    return ToolsListed(
        tools=[
            ToolDescriptor(name=t.name, description=t.description, input_schema=t.input_schema)
            for name, t in sorted(registry.tools.items())
            if allows is None or allows(role or "", name)
        ]
    )


@dataclass
class _Opened:
    """The registry and what it holds open: the HTTP client, MCP servers' connections."""

    registry: Registry | None = None
    client: httpx.AsyncClient | None = None
    connections: list[Connection] = field(default_factory=list)
    clock: Clock = time.time  # the runtime's, once the startup hook has it

    def require(self) -> Registry:
        if self.registry is None:
            raise RuntimeError("tools service used before its startup hooks ran")
        return self.registry


def build(settings: Settings, config: ToolsConfig | None = None) -> Service:
    config = config or ToolsConfig()
    opened = _Opened()
    grants = GrantStore(policy_dir(settings), trust=load_trust(trust_file(settings)))
    database_url = settings.resolved_database_url("tools")
    engine = make_engine(database_url)  # connects on first use, after the migration

    async def start(bus: Connected) -> None:
        opened.clock = bus.clock
        await migrate(database_url, "tools")
        opened.client = httpx.AsyncClient(headers={"User-Agent": "soma-agent-hub"})
        # Probing the sandbox starts short-lived processes; keep the loop free meanwhile.
        registry = await asyncio.to_thread(local_registry, config, opened.client)
        opened.connections = await connect_all(registry, config.mcp_servers)
        opened.registry = registry

    async def stop() -> None:
        while opened.connections:
            await opened.connections.pop().close()
        if opened.client is not None:
            await opened.client.aclose()
            opened.client = None
        await engine.dispose()
        opened.registry = None

    async def invoke(cmd: ToolInvoke, env: Envelope) -> ToolResult:
        registry = opened.require()
        refused = refusal(grants, env.tenant, cmd)
        if refused is not None:
            return refused
        attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": cmd.name,
            "gen_ai.tool.call.id": cmd.call_id,
        }
        with tracing.span(f"execute_tool {cmd.name}", attributes) as span:
            try:
                result = await invoke_once(
                    engine, registry, env.tenant, cmd, wait=config.call_wait, clock=opened.clock
                )
            except CallIdTaken as exc:
                raise Conflict(f"{exc}") from None
            if span is not None and not result.ok:
                span.set_status(StatusCode.ERROR, result.error or "the tool failed")
            return result

    async def list_tools(cmd: ToolsList, env: Envelope) -> ToolsListed:
        registry = opened.require()
        return listing(registry, grants, env.tenant, cmd.role)

    return Service(
        name="tools",
        routes={ToolInvoke: invoke, ToolsList: list_tools},
        startup=[start],
        shutdown=[stop],
    )
