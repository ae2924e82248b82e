"""The policy process: judge every prompt, tool call and answer; every decision is an event.

Composition root. The tenant rule files are read from ``$SOMA_POLICY_DIR`` when set, else from
``<SOMA_DATA_DIR>/policy`` (``kernel.grants.policy_dir``); the token totals live in the shared SQL
database.

Fail closed: whatever goes wrong while judging — a tenant file that does not load, a rule that
raises, a database that does not answer — the decision is ``deny``, with the reason. Only a
request that no rule set could judge (a malformed command) is rejected instead.

The decision id is derived from the command's message id, so a redelivered command gets the same
decision id, and therefore the same budget charge, rather than a second one.

Every decision names the hash of the constitution it was made under; a change of constitution is
announced (``constitutions``) before the first decision made under it. Where the constitution
has a judge, the principles are judged by its model (``judge``) after the machine rules, unless
those already deny, and before the tokens are charged. Signed constitutions are checked against
the trust file (``kernel.constitution``) when the rule files are read.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, date, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from bus.errors import Invalid
from bus.service import Clock, Connected, Service
from handlers.policy import arguments, budget, judgements
from handlers.policy.connection import PolicyConnection
from handlers.policy.constitutions import Announcer
from handlers.policy.evaluate import InvalidRequest, Verdict, decide, evaluate, fail_closed
from handlers.policy.judge import ModelJudge
from handlers.policy.rules import InvalidTenant, RuleSet, RuleStore
from kernel.constitution import load_trust, trust_file
from kernel.db import dispose, make_engine, migrate
from kernel.grants import policy_dir
from kernel.settings import Settings
from schemas.envelope import Envelope
from schemas.policy import JudgeVerdict, PolicyEvaluate, PolicyEvaluated

log = logging.getLogger(__name__)

_DECISIONS = uuid.uuid5(uuid.NAMESPACE_URL, "soma:policy:decision")
# Charge records must outlive the window in which a command can still be redelivered.
CHARGES_KEPT = timedelta(days=14)


def decision_id(message_id: str) -> str:
    return uuid.uuid5(_DECISIONS, message_id).hex


def command_day(env: Envelope, clock: Clock = time.time) -> date:
    """The UTC day the command was sent: a redelivery after midnight still counts for its day.
    (A command that carries no time counts for the day it is judged.)"""
    return datetime.fromtimestamp(env.timestamp or clock(), UTC).date()


async def judge(
    cmd: PolicyEvaluate,
    env: Envelope,
    *,
    rules: RuleStore,
    engine: AsyncEngine,
    announcer: Announcer | None = None,
    model_judge: ModelJudge | None = None,
    clock: Clock = time.time,
) -> PolicyEvaluated:
    decided_as = decision_id(env.message_id)
    try:
        ruleset = rules.get(env.tenant)
    except InvalidTenant as exc:
        raise Invalid(str(exc)) from exc
    except Exception as exc:
        log.warning("policy for tenant %s unavailable: %s", env.tenant, exc)
        await _announce_refusal(announcer, rules, env, "")
        verdict = fail_closed(cmd.stage, f"the tenant's policy could not be loaded: {exc}")
        return decide(verdict, decided_as, "")
    if announcer is not None:
        await _announce_refusal(announcer, rules, env, ruleset.constitution)
        await announcer.observe(env.tenant, ruleset, env.correlation_id)
    judged: JudgeVerdict | None = None
    try:
        verdict = evaluate(ruleset, cmd)
    except InvalidRequest as exc:
        raise Invalid(str(exc)) from exc
    except Exception as exc:
        log.exception("policy evaluation failed for tenant %s", env.tenant)
        verdict = fail_closed(cmd.stage, f"the policy could not be evaluated: {exc!r}")
    else:
        if model_judge is not None and verdict.decision != "deny":
            judgement = await model_judge.judge(
                env.tenant, ruleset, cmd.stage, _judged_text(cmd, verdict), env.correlation_id
            )
            if judgement is not None:
                judged = judgement.verdict
                verdict = verdict.adding(*judgement.findings)
        verdict = await _charge_tokens(verdict, cmd, env, ruleset, engine, decided_as, clock)
    return decide(verdict, decided_as, ruleset.version, ruleset.constitution, judged)


def _judged_text(cmd: PolicyEvaluate, verdict: Verdict) -> str:
    """What the judge model reads: the text as it will go on (personal data already redacted),
    and for a tool call the tool's name with its arguments."""
    if cmd.stage != "tool_call":
        return verdict.redacted_text or cmd.text
    if verdict.redacted_text is not None and cmd.tool_arguments is not None:
        called_with = verdict.redacted_text
    elif cmd.tool_arguments is not None:
        called_with = arguments.canonical_json(cmd.tool_arguments)
    else:
        called_with = verdict.redacted_text or cmd.text
    return f"tool {cmd.tool_name} called with: {called_with}"


async def _announce_refusal(
    announcer: Announcer | None, rules: RuleStore, env: Envelope, in_force: str
) -> None:
    refusal = rules.refusal(env.tenant)
    if refusal is not None and announcer is not None:
        await announcer.refused(env.tenant, refusal, in_force, env.correlation_id)


async def _charge_tokens(
    verdict: Verdict,
    cmd: PolicyEvaluate,
    env: Envelope,
    ruleset: RuleSet,
    engine: AsyncEngine,
    decided_as: str,
    clock: Clock,
) -> Verdict:
    """Count the request's tokens against the day's budgets, unless it is denied anyway."""
    if verdict.decision == "deny" or cmd.tokens_requested == 0:
        return verdict
    tenant_limit = ruleset.budget.tenant_daily_tokens
    key_limit = ruleset.budget.key_daily_limit(cmd.key_id)
    try:
        charged = await budget.charge(
            engine,
            decision_id=decided_as,
            tenant=env.tenant,
            key_id=cmd.key_id,
            day=command_day(env, clock),
            tokens=cmd.tokens_requested,
            tenant_limit=tenant_limit,
            key_limit=key_limit,
        )
    except Exception as exc:
        log.exception("token budget unavailable for tenant %s", env.tenant)
        failed = fail_closed(cmd.stage, f"the token budget could not be checked: {exc!r}")
        return verdict.adding(*failed.findings)
    return verdict.adding(*budget.findings(charged, cmd.tokens_requested, tenant_limit, key_limit))


def build(settings: Settings) -> Service:
    rules = RuleStore(policy_dir(settings), trust=load_trust(trust_file(settings)))
    database_url = settings.resolved_database_url("policy")
    engine = make_engine(database_url)  # connects on first use, after the migration
    connection = PolicyConnection()
    model_judge = ModelJudge(connection.ask)
    announcer = Announcer(engine, connection.publish)
    clock: Clock = time.time  # the runtime's, once the startup hook has it

    async def start(bus: Connected) -> None:
        nonlocal clock
        clock = announcer.clock = bus.clock
        model_judge.store = judgements.SqlJudgements(engine, clock)
        await connection.open(bus)
        await migrate(database_url, "policy")
        now = datetime.fromtimestamp(clock(), UTC)
        pruned = await budget.prune(engine, now.date() - CHARGES_KEPT)
        if pruned:
            log.info("forgot %d token charge records older than %s", pruned, CHARGES_KEPT)
        pruned = await judgements.prune(engine, now - judgements.KEPT)
        if pruned:
            log.info("forgot %d judge verdicts older than %s", pruned, judgements.KEPT)

    async def stop() -> None:
        await connection.close()
        await dispose(engine)

    async def on_evaluate(cmd: PolicyEvaluate, env: Envelope) -> PolicyEvaluated:
        return await judge(
            cmd,
            env,
            rules=rules,
            engine=engine,
            announcer=announcer,
            model_judge=model_judge,
            clock=clock,
        )

    return Service(
        name="policy",
        routes={PolicyEvaluate: on_evaluate},
        startup=[start],
        shutdown=[stop],
    )
