"""Rule sets as data: a tenant's constitution read from YAML, validated, compiled, hot-reloaded.

The packaged default (``kernel/default_policy.yaml``) applies to every tenant without a file of its
own, and is the base a tenant file builds on (unless it says ``extends: none``): a tenant rule with
a base rule's id replaces it, ``disable`` removes base rules by id, ``tools.roles`` and ``budgets``
override the base key by key, ``memory`` replaces the base's. The tool allow-lists and memory
grants are compiled by ``kernel.grants``, which the tools and memory processes use to enforce them.
Every rule's ``examples`` must trigger it and its ``counterexamples`` must not; they are checked
at load, so a pattern that cannot match is refused when the file is read, not discovered
in production. A file that fails to load is an error for that tenant (the evaluation then denies),
never a silent fall-back to rules the tenant did not write.

Besides the machine rules a constitution states ``principles`` in plain language, which a model
judges where the file configures a ``judge`` (``handlers.policy.judge``); principles merge onto
the base's by id, like rules. The whole is identified by its content hash
(``kernel.constitution.content_hash``), which every decision names.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import msgspec

from handlers.policy import injection, literals, pii
from handlers.policy.injection import normalize
from handlers.policy.pii import Detector, Found
from kernel.constitution import Trust, content_hash
from kernel.grants import (
    InvalidTenant,
    MemoryGrants,
    MemorySpec,
    PolicyError,
    TenantFiles,
    ToolAllowList,
    ToolsSpec,
    check_tenant,
    compile_memory,
    compile_tools,
    default_source,
    load_yaml,
    merge_memory,
    merge_tools,
)
from schemas.policy import Stage

__all__ = ["InvalidTenant", "PolicyError", "ToolAllowList", "check_tenant", "default_source"]

STAGES: tuple[Stage, ...] = ("prompt", "tool_call", "answer")
Action = Literal["deny", "redact", "flag"]
Section = Literal["blocked_topics", "injection", "pii"]
Limit = Annotated[int, msgspec.Meta(ge=0)] | None | msgspec.UnsetType

_RULE_ID = re.compile(r"[a-z0-9_]+(?:[.-][a-z0-9_]+)*")

# ----------------------------------------------------------------------------- the file format


class Example(msgspec.Struct, forbid_unknown_fields=True):
    text: str
    match: str | None = None


class MatchRuleSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: str
    reason: str = ""
    action: Literal["deny", "flag"] = "deny"
    stages: list[Stage] | None = None
    keywords: list[str] = []
    patterns: list[str] = []
    detect: str | None = None
    examples: list[str | Example] = []
    counterexamples: list[str] = []


class PiiRuleSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: str
    reason: str = ""
    action: Literal["redact", "deny", "flag"] = "redact"
    stages: list[Stage] | None = None
    detect: str | None = None
    pattern: str | None = None
    kind: str | None = None
    replacement: str | None = None
    examples: list[str | Example] = []
    counterexamples: list[str] = []


class KeyBudgetSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    max_tokens_per_request: Limit = msgspec.UNSET
    daily_tokens: Limit = msgspec.UNSET


class BudgetSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    max_tokens_per_request: Limit = msgspec.UNSET
    tenant_daily_tokens: Limit = msgspec.UNSET
    key_daily_tokens: Limit = msgspec.UNSET
    keys: dict[str, KeyBudgetSpec] = {}


class PrincipleSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: str
    text: str
    stages: list[Stage] | None = None


class JudgeSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: str
    stages: list[Stage] | None = None
    timeout: Annotated[float, msgspec.Meta(gt=0, le=120)] = 10.0
    # closed: a judge that does not answer in time denies; open: the request goes on, flagged.
    on_failure: Literal["closed", "open"] = "closed"
    max_tokens: Annotated[int, msgspec.Meta(gt=0)] = 300


class RuleFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    version: str | int
    extends: Literal["default", "none"] = "default"
    description: str = ""
    principles: list[PrincipleSpec] = []
    judge: JudgeSpec | None = None
    disable: list[str] = []
    blocked_topics: list[MatchRuleSpec] = []
    injection: list[MatchRuleSpec] = []
    pii: list[PiiRuleSpec] = []
    tools: ToolsSpec | None = None
    memory: MemorySpec | None = None
    budgets: BudgetSpec | None = None


# ----------------------------------------------------------------------------- compiled rules


@dataclass(frozen=True)
class Rule:
    """One compiled rule. ``pattern`` rules read the normalised text and only say *whether*;
    ``detector`` rules read the original text and say *where* (spans, redaction)."""

    id: str
    section: Section
    action: Action
    reason: str
    stages: frozenset[Stage]
    kind: str
    replacement: str = ""
    pattern: re.Pattern[str] | None = None
    # False only when the normalised text cannot match ``pattern`` (see ``literals``).
    screen: Callable[[str], bool] | None = None
    detector: Detector | None = None
    examples: tuple[Example, ...] = ()
    counterexamples: tuple[str, ...] = ()

    def find(self, text: str) -> list[Found]:
        """Where this rule fires in ``text`` (for a pattern rule, one empty span if it does)."""
        if self.detector is not None:
            return self.detector(text)
        return [(0, 0)] if self.matches(normalize(text)) else []

    def matches(self, normalized: str) -> bool:
        assert self.pattern is not None
        if self.screen is not None and not self.screen(normalized):
            return False
        return self.pattern.search(normalized) is not None


@dataclass(frozen=True)
class KeyBudget:
    max_tokens_per_request: int | None
    daily_tokens: int | None


@dataclass(frozen=True)
class Budget:
    """Token limits; ``None`` means unlimited."""

    max_tokens_per_request: int | None = None
    tenant_daily_tokens: int | None = None
    key_daily_tokens: int | None = None
    keys: Mapping[str, KeyBudget] = field(default_factory=dict)

    def request_limit(self, key_id: str | None) -> int | None:
        own = self.keys.get(key_id) if key_id else None
        return own.max_tokens_per_request if own else self.max_tokens_per_request

    def key_daily_limit(self, key_id: str | None) -> int | None:
        if not key_id:
            return None
        own = self.keys.get(key_id)
        return own.daily_tokens if own else self.key_daily_tokens


@dataclass(frozen=True)
class Principle:
    id: str
    text: str
    stages: frozenset[Stage]


@dataclass(frozen=True)
class JudgeConfig:
    """The model that judges the principles, and what its silence means."""

    model: str
    stages: frozenset[Stage]
    timeout: float
    fail_open: bool
    max_tokens: int


@dataclass(frozen=True)
class StageRules:
    matched: tuple[Rule, ...]
    hidden: tuple[Rule, ...]
    pii: tuple[Rule, ...]


@dataclass(frozen=True)
class RuleSet:
    name: str
    version: str
    rules: tuple[Rule, ...]
    tools: ToolAllowList
    budget: Budget
    stages: Mapping[Stage, StageRules]
    memory: MemoryGrants = field(default_factory=MemoryGrants)
    constitution: str = ""
    description: str = ""
    principles: tuple[Principle, ...] = ()
    judge: JudgeConfig | None = None

    def judged_principles(self, stage: Stage) -> tuple[Principle, ...]:
        """The principles a model judges at ``stage``: none without a judge for it."""
        if self.judge is None or stage not in self.judge.stages:
            return ()
        return tuple(p for p in self.principles if stage in p.stages)

    def rule(self, rule_id: str) -> Rule:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)


# ----------------------------------------------------------------------------- loading

_R = TypeVar("_R", MatchRuleSpec, PiiRuleSpec)


def parse(source: bytes, origin: str) -> RuleFile:
    data = load_yaml(source, origin)
    try:
        return msgspec.convert(data, type=RuleFile)
    except msgspec.ValidationError as exc:
        raise PolicyError(f"{origin}: {exc}") from exc


def load_default() -> RuleSet:
    return build_ruleset("default", None, default_source(), "default_policy.yaml")


def build_ruleset(name: str, base: bytes | None, source: bytes, origin: str) -> RuleSet:
    """Parse, merge onto ``base`` (unless the file says ``extends: none``) and compile."""
    spec = parse(source, origin)
    _check_unique_ids(spec, origin)
    extended = base is not None and spec.extends == "default"
    if extended:
        assert base is not None
        spec = merge(parse(base, "default_policy.yaml"), spec, origin)
    constitution = content_hash(source, base if extended else None)
    version = f"{name}@{spec.version}+{constitution.removeprefix('sha256:')[:8]}"
    ruleset = compile_rules(name, version, spec, origin)
    return replace(ruleset, constitution=constitution)


def _check_unique_ids(spec: RuleFile, origin: str) -> None:
    ids = [r.id for r in spec.blocked_topics + spec.injection] + [r.id for r in spec.pii]
    repeated = sorted({rule_id for rule_id in ids if ids.count(rule_id) > 1})
    if repeated:
        raise PolicyError(f"{origin}: rule ids used twice: {repeated}")
    principles = [p.id for p in spec.principles]
    repeated = sorted({p for p in principles if principles.count(p) > 1})
    if repeated:
        raise PolicyError(f"{origin}: principle ids used twice: {repeated}")


def merge(base: RuleFile, own: RuleFile, origin: str) -> RuleFile:
    known = {r.id for r in base.blocked_topics + base.injection} | {r.id for r in base.pii}
    known |= {p.id for p in base.principles}
    unknown = sorted(set(own.disable) - known)
    if unknown:
        raise PolicyError(f"{origin}: disable names rules the base does not have: {unknown}")
    disabled = set(own.disable)

    def merged(inherited: list[_R], mine: list[_R]) -> list[_R]:
        replacing = {rule.id: rule for rule in mine}
        kept = [replacing.pop(r.id, r) for r in inherited if r.id not in disabled]
        return kept + [rule for rule in mine if rule.id in replacing]

    mine = {p.id: p for p in own.principles}
    principles = [mine.pop(p.id, p) for p in base.principles if p.id not in disabled]
    return RuleFile(
        version=own.version,
        extends="none",
        description=own.description or base.description,
        principles=principles + list(mine.values()),
        judge=own.judge or base.judge,
        blocked_topics=merged(base.blocked_topics, own.blocked_topics),
        injection=merged(base.injection, own.injection),
        pii=merged(base.pii, own.pii),
        tools=merge_tools(base.tools, own.tools),
        memory=merge_memory(base.memory, own.memory),
        budgets=_merge_budgets(base.budgets, own.budgets),
    )


def _merge_budgets(base: BudgetSpec | None, own: BudgetSpec | None) -> BudgetSpec | None:
    if base is None or own is None:
        return own or base
    overridden = {
        name: getattr(own, name)
        for name in ("max_tokens_per_request", "tenant_daily_tokens", "key_daily_tokens")
        if getattr(own, name) is not msgspec.UNSET
    }
    return msgspec.structs.replace(base, **overridden, keys={**base.keys, **own.keys})


def _set(value: int | msgspec.UnsetType | None, fallback: int | None = None) -> int | None:
    return fallback if isinstance(value, msgspec.UnsetType) else value


def compile_rules(name: str, version: str, spec: RuleFile, origin: str) -> RuleSet:
    rules: list[Rule] = []
    for section, specs in (("blocked_topics", spec.blocked_topics), ("injection", spec.injection)):
        rules.extend(_compile_match(s, section, origin) for s in specs)  # type: ignore[arg-type]
    rules.extend(_compile_pii(s, origin) for s in spec.pii)
    seen: set[str] = set()
    for rule in rules:
        if rule.id in seen:
            raise PolicyError(f"{origin}: rule id {rule.id!r} is used twice")
        seen.add(rule.id)
        _check_examples(rule, origin)
    stages = {
        stage: StageRules(
            matched=tuple(r for r in rules if stage in r.stages and r.pattern is not None),
            hidden=tuple(
                r for r in rules if stage in r.stages and r.detector and r.section != "pii"
            ),
            pii=tuple(r for r in rules if stage in r.stages and r.section == "pii"),
        )
        for stage in STAGES
    }
    return RuleSet(
        name=name,
        version=version,
        rules=tuple(rules),
        tools=compile_tools(spec.tools, origin),
        budget=_compile_budget(spec.budgets),
        stages=stages,
        memory=compile_memory(spec.memory, origin),
        description=spec.description,
        principles=tuple(_compile_principle(p, origin) for p in spec.principles),
        judge=_compile_judge(spec, origin),
    )


def _compile_principle(spec: PrincipleSpec, origin: str) -> Principle:
    _check_id(spec.id, origin)
    if not spec.text.strip():
        raise PolicyError(f"{origin}: principle {spec.id!r} needs its text")
    return Principle(spec.id, spec.text.strip(), _stages(spec.stages, origin, spec.id))


def _compile_judge(spec: RuleFile, origin: str) -> JudgeConfig | None:
    judge = spec.judge
    if judge is None:
        return None
    if not judge.model.strip():
        raise PolicyError(f"{origin}: judge.model names no model")
    if not spec.principles:
        raise PolicyError(f"{origin}: a judge needs principles to judge; add some or drop judge")
    return JudgeConfig(
        model=judge.model,
        stages=_stages(judge.stages, origin, "judge"),
        timeout=judge.timeout,
        fail_open=judge.on_failure == "open",
        max_tokens=judge.max_tokens,
    )


def _where(origin: str, rule_id: str) -> str:
    return f"{origin}: rule {rule_id!r}"


def _check_id(rule_id: str, origin: str) -> None:
    if not _RULE_ID.fullmatch(rule_id):
        raise PolicyError(f"{_where(origin, rule_id)}: ids are lowercase words joined by . or -")


def _stages(stages: list[Stage] | None, origin: str, rule_id: str) -> frozenset[Stage]:
    if stages is not None and not stages:
        raise PolicyError(f"{_where(origin, rule_id)}: an empty stages list never applies")
    return frozenset(stages if stages is not None else STAGES)


def _regex(source: str, origin: str, rule_id: str, flags: int = 0) -> re.Pattern[str]:
    try:
        pattern = re.compile(source, flags)
    except re.error as exc:
        raise PolicyError(f"{_where(origin, rule_id)}: bad pattern {source!r}: {exc}") from exc
    if pattern.search(""):
        raise PolicyError(f"{_where(origin, rule_id)}: pattern {source!r} matches empty text")
    return pattern


def _keyword(word: str) -> str:
    parts = normalize(word).split()
    return r"(?<!\w)" + r"\s+".join(re.escape(part) for part in parts) + r"(?!\w)"


def _compile_match(spec: MatchRuleSpec, section: Section, origin: str) -> Rule:
    _check_id(spec.id, origin)
    where = _where(origin, spec.id)
    stages = _stages(spec.stages, origin, spec.id)
    examples = tuple(e if isinstance(e, Example) else Example(e) for e in spec.examples)
    common = dict(
        id=spec.id,
        section=section,
        action=spec.action,
        stages=stages,
        examples=examples,
        counterexamples=tuple(spec.counterexamples),
    )
    if spec.detect is not None:
        if spec.keywords or spec.patterns:
            raise PolicyError(f"{where}: use either detect or keywords/patterns, not both")
        if section != "injection" or spec.detect not in injection.DETECTORS:
            raise PolicyError(
                f"{where}: unknown detector {spec.detect!r} for {section}; "
                f"known: {sorted(injection.DETECTORS)}"
            )
        return Rule(
            reason=spec.reason or spec.detect.replace("_", " "),
            kind=spec.detect,
            detector=injection.DETECTORS[spec.detect],
            **common,  # type: ignore[arg-type]
        )
    if not spec.keywords and not spec.patterns:
        raise PolicyError(f"{where}: needs keywords, patterns or detect")
    if any(not word.strip() for word in spec.keywords):
        raise PolicyError(f"{where}: an empty keyword would match everything")
    for source in spec.patterns:
        _regex(source, origin, spec.id)
    alternatives = [_keyword(w) for w in spec.keywords] + [f"(?:{p})" for p in spec.patterns]
    pattern = _regex("|".join(alternatives), origin, spec.id, re.IGNORECASE)
    return Rule(
        reason=spec.reason or spec.id,
        kind=section,
        pattern=pattern,
        screen=literals.screen(literals.requirement(pattern, folded=True)),
        **common,  # type: ignore[arg-type]
    )


def _compile_pii(spec: PiiRuleSpec, origin: str) -> Rule:
    _check_id(spec.id, origin)
    where = _where(origin, spec.id)
    if (spec.detect is None) == (spec.pattern is None):
        raise PolicyError(f"{where}: a pii rule needs exactly one of detect or pattern")
    if spec.detect is not None:
        if spec.detect not in pii.DETECTORS:
            raise PolicyError(
                f"{where}: unknown detector {spec.detect!r}; known: {sorted(pii.DETECTORS)}"
            )
        detector = pii.DETECTORS[spec.detect]
        kind = spec.kind or spec.detect
    else:
        assert spec.pattern is not None
        detector = pii.pattern_detector(_regex(spec.pattern, origin, spec.id))
        kind = spec.kind or spec.id.rsplit(".", 1)[-1]
    return Rule(
        id=spec.id,
        section="pii",
        action=spec.action,
        reason=spec.reason or kind.replace("_", " "),
        stages=_stages(spec.stages, origin, spec.id),
        kind=kind,
        replacement=spec.replacement if spec.replacement is not None else f"[{kind.upper()}]",
        detector=detector,
        examples=tuple(e if isinstance(e, Example) else Example(e) for e in spec.examples),
        counterexamples=tuple(spec.counterexamples),
    )


def _check_examples(rule: Rule, origin: str) -> None:
    where = _where(origin, rule.id)
    for example in rule.examples:
        found = rule.find(example.text)
        if not found:
            raise PolicyError(f"{where}: example {example.text!r} does not trigger it")
        if example.match is not None:
            if rule.detector is None:
                raise PolicyError(f"{where}: 'match' needs a rule that finds spans (detect)")
            matched = [example.text[start:end] for start, end in found]
            if example.match not in matched:
                raise PolicyError(
                    f"{where}: example {example.text!r} matched {matched}, not {example.match!r}"
                )
    for text in rule.counterexamples:
        if rule.find(text):
            raise PolicyError(f"{where}: counterexample {text!r} triggers it")


def _compile_budget(spec: BudgetSpec | None) -> Budget:
    if spec is None:
        return Budget()
    per_request = _set(spec.max_tokens_per_request)
    key_daily = _set(spec.key_daily_tokens)
    return Budget(
        max_tokens_per_request=per_request,
        tenant_daily_tokens=_set(spec.tenant_daily_tokens),
        key_daily_tokens=key_daily,
        keys={
            key: KeyBudget(
                _set(own.max_tokens_per_request, per_request), _set(own.daily_tokens, key_daily)
            )
            for key, own in spec.keys.items()
        },
    )


# ----------------------------------------------------------------------------- per-tenant store


class RuleStore(TenantFiles[RuleSet]):
    """Each tenant's rule set, from ``<directory>/<tenant>.yaml`` or the default; see
    ``kernel.grants.TenantFiles`` for when a file is read again."""

    def __init__(
        self,
        directory: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        interval: float = 1.0,
        trust: Trust | None = None,
    ) -> None:
        base = default_source()

        def build(tenant: str, source: bytes, origin: str) -> RuleSet:
            return build_ruleset(tenant, base, source, origin)

        default = build_ruleset("default", None, base, "default_policy.yaml")
        super().__init__(directory, build, default, clock=clock, interval=interval, trust=trust)
