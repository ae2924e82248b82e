"""What each role of a tenant is granted: the tools it may call, and whether its memory reaches
every user of the tenant — read from the tenant rule files.

Policy judges prompts, tool calls and answers by the whole rule file; the tools and memory
processes enforce these grants themselves, where the work happens, so a saga that skipped a check
or a command published straight onto the bus is held to them all the same. All three read the
same files through this module and compile the grants with the same code: one rule file change
moves every decision alike, and enforcing costs a dictionary lookup instead of a bus round trip
per call. A file that does not load grants nothing (callers refuse, naming the error).

The packaged ``default_policy.yaml`` applies to every tenant without a file of its own, and is
the base a tenant file builds on unless it says ``extends: none``; ``tools.roles`` overrides the
base role by role, ``memory`` replaces the base's memory section.
"""

from __future__ import annotations

import fnmatch
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Generic, Literal, TypeVar

import msgspec
import yaml

from kernel.constitution import SignatureRefused, Trust, signature_path, verify
from kernel.settings import Settings

# Rule ids of the grants, as they appear in decisions and refusals.
TOOL_NOT_ALLOWED = "tool.not_allowed"
MEMORY_OTHER_USER = "memory.other_user"
POLICY_ERROR = "policy.error"

_TENANT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,127}")
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class PolicyError(Exception):
    """A rule file that cannot be read, parsed or validated."""


class InvalidTenant(ValueError):
    """A tenant name that cannot name a rule file (it would escape the policy folder)."""


def check_tenant(tenant: str) -> None:
    if not _TENANT.fullmatch(tenant):
        raise InvalidTenant(f"tenant {tenant!r} is not a valid tenant name")


def policy_dir(settings: Settings) -> Path:
    """``$SOMA_POLICY_DIR`` when set, else ``<SOMA_DATA_DIR>/policy``."""
    configured = os.environ.get("SOMA_POLICY_DIR")
    return Path(configured) if configured else settings.data_dir / "policy"


def default_source() -> bytes:
    return resources.files("kernel").joinpath("default_policy.yaml").read_bytes()


def load_yaml(source: bytes, origin: str) -> object:
    try:
        return yaml.load(source, Loader=_YAML_LOADER)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{origin}: not valid YAML: {exc}") from exc


# ----------------------------------------------------------------------------- the file sections


class ToolsSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    roles: dict[str, list[str]] = {}


class MemorySpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    tenant_wide_roles: list[str] = []


class _GrantSections(msgspec.Struct, kw_only=True):
    """The sections of a rule file this module reads; the others are policy's to validate."""

    extends: Literal["default", "none"] = "default"
    tools: ToolsSpec | None = None
    memory: MemorySpec | None = None


def merge_tools(base: ToolsSpec | None, own: ToolsSpec | None) -> ToolsSpec | None:
    if own is None:
        return base
    return ToolsSpec(roles={**(base.roles if base else {}), **own.roles})


def merge_memory(base: MemorySpec | None, own: MemorySpec | None) -> MemorySpec | None:
    return own if own is not None else base


# ----------------------------------------------------------------------------- compiled grants


@dataclass(frozen=True)
class ToolAllowList:
    """Tool names (glob patterns) per role. Role ``*`` covers the roles not listed; a role with
    no entry may call no tool, and neither may a caller without a role."""

    roles: Mapping[str, re.Pattern[str]] = field(default_factory=dict)

    def allows(self, role: str | None, tool: str) -> bool:
        if not role:
            return False
        pattern = self.roles.get(role, self.roles.get("*"))
        return pattern is not None and pattern.match(tool) is not None


@dataclass(frozen=True)
class MemoryGrants:
    """Roles whose memory reaches every user of the tenant; the others reach their own only."""

    tenant_wide_roles: frozenset[str] = frozenset()

    def tenant_wide(self, role: str | None) -> bool:
        return bool(role) and role in self.tenant_wide_roles


@dataclass(frozen=True)
class Grants:
    tools: ToolAllowList = field(default_factory=ToolAllowList)
    memory: MemoryGrants = field(default_factory=MemoryGrants)


def compile_tools(spec: ToolsSpec | None, origin: str) -> ToolAllowList:
    if spec is None:
        return ToolAllowList()
    roles = {}
    for role, names in spec.roles.items():
        if any(not name for name in names):
            raise PolicyError(f"{origin}: tools.roles.{role} has an empty tool name")
        source = "|".join(fnmatch.translate(name) for name in names) or "(?!)"
        roles[role] = re.compile(source)
    return ToolAllowList(roles)


def compile_memory(spec: MemorySpec | None, origin: str) -> MemoryGrants:
    if spec is None:
        return MemoryGrants()
    if any(not role for role in spec.tenant_wide_roles):
        raise PolicyError(f"{origin}: memory.tenant_wide_roles has an empty role")
    return MemoryGrants(frozenset(spec.tenant_wide_roles))


def _sections(source: bytes, origin: str) -> _GrantSections:
    data = load_yaml(source, origin)
    if not isinstance(data, dict):
        raise PolicyError(f"{origin}: a rule file is a mapping")
    picked = {k: data[k] for k in ("extends", "tools", "memory") if k in data}
    try:
        return msgspec.convert(picked, type=_GrantSections)
    except msgspec.ValidationError as exc:
        raise PolicyError(f"{origin}: {exc}") from exc


def build_grants(base: bytes | None, source: bytes, origin: str) -> Grants:
    """The grants of one rule file, merged onto ``base`` unless it says ``extends: none``."""
    own = _sections(source, origin)
    tools, memory = own.tools, own.memory
    if base is not None and own.extends == "default":
        inherited = _sections(base, "default_policy.yaml")
        tools = merge_tools(inherited.tools, tools)
        memory = merge_memory(inherited.memory, memory)
    return Grants(compile_tools(tools, origin), compile_memory(memory, origin))


# ----------------------------------------------------------------------------- per-tenant files

T = TypeVar("T")
Stat = tuple[int, int, int]
Signature = tuple[Stat, Stat | None]


@dataclass
class _Loaded(Generic[T]):
    signature: Signature | None
    checked_at: float
    value: T | None
    error: PolicyError | None
    # Why the file on disk is not the one in force (it is not signed as its tenant requires).
    refused: str | None = None

    def result(self) -> T:
        if self.error is not None:
            raise self.error
        assert self.value is not None
        return self.value


class TenantFiles(Generic[T]):
    """Each tenant's compiled file, from ``<directory>/<tenant>.yaml`` or the default.

    A file is looked at (one ``stat``) at most once per ``interval`` seconds per tenant and
    re-read only when its modification time, size or inode changed — editing the file in place
    or replacing it atomically both count. A file that fails to build raises its ``PolicyError``
    on every ``get`` until it is fixed; it never falls back to rules the tenant did not write.

    Where ``trust`` says the tenant requires a signature (``kernel.constitution``), a file
    without a valid ``<tenant>.yaml.sig`` is refused before it is built, and the file in force
    until then stays in force (``refusal`` says why); with none in force, ``get`` raises.
    Writing the signature file counts as a change of the file.
    """

    def __init__(
        self,
        directory: Path,
        build: Callable[[str, bytes, str], T],
        default: T,
        *,
        clock: Callable[[], float] = time.monotonic,
        interval: float = 1.0,
        trust: Trust | None = None,
    ) -> None:
        self.directory = directory
        self._build = build
        self._default = default
        self._clock = clock
        self._interval = interval
        self._trust = trust or Trust()
        self._loaded: dict[str, _Loaded[T]] = {}

    @property
    def default(self) -> T:
        return self._default

    def path(self, tenant: str) -> Path:
        check_tenant(tenant)
        return self.directory / f"{tenant}.yaml"

    def get(self, tenant: str) -> T:
        path = self.path(tenant)
        now = self._clock()
        loaded = self._loaded.get(tenant)
        if loaded is not None and now - loaded.checked_at < self._interval:
            return loaded.result()
        signature = _signature(path)
        if loaded is None or loaded.signature != signature:
            loaded = self._load(tenant, path, signature, now, loaded)
            self._loaded[tenant] = loaded
        loaded.checked_at = now
        return loaded.result()

    def refusal(self, tenant: str) -> str | None:
        """Why the tenant's file on disk is not the one in force, as of the last ``get``."""
        loaded = self._loaded.get(tenant)
        return loaded.refused if loaded is not None else None

    def _load(
        self,
        tenant: str,
        path: Path,
        signature: Signature | None,
        now: float,
        previous: _Loaded[T] | None,
    ) -> _Loaded[T]:
        if signature is None:
            if self._trust.of(tenant).require_signature and previous and previous.signature:
                # Removing a signed constitution is a change like any other: it needs a signed
                # replacement, not a fall-back to the default.
                reason = f"{path}: removed, but tenant {tenant!r} requires a signed constitution"
                return _Loaded(None, now, previous.value, previous.error, reason)
            return _Loaded(None, now, self._default, None)
        try:
            source = path.read_bytes()
            signed = _read_signature(path) if signature[1] is not None else None
        except OSError as exc:
            return _Loaded(signature, now, None, PolicyError(f"{path}: cannot be read: {exc}"))
        try:
            verify(tenant, source, signed, self._trust.of(tenant))
        except SignatureRefused as exc:
            # The constitution in force stays so; a process that never had one denies.
            kept = previous.value if previous is not None else None
            reason = f"{path}: {exc}"
            if kept is None:
                return _Loaded(signature, now, None, PolicyError(reason), reason)
            return _Loaded(signature, now, kept, None, reason)
        try:
            value = self._build(tenant, source, str(path))
        except PolicyError as exc:
            return _Loaded(signature, now, None, exc)
        return _Loaded(signature, now, value, None)


def _stat(path: Path) -> Stat | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


def _signature(path: Path) -> Signature | None:
    own = _stat(path)
    if own is None:
        return None
    return (own, _stat(signature_path(path)))


def _read_signature(path: Path) -> bytes | None:
    try:
        return signature_path(path).read_bytes()
    except FileNotFoundError:
        return None


class GrantStore(TenantFiles[Grants]):
    """Each tenant's grants; see ``TenantFiles`` for when files are read again."""

    def __init__(
        self,
        directory: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        interval: float = 1.0,
        trust: Trust | None = None,
    ) -> None:
        base = default_source()

        def build(tenant: str, source: bytes, origin: str) -> Grants:
            return build_grants(base, source, origin)

        default = build_grants(None, base, "default_policy.yaml")
        super().__init__(directory, build, default, clock=clock, interval=interval, trust=trust)
