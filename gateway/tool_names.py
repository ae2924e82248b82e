"""Registry tools named by name in a task's or a run's body, turned into their full specs.

Why: a caller who wants the platform's calculator writes ``"calculator"`` rather than copying
its JSON Schema, while a saga's input keeps full specs (the description and parameters the model
is shown), so the saga never has to look anything up. The gateway asks the tools process for
its registry (``tools.list`` over the bus, as ``GET /v1/tools`` does) before the saga starts, and
an unknown name is refused then — a 404 naming it and the tools the registry holds — instead of
a task that silently runs without it.

- A task: a name in ``tools`` or ``platform_tools`` becomes a platform tool (the task runs it,
  each call judged by policy for the caller's role); a full spec in ``tools`` stays the
  caller's own (the model may call it, the task does not run it).
- A run: a name in ``platform_tools`` is resolved the same way, and each agent's ``tools``
  (names or glob patterns) must match a platform tool given or one of the registry; the
  registry's matches join ``platform_tools``, so ``tools: [calculator]`` on an agent is enough.

``task_tools`` and ``run_tools`` take the registry as a function, asked only when a name needs
it, so whatever else starts these sagas (the CLI, over its own bus connection) can resolve names
the same way; ``task_input`` and ``run_input`` are the gateway's, with the 404.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from gateway.auth import Principal
from gateway.dispatch import Dispatch
from gateway.errors import ApiError, not_found
from schemas.tools import ToolDescriptor, ToolsList, ToolsListed

# Every registered tool by name, asked of the tools process when needed.
Registry = Callable[[], Awaitable[Mapping[str, ToolDescriptor]]]


class UnknownTool(LookupError):
    """A tool named (or a pattern) that matches nothing in the registry; ``param`` says where."""

    def __init__(self, name: str, param: str, known: list[str]) -> None:
        self.name, self.param, self.known = name, param, known
        super().__init__(
            f"No tool named '{name}' in the registry; it holds: {', '.join(known) or 'none'}. "
            'Name one of them, or give a full spec ({"name", "description", "parameters"}) for '
            "a tool of your own."
        )


def _unknown(registry: Mapping[str, ToolDescriptor], name: str, param: str) -> UnknownTool:
    return UnknownTool(name, param, sorted(registry))


def _spec(tool: ToolDescriptor) -> dict[str, Any]:
    return {"name": tool.name, "description": tool.description, "parameters": tool.input_schema}


def _names(items: Any) -> list[tuple[int, str]]:
    if not isinstance(items, list):
        return []
    return [(i, t) for i, t in enumerate(items) if isinstance(t, str)]


def _joined(given: list[Any], added: list[dict[str, Any]]) -> list[Any]:
    """``given`` full specs, then each of ``added`` whose name is not among them yet."""
    seen = {t.get("name") for t in given if isinstance(t, dict)}
    out = list(given)
    for spec in added:
        if spec["name"] not in seen:
            seen.add(spec["name"])
            out.append(spec)
    return out


async def task_tools(raw: dict[str, Any], registry: Registry) -> dict[str, Any]:
    """A task's input with every tool named by name replaced by the registry's full spec."""
    named = {field: _names(raw.get(field)) for field in ("tools", "platform_tools")}
    if not any(named.values()):
        return raw
    tools = await registry()
    for field, names in named.items():
        for index, name in names:
            if name not in tools:
                raise _unknown(tools, name, f"input.{field}[{index}]")
    resolved = [_spec(tools[n]) for names in named.values() for _, n in names]
    out = dict(raw)
    if named["tools"]:
        out["tools"] = [t for t in raw["tools"] if not isinstance(t, str)]
    platform = raw.get("platform_tools")
    given = [t for t in platform if not isinstance(t, str)] if isinstance(platform, list) else []
    out["platform_tools"] = _joined(given, resolved)
    return out


def _patterns(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, pattern) of every entry of every agent's tool list."""
    agents = raw.get("agents")
    found: list[tuple[str, str]] = []
    for a, agent in enumerate(agents if isinstance(agents, list) else []):
        tools = agent.get("tools") if isinstance(agent, dict) else None
        found.extend((f"agents[{a}].tools[{i}]", p) for i, p in _names(tools))
    return found


async def run_tools(raw: dict[str, Any], registry: Registry) -> dict[str, Any]:
    """A run definition whose platform tools hold the full spec of every tool named, in
    ``platform_tools`` or by an agent."""
    platform = raw.get("platform_tools")
    given = [t for t in platform if not isinstance(t, str)] if isinstance(platform, list) else []
    given_names = {t.get("name") for t in given if isinstance(t, dict)}
    wanted = [
        (param, pattern)
        for param, pattern in _patterns(raw)
        if not any(fnmatch.fnmatchcase(str(n), pattern) for n in given_names)
    ]
    named = [(f"platform_tools[{i}]", n) for i, n in _names(platform)]
    if not wanted and not named:
        return raw
    tools = await registry()
    added: list[dict[str, Any]] = []
    for param, name in named:
        if name not in tools:
            raise _unknown(tools, name, param)
        added.append(_spec(tools[name]))
    for param, pattern in wanted:
        matches = sorted(n for n in tools if fnmatch.fnmatchcase(n, pattern))
        if not matches:
            raise _unknown(tools, pattern, param)
        added.extend(_spec(tools[n]) for n in matches)
    return {**raw, "platform_tools": _joined(given, added)}


# The gateway's side: the registry over its dispatch, an unknown tool as a 404.


def _registry(dispatch: Dispatch, principal: Principal) -> Registry:
    """Every registered tool: whether the caller's role may call one is policy's to judge when
    it is called, as for a direct invocation (a refused call is noted as the step's outcome)."""

    async def listed() -> Mapping[str, ToolDescriptor]:
        answer = await dispatch.call(
            ToolsList(role=None), ToolsListed, tenant=principal.tenant, actor=principal.user
        )
        return {t.name: t for t in answer.tools}

    return listed


def _not_found(exc: UnknownTool) -> ApiError:
    return not_found(str(exc), code="tool_not_found", param=exc.param)


async def task_input(
    dispatch: Dispatch, principal: Principal, raw: dict[str, Any]
) -> dict[str, Any]:
    try:
        return await task_tools(raw, _registry(dispatch, principal))
    except UnknownTool as exc:
        raise _not_found(exc) from exc


async def run_input(
    dispatch: Dispatch, principal: Principal, raw: dict[str, Any]
) -> dict[str, Any]:
    try:
        return await run_tools(raw, _registry(dispatch, principal))
    except UnknownTool as exc:
        raise _not_found(exc) from exc
