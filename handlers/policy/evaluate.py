"""Judging one request against one rule set — a pure function: no I/O, no clock.

What is judged: the text for ``prompt`` and ``answer``; for ``tool_call`` the tool's name (against
the role's allow-list) and the canonical JSON of its arguments (see ``arguments``), or the text
when there are no arguments. Every rule that fires is a ``Finding``; the decision is the strongest
action among them (deny > redact > flag > allow). Spans are reported for every finding with a
place (personal data, hidden characters), on the judged text; the redacted text replaces the spans
of redacting rules and is given only when the decision is ``redact``.

The running daily token totals are not judged here (they need the database); ``budget`` turns
them into findings that ``Verdict.adding`` folds into the same decision.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any

from handlers.policy import arguments
from handlers.policy.injection import normalize
from handlers.policy.rules import Action, Rule, RuleSet, StageRules
from kernel.grants import POLICY_ERROR, TOOL_NOT_ALLOWED
from schemas.policy import Decision, JudgeVerdict, PolicyEvaluate, PolicyEvaluated, Span, Stage

SEVERITY: dict[Decision, int] = {"allow": 0, "flag": 1, "redact": 2, "deny": 3}
ERROR_RULE = POLICY_ERROR


class InvalidRequest(ValueError):
    """A request no rule set can judge (a tool call without a tool); never a reason to deny."""


@dataclass(frozen=True)
class Finding:
    rule_id: str
    action: Action
    reason: str


@dataclass(frozen=True)
class Verdict:
    stage: Stage
    findings: tuple[Finding, ...] = ()
    spans: tuple[Span, ...] = ()
    redacted_text: str | None = None

    @property
    def decision(self) -> Decision:
        actions: list[Decision] = [finding.action for finding in self.findings]
        return max(actions, key=SEVERITY.__getitem__, default="allow")

    def adding(self, *findings: Finding) -> Verdict:
        return replace(self, findings=self.findings + findings)


@dataclass(frozen=True)
class _Hit:
    start: int
    end: int
    rule: Rule


def fail_closed(stage: Stage, reason: str) -> Verdict:
    """The verdict when judging failed: deny, and say why."""
    return Verdict(stage, (Finding(ERROR_RULE, "deny", reason),))


def evaluate(ruleset: RuleSet, request: PolicyEvaluate) -> Verdict:
    stage = request.stage
    rules = ruleset.stages[stage]
    findings: list[Finding] = []
    if request.tokens_requested < 0:
        raise InvalidRequest("tokens_requested cannot be negative")
    limit = ruleset.budget.request_limit(request.key_id)
    if limit is not None and request.tokens_requested > limit:
        findings.append(
            Finding(
                "budget.max_tokens_per_request",
                "deny",
                f"{request.tokens_requested} tokens requested, at most {limit} allowed per request",
            )
        )
    if stage == "tool_call":
        if not request.tool_name:
            raise InvalidRequest("a tool_call needs tool_name")
        if request.text and request.tool_arguments is not None:
            raise InvalidRequest("a tool_call is judged on tool_arguments or on text, not both")
        if not ruleset.tools.allows(request.role, request.tool_name):
            findings.append(
                Finding(
                    TOOL_NOT_ALLOWED,
                    "deny",
                    f"role {request.role!r} may not call tool {request.tool_name!r}",
                )
            )
        if request.tool_arguments is not None:
            return _judged(
                stage, findings, ruleset, *_scan_arguments(rules, request.tool_arguments)
            )
    return _judged(stage, findings, ruleset, *_scan_text(rules, request.text))


def _judged(
    stage: Stage,
    findings: list[Finding],
    ruleset: RuleSet,
    fired: dict[str, int],
    located: list[_Hit],
    redacted: str | None,
) -> Verdict:
    for rule in ruleset.rules:
        count = fired.get(rule.id)
        if count is None:
            continue
        reason = rule.reason if rule.detector is None else f"{rule.reason} ({count} found)"
        findings.append(Finding(rule.id, rule.action, reason))
    located.sort(key=lambda hit: (hit.start, hit.end))
    return Verdict(
        stage,
        tuple(findings),
        tuple(Span(start=hit.start, end=hit.end, kind=hit.rule.kind) for hit in located),
        redacted,
    )


def _count(hits: list[_Hit], fired: dict[str, int]) -> None:
    for hit in hits:
        fired[hit.rule.id] = fired.get(hit.rule.id, 0) + 1


def _matched(rules: StageRules, text: str, fired: dict[str, int]) -> None:
    if not rules.matched:
        return
    normalized = normalize(text)
    for rule in rules.matched:
        if rule.matches(normalized):
            fired[rule.id] = 1


def _hidden(rules: StageRules, text: str) -> list[_Hit]:
    return [
        _Hit(start, end, rule)
        for rule in rules.hidden
        for start, end in rule.detector(text)  # type: ignore[misc]
    ]


def _personal(rules: StageRules, text: str) -> list[_Hit]:
    hits = [
        _Hit(start, end, rule)
        for rule in rules.pii
        for start, end in rule.detector(text)  # type: ignore[misc]
    ]
    return _without_overlaps(hits)


def _scan_text(rules: StageRules, text: str) -> tuple[dict[str, int], list[_Hit], str | None]:
    fired: dict[str, int] = {}
    if not text:
        return fired, [], None
    _matched(rules, text, fired)
    personal = _personal(rules, text)
    located = _hidden(rules, text) + personal
    _count(located, fired)
    redacting = [hit for hit in personal if hit.rule.action == "redact"]
    return fired, located, _redact(text, redacting) if redacting else None


def _scan_arguments(
    rules: StageRules, values: dict[str, Any]
) -> tuple[dict[str, int], list[_Hit], str | None]:
    document = arguments.encode(values)
    fired: dict[str, int] = {}
    _matched(rules, "\n".join((*document.keys, *(leaf.text for leaf in document.leaves))), fired)
    located = _hidden(rules, document.json)
    replacements: dict[arguments.Path, str] = {}
    for leaf in document.leaves:
        personal = _personal(rules, leaf.text)
        located.extend(
            _Hit(leaf.position(hit.start), leaf.position(hit.end), hit.rule) for hit in personal
        )
        redacting = [hit for hit in personal if hit.rule.action == "redact"]
        if redacting:
            replacements[leaf.path] = _redact(leaf.text, redacting)
    _count(located, fired)
    if not replacements:
        return fired, located, None
    return fired, located, arguments.canonical_json(arguments.replace_values(values, replacements))


def _without_overlaps(hits: list[_Hit]) -> list[_Hit]:
    """Where matches overlap (a number inside an IBAN), the stronger action wins, then the
    longer match; each character is reported and replaced once."""
    if len(hits) < 2:
        return hits
    hits.sort(key=lambda hit: hit.start)
    if all(a.end <= b.start for a, b in itertools.pairwise(hits)):
        return hits
    ranked = sorted(hits, key=lambda h: (-SEVERITY[h.rule.action], h.start - h.end, h.start))
    kept: list[_Hit] = []
    for hit in ranked:
        if all(hit.end <= other.start or other.end <= hit.start for other in kept):
            kept.append(hit)
    return sorted(kept, key=lambda hit: hit.start)


def _redact(text: str, hits: list[_Hit]) -> str:
    pieces = []
    at = 0
    for hit in hits:
        pieces.append(text[at : hit.start])
        pieces.append(hit.rule.replacement)
        at = hit.end
    pieces.append(text[at:])
    return "".join(pieces)


def decide(
    verdict: Verdict,
    decision_id: str,
    policy_version: str,
    constitution: str = "",
    judge: JudgeVerdict | None = None,
) -> PolicyEvaluated:
    """The event: findings ordered strongest first, ``reasons`` and ``rule_ids`` side by side,
    named with the constitution they were found under."""
    decision = verdict.decision
    ordered = sorted(verdict.findings, key=lambda finding: -SEVERITY[finding.action])
    return PolicyEvaluated(
        decision_id=decision_id,
        decision=decision,
        stage=verdict.stage,
        reasons=[finding.reason for finding in ordered],
        rule_ids=[finding.rule_id for finding in ordered],
        redacted_text=verdict.redacted_text if decision == "redact" else None,
        spans=list(verdict.spans),
        policy_version=policy_version,
        constitution=constitution,
        judge=judge,
    )
