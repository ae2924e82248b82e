"""Which constitution is in force for each tenant, and the event that says when it changes.

The policy process records, per tenant, the hash of the constitution it last judged under
(``policy_constitutions``). When it first judges under another one — a file edited, replaced,
removed, or a new release of the packaged default — it publishes ``policy.constitution_changed``
(old and new hash, a summary of what changed) before the decision, so in the event stream the
change always comes before the first decision made under it.

Exactly once, whatever the number of replicas: the event's message id is derived from the
tenant, the record's generation and the new hash, so replicas that see the same change publish
the same id and the server keeps one; the record is then moved on by a conditional update that
only one of them wins. The event is published before the record is written, so a crash between
the two publishes it again (the same id, dropped as a duplicate) rather than never.

A constitution refused for its signature is announced too (``policy.constitution_refused``),
once per refused file and reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec
from sqlalchemy import BigInteger, Column, DateTime, String, Table, Text, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from handlers.policy.rules import Rule, RuleSet
from kernel.db import metadata
from schemas.policy import PolicyConstitutionChanged, PolicyConstitutionRefused

log = logging.getLogger(__name__)

_EVENTS = uuid.uuid5(uuid.NAMESPACE_URL, "soma:policy:constitution")

constitutions = Table(
    "policy_constitutions",
    metadata,
    Column("tenant", String(128), primary_key=True),
    Column("hash", String(80), nullable=False),
    Column("version", String(255), nullable=False),
    Column("generation", BigInteger, nullable=False),
    Column("outline", Text, nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
)

# Publishes one event: (event, tenant, message id, correlation id). A second publish of the
# same message id is the server's to drop. The correlation is the decision's that saw the change,
# so ``soma trace`` of that turn shows it.
Publish = Callable[[msgspec.Struct, str, str, str], Awaitable[None]]


# ----------------------------------------------------------------------------- what changed


def outline(ruleset: RuleSet) -> dict[str, dict[str, str]]:
    """What a summary compares: a fingerprint per rule and per principle, and the settings."""

    def rule(r: Rule) -> str:
        pattern = r.pattern.pattern if r.pattern is not None else r.kind
        parts = (r.section, r.action, r.reason, ",".join(sorted(r.stages)), pattern, r.replacement)
        return _short("\0".join(parts))

    settings = {
        "version": ruleset.version.split("@", 1)[-1].rsplit("+", 1)[0],
        "tools": _short(repr(sorted((k, v.pattern) for k, v in ruleset.tools.roles.items()))),
        "budgets": _short(repr(ruleset.budget)),
        "memory": _short(repr(sorted(ruleset.memory.tenant_wide_roles))),
        "judge": _short(repr(ruleset.judge)),
    }
    return {
        "rules": {r.id: rule(r) for r in ruleset.rules},
        "principles": {
            p.id: _short(p.text + "\0" + ",".join(sorted(p.stages))) for p in ruleset.principles
        },
        "settings": settings,
    }


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def summarize(old: dict[str, dict[str, str]] | None, new: dict[str, dict[str, str]]) -> str:
    """One line an operator reads in ``soma tail``: what was added, removed and changed."""
    if old is None:
        return (
            f"first constitution on record: version {new['settings']['version']}, "
            f"{len(new['rules'])} rules, {len(new['principles'])} principles"
        )
    parts = []
    if old["settings"].get("version") != new["settings"]["version"]:
        parts.append(f"version {old['settings'].get('version')} -> {new['settings']['version']}")
    for kind in ("rules", "principles"):
        before, after = old.get(kind, {}), new[kind]
        added = sorted(set(after) - set(before))
        removed = sorted(set(before) - set(after))
        changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
        singular = kind[:-1]
        for verb, ids in (("added", added), ("removed", removed), ("changed", changed)):
            if ids:
                parts.append(f"{singular}s {verb}: {', '.join(ids)}")
    for name in ("tools", "budgets", "memory", "judge"):
        if old["settings"].get(name) != new["settings"][name]:
            parts.append(f"{name} changed")
    return "; ".join(parts) or "no rule, principle or setting changed (comments or layout only)"


# ----------------------------------------------------------------------------- the record


@dataclass
class Announcer:
    """Announces each tenant's constitution changes; ``observe`` before every decision."""

    engine: AsyncEngine
    publish: Publish
    clock: Callable[[], float] = time.time  # dates each change recorded
    _known: dict[str, str] = field(default_factory=dict)
    _refused: dict[str, str] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    async def observe(self, tenant: str, ruleset: RuleSet, correlation_id: str) -> None:
        """Make sure the change to ``ruleset`` is announced before anything is judged under it."""
        if self._known.get(tenant) == ruleset.constitution:
            return
        lock = self._locks.setdefault(tenant, asyncio.Lock())
        async with lock:
            if self._known.get(tenant) == ruleset.constitution:
                return
            await self._record(tenant, ruleset, correlation_id)
            self._known[tenant] = ruleset.constitution

    async def refused(self, tenant: str, reason: str, in_force: str, correlation_id: str) -> None:
        """Announce, once per reason, that a tenant's new constitution was not loaded."""
        if self._refused.get(tenant) == reason:
            return
        kept = in_force or "none"
        log.warning("tenant %s: constitution refused, %s stays in force: %s", tenant, kept, reason)
        event = PolicyConstitutionRefused(reason=reason, in_force=in_force)
        key = f"{tenant}\0refused\0{in_force}\0{reason}"
        await self.publish(event, tenant, uuid.uuid5(_EVENTS, key).hex, correlation_id)
        self._refused[tenant] = reason

    async def _record(self, tenant: str, ruleset: RuleSet, correlation_id: str) -> None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(constitutions).where(constitutions.c.tenant == tenant))
            ).first()
        if row is not None and row.hash == ruleset.constitution:
            return
        new_outline = outline(ruleset)
        old_outline = json.loads(row.outline) if row is not None else None
        generation = (row.generation if row is not None else 0) + 1
        event = PolicyConstitutionChanged(
            old_hash=row.hash if row is not None else "",
            new_hash=ruleset.constitution,
            version=ruleset.version,
            summary=summarize(old_outline, new_outline),
            principles=[p.id for p in ruleset.principles],
        )
        key = f"{tenant}\0{generation}\0{ruleset.constitution}"
        await self.publish(event, tenant, uuid.uuid5(_EVENTS, key).hex, correlation_id)
        values = dict(
            hash=ruleset.constitution,
            version=ruleset.version,
            generation=generation,
            outline=json.dumps(new_outline, sort_keys=True),
            changed_at=datetime.fromtimestamp(self.clock(), UTC),
        )
        async with self.engine.begin() as conn:
            if row is None:
                # A replica that inserted first wrote the same change: nothing is lost.
                dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
                await conn.execute(
                    dialect.insert(constitutions)
                    .values(tenant=tenant, **values)
                    .on_conflict_do_nothing(index_elements=["tenant"])
                )
            else:
                await conn.execute(
                    update(constitutions)
                    .where(constitutions.c.tenant == tenant)
                    .where(constitutions.c.generation == row.generation)
                    .values(**values)
                )
        log.info("tenant %s: constitution %s in force", tenant, ruleset.constitution)
