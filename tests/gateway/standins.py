"""Test-only handler services answering the gateway's commands over a real nats-server.

They keep their state in memory and implement just enough real behaviour (hashed key checks,
Ed25519-signed tokens, refresh rotation with reuse detection, tenant-scoped stores, a chat turn
that streams deltas and finishes like the saga does) to hold the gateway to its bus contracts
(gateway/CONTRACTS.md). The real handlers are tested in their own areas.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

import jwt
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm
from nats.aio.client import Client
from nats.js import JetStreamContext

from bus.connection import connect
from bus.errors import Conflict, Invalid, NotFound, Rejected, Unauthenticated
from bus.publish import publish
from bus.runtime import Running, start
from bus.service import Connected, Service
from gateway.credentials import new_api_key
from kernel.settings import Settings
from schemas.analytics import AnalyticsReport, AnalyticsReported, UsageRow
from schemas.base import Usage
from schemas.chat import ChatTurnInput, ChatTurnResult, PolicyVerdict
from schemas.envelope import Envelope
from schemas.identity import (
    JWKS_KEY,
    REVOCATIONS_BUCKET,
    ApiKeyInfo,
    IdentityCreateKey,
    IdentityCreateTenant,
    IdentityCreateUser,
    IdentityGetKeyLimits,
    IdentityIssueToken,
    IdentityJwks,
    IdentityJwksPublished,
    IdentityKeyCreated,
    IdentityKeyLimitsFound,
    IdentityKeyRevoked,
    IdentityKeysListed,
    IdentityKeyVerified,
    IdentityListKeys,
    IdentityListTenants,
    IdentityListUsers,
    IdentityRefresh,
    IdentityRefreshed,
    IdentityRevocations,
    IdentityRevocationsListed,
    IdentityRevoke,
    IdentityRevoked,
    IdentityRevokeKey,
    IdentityTenantCreated,
    IdentityTenantsListed,
    IdentityTokenIssued,
    IdentityUserCreated,
    IdentityUsersListed,
    IdentityVerifyKey,
    Revocation,
    TenantInfo,
    UserInfo,
    revocation_key,
)
from schemas.memory import (
    MemoryAdd,
    MemoryAdded,
    MemoryDelete,
    MemoryDeleted,
    MemoryEmbed,
    MemoryEmbedded,
    MemoryItem,
    MemoryRecall,
    MemoryRecalled,
)
from schemas.models import ModelInfo, SlmListModels, SlmModelsListed
from schemas.policy import PolicyEvaluate, PolicyEvaluated
from schemas.sagas import (
    SagaCancel,
    SagaFinished,
    SagaInfo,
    SagaList,
    SagaListed,
    SagaQueried,
    SagaQuery,
    SagaSignal,
    SagaStart,
    SagaStarted,
)
from schemas.slm import ChatMessage, SlmDelta, ToolCall
from schemas.tools import ToolDescriptor, ToolInvoke, ToolResult, ToolsList, ToolsListed

RevocationKind = Literal["jti", "session", "user"]
ISSUER, AUDIENCE = "soma", "soma-gateway"
ACCESS_TTL, REFRESH_TTL = 900, 86400
CHAT_MODELS = ("soma-test", "soma-broken")
EMBED_MODEL = "soma-embed"
EMBED_DIMS = 16
# A prompt mentioning "slowly" takes this long.
SLOW_TURN = 0.6


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class KeyRecord:
    info: ApiKeyInfo
    secret_sha256: str


@dataclass
class Family:
    sid: str
    tenant: str
    user: str
    roles: list[str]
    scope: list[str]
    key_id: str
    current: str
    used: set[str] = field(default_factory=set)
    revoked: bool = False


@dataclass
class Identity:
    """Tenants, users, hashed keys, one Ed25519 signing key, refresh families, revocations."""

    signing_key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    kid: str = field(default_factory=lambda: secrets.token_hex(8))
    tenants: dict[str, TenantInfo] = field(default_factory=dict)
    users: dict[str, UserInfo] = field(default_factory=dict)
    keys: dict[str, KeyRecord] = field(default_factory=dict)
    families: dict[str, Family] = field(default_factory=dict)
    revocations: list[Revocation] = field(default_factory=list)
    # Where gateways learn the key set and revocations, as from the real identity process.
    js: JetStreamContext | None = None

    async def publish_key_set(self, js: JetStreamContext) -> None:
        self.js = js
        kv = await js.key_value(REVOCATIONS_BUCKET)
        await kv.put(JWKS_KEY, msgspec.json.encode(IdentityJwksPublished(keys=[self.public_jwk()])))

    # Bootstrapping, as the identity CLI would do it.

    def tenant(self, tenant_id: str) -> None:
        self.tenants.setdefault(tenant_id, TenantInfo(id=tenant_id, name=tenant_id, created_at=0))

    def user(self, tenant: str, name: str, roles: list[str]) -> UserInfo:
        self.tenant(tenant)
        user = UserInfo(id=secrets.token_hex(16), tenant=tenant, name=name, roles=roles)
        self.users[user.id] = user
        return user

    def api_key(
        self, tenant: str, roles: list[str], models: list[str] | None = None
    ) -> tuple[str, UserInfo]:
        user = self.user(tenant, f"user-{secrets.token_hex(3)}", roles)
        made = new_api_key()
        self.keys[made.key_id] = KeyRecord(
            ApiKeyInfo(
                id=made.key_id,
                tenant=tenant,
                user=user.id,
                roles=roles,
                models=models,
                created_at=time.time(),
            ),
            made.secret_sha256,
        )
        return made.key, user

    def sign(self, claims: dict[str, Any], headers: dict[str, Any] | None = None) -> str:
        head = {"kid": self.kid, "typ": "at+jwt", **(headers or {})}
        return jwt.encode(claims, self.signing_key, algorithm="EdDSA", headers=head)

    def claims(self, tenant: str, user: str, roles: list[str], **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        return {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": user,
            "tenant": tenant,
            "roles": roles,
            "scope": "",
            "client_id": "tests",
            "iat": now,
            "exp": now + ACCESS_TTL,
            "jti": secrets.token_hex(16),
            **extra,
        }

    def public_jwk(self) -> dict[str, Any]:
        jwk = json.loads(OKPAlgorithm.to_jwk(self.signing_key.public_key()))
        return {**jwk, "kid": self.kid, "alg": "EdDSA", "use": "sig"}

    # Handlers.

    def _usable(self, key_id: str, secret_sha256: str) -> KeyRecord:
        record = self.keys.get(key_id)
        if record is None or not secrets.compare_digest(record.secret_sha256, secret_sha256):
            raise Unauthenticated("unknown API key")
        if record.info.revoked_at is not None:
            raise Unauthenticated("revoked API key")
        return record

    async def verify_key(self, cmd: IdentityVerifyKey, env: Envelope) -> IdentityKeyVerified:
        try:
            record = self._usable(cmd.key_id, cmd.secret_sha256)
        except Rejected as exc:
            return IdentityKeyVerified(key_id=cmd.key_id, valid=False, reason=str(exc))
        i = record.info
        return IdentityKeyVerified(
            key_id=i.id,
            valid=True,
            tenant=i.tenant,
            user=i.user,
            roles=i.roles,
            models=i.models,
            expires_at=i.expires_at,
        )

    async def key_limits(self, cmd: IdentityGetKeyLimits, env: Envelope) -> IdentityKeyLimitsFound:
        record = self.keys.get(cmd.key_id)
        if record is None or record.info.tenant != env.tenant or record.info.revoked_at:
            return IdentityKeyLimitsFound(key_id=cmd.key_id, valid=False, reason="unknown API key")
        i = record.info
        return IdentityKeyLimitsFound(
            key_id=i.id, valid=True, budget=i.budget, rpm_limit=i.rpm_limit, tpm_limit=i.tpm_limit
        )

    async def jwks(self, cmd: IdentityJwks, env: Envelope) -> IdentityJwksPublished:
        return IdentityJwksPublished(keys=[self.public_jwk()])

    async def list_revocations(
        self, cmd: IdentityRevocations, env: Envelope
    ) -> IdentityRevocationsListed:
        since = cmd.since or 0.0
        return IdentityRevocationsListed(
            revocations=[r for r in self.revocations if r.revoked_at >= since], as_of=time.time()
        )

    def _access(self, family: Family) -> str:
        claims = self.claims(
            family.tenant,
            family.user,
            family.roles,
            scope=" ".join(family.scope),
            sid=family.sid,
            key_id=family.key_id,
        )
        return self.sign(claims)

    async def issue(self, cmd: IdentityIssueToken, env: Envelope) -> IdentityTokenIssued:
        record = self._usable(cmd.key_id, cmd.secret_sha256)
        family = Family(
            sid=secrets.token_hex(8),
            tenant=record.info.tenant,
            user=record.info.user,
            roles=record.info.roles,
            scope=cmd.scope,
            key_id=record.info.id,
            current=cmd.refresh_sha256,
        )
        self.families[family.sid] = family
        return IdentityTokenIssued(
            access_token=self._access(family),
            expires_in=ACCESS_TTL,
            refresh_expires_in=REFRESH_TTL,
            tenant=family.tenant,
            user=family.user,
            scope=family.scope,
            session=family.sid,
        )

    async def _revoke(self, kind: RevocationKind, subject: str, expires_at: float) -> None:
        revocation = Revocation(
            kind=kind, subject=subject, revoked_at=time.time(), expires_at=expires_at
        )
        self.revocations.append(revocation)
        if self.js is not None:
            await self.js.publish(
                f"$KV.{REVOCATIONS_BUCKET}.{revocation_key(revocation)}",
                msgspec.json.encode(revocation),
                msg_ttl=max(1, math.ceil(expires_at - time.time())),
            )

    async def refresh(self, cmd: IdentityRefresh, env: Envelope) -> IdentityRefreshed:
        for family in self.families.values():
            if cmd.refresh_sha256 in family.used:
                family.revoked = True
                await self._revoke("session", family.sid, time.time() + ACCESS_TTL)
                raise Unauthenticated("refresh token reused; session revoked")
            if family.current == cmd.refresh_sha256:
                if family.revoked:
                    raise Unauthenticated("session revoked")
                family.used.add(family.current)
                family.current = cmd.new_refresh_sha256
                return IdentityRefreshed(
                    access_token=self._access(family),
                    expires_in=ACCESS_TTL,
                    refresh_expires_in=REFRESH_TTL,
                    tenant=family.tenant,
                    user=family.user,
                    scope=family.scope,
                    session=family.sid,
                )
        raise Unauthenticated("unknown refresh token")

    async def revoke(self, cmd: IdentityRevoke, env: Envelope) -> IdentityRevoked:
        if cmd.jti:
            await self._revoke("jti", cmd.jti, cmd.expires_at or time.time() + ACCESS_TTL)
            return IdentityRevoked(revoked=True)
        if cmd.refresh_sha256:
            for family in self.families.values():
                if family.tenant == env.tenant and cmd.refresh_sha256 == family.current:
                    family.revoked = True
                    await self._revoke("session", family.sid, time.time() + ACCESS_TTL)
                    return IdentityRevoked(revoked=True)
            return IdentityRevoked(revoked=False)
        if cmd.user_id:
            user = self.users.get(cmd.user_id)
            if user is None or user.tenant != env.tenant:
                raise NotFound(f"no user {cmd.user_id!r}")
            await self._revoke("user", cmd.user_id, time.time() + ACCESS_TTL)
            return IdentityRevoked(revoked=True)
        raise Invalid("nothing to revoke")

    async def create_tenant(
        self, cmd: IdentityCreateTenant, env: Envelope
    ) -> IdentityTenantCreated:
        if cmd.tenant_id in self.tenants:
            raise Conflict(f"tenant {cmd.tenant_id!r} exists")
        self.tenants[cmd.tenant_id] = TenantInfo(
            id=cmd.tenant_id, name=cmd.name or cmd.tenant_id, created_at=time.time()
        )
        return IdentityTenantCreated(tenant=self.tenants[cmd.tenant_id])

    async def list_tenants(self, cmd: IdentityListTenants, env: Envelope) -> IdentityTenantsListed:
        return IdentityTenantsListed(tenants=sorted(self.tenants.values(), key=lambda t: t.id))

    async def create_user(self, cmd: IdentityCreateUser, env: Envelope) -> IdentityUserCreated:
        return IdentityUserCreated(user=self.user(env.tenant, cmd.name, cmd.roles))

    async def list_users(self, cmd: IdentityListUsers, env: Envelope) -> IdentityUsersListed:
        return IdentityUsersListed(users=[u for u in self.users.values() if u.tenant == env.tenant])

    async def create_key(self, cmd: IdentityCreateKey, env: Envelope) -> IdentityKeyCreated:
        user = self.users.get(cmd.user_id)
        if user is None or user.tenant != env.tenant:
            raise NotFound(f"no user {cmd.user_id!r} in tenant {env.tenant!r}")
        if cmd.key_id in self.keys:  # a redelivered command: the same key again
            return IdentityKeyCreated(key=self.keys[cmd.key_id].info)
        info = ApiKeyInfo(
            id=cmd.key_id,
            tenant=env.tenant,
            user=user.id,
            name=cmd.name,
            roles=cmd.roles if cmd.roles is not None else user.roles,
            models=cmd.models,
            created_at=time.time(),
            expires_at=cmd.expires_at,
        )
        self.keys[cmd.key_id] = KeyRecord(info, cmd.secret_sha256)
        return IdentityKeyCreated(key=info)

    async def list_keys(self, cmd: IdentityListKeys, env: Envelope) -> IdentityKeysListed:
        return IdentityKeysListed(
            keys=[
                k.info
                for k in self.keys.values()
                if k.info.tenant == env.tenant and cmd.user_id in (None, k.info.user)
            ]
        )

    async def revoke_key(self, cmd: IdentityRevokeKey, env: Envelope) -> IdentityKeyRevoked:
        record = self.keys.get(cmd.key_id)
        if record is None or record.info.tenant != env.tenant:
            raise NotFound(f"no API key {cmd.key_id!r}")
        if record.info.revoked_at is None:
            record.info = msgspec.structs.replace(record.info, revoked_at=time.time())
        return IdentityKeyRevoked(key=record.info)

    def service(self) -> Service:
        return Service(
            name="identity",
            routes={
                IdentityVerifyKey: self.verify_key,
                IdentityGetKeyLimits: self.key_limits,
                IdentityJwks: self.jwks,
                IdentityRevocations: self.list_revocations,
                IdentityIssueToken: self.issue,
                IdentityRefresh: self.refresh,
                IdentityRevoke: self.revoke,
                IdentityCreateTenant: self.create_tenant,
                IdentityListTenants: self.list_tenants,
                IdentityCreateUser: self.create_user,
                IdentityListUsers: self.list_users,
                IdentityCreateKey: self.create_key,
                IdentityListKeys: self.list_keys,
                IdentityRevokeKey: self.revoke_key,
            },
        )


def _words(text: str | None) -> int:
    return len((text or "").split())


def answer(turn: ChatTurnInput) -> ChatTurnResult:
    """The chat turn's outcome: echo, call the caller's first tool, report a tool's answer, or be
    refused by policy for a prompt that mentions "forbidden"."""
    last = turn.messages[-1]
    prompt_tokens = sum(_words(m.content) for m in turn.messages)
    if last.role == "user" and "forbidden" in (last.content or ""):
        return ChatTurnResult(
            message=ChatMessage(role="assistant", content=""),
            finish_reason="content_filter",
            model=turn.model,
            usage=Usage(prompt_tokens=prompt_tokens),
            policy=PolicyVerdict(
                decision="deny",
                reasons=["blocked topic: forbidden things"],
                rule_ids=["topics.forbidden"],
            ),
        )
    if last.role == "user" and turn.tools:
        call = ToolCall(
            id=f"call_{secrets.token_hex(6)}",
            name=turn.tools[0].name,
            arguments=json.dumps({"text": last.content}),
        )
        return ChatTurnResult(
            message=ChatMessage(role="assistant", tool_calls=[call]),
            finish_reason="tool_calls",
            model=turn.model,
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=5),
        )
    if last.role == "tool":
        content = f"The tool said: {last.content}"
    else:
        content = f"Echo: {last.content}"
    return ChatTurnResult(
        message=ChatMessage(role="assistant", content=content),
        finish_reason="stop",
        model=turn.model,
        usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=_words(content)),
    )


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]


@dataclass
class Sagas:
    """The saga runner's side of the contract: chat turns and agent tasks, per tenant."""

    nc: Client | None = None
    js: Any = None
    tasks: dict[tuple[str, str], SagaInfo] = field(default_factory=dict)
    running: set[asyncio.Task[None]] = field(default_factory=set)
    cancelled: list[str] = field(default_factory=list)

    async def _finish(self, env: Envelope, finished: SagaFinished) -> None:
        reply = env.reply("sagas.finished", f"{env.message_id}.finished")
        await publish(Connected(self.nc, self.js), finished, reply)

    async def _chat(self, cmd: SagaStart, env: Envelope) -> None:
        assert self.nc is not None and cmd.saga_id is not None
        turn = msgspec.convert(cmd.input, ChatTurnInput)
        if "slowly" in (turn.messages[-1].content or ""):
            await asyncio.sleep(SLOW_TURN)
        if turn.model == "soma-broken":
            await self._finish(
                env,
                SagaFinished(
                    saga_id=cmd.saga_id,
                    saga_type="chat_turn",
                    state="failed",
                    error="slm: provider at 10.1.2.3 said 500 (api key sk-live-abc123)",
                ),
            )
            return
        result = answer(turn)
        if turn.stream:
            subject = f"soma.stream.{cmd.saga_id}"
            index = 0
            pieces = _pieces(result.message.content or "")
            if "lossy" in (turn.messages[-1].content or ""):
                pieces = pieces[:2]  # core NATS may drop deltas; the result still has them all
            for piece in pieces:
                if piece:
                    await self.nc.publish(
                        subject, msgspec.json.encode(SlmDelta(index=index, content=piece))
                    )
                    index += 1
            for call in result.message.tool_calls or []:
                await self.nc.publish(
                    subject, msgspec.json.encode(SlmDelta(index=index, tool_call=call))
                )
                index += 1
            await self.nc.publish(
                subject,
                msgspec.json.encode(
                    SlmDelta(index=index, done=True, finish_reason=result.finish_reason)
                ),
            )
            await self.nc.flush()
        await self._finish(
            env,
            SagaFinished(
                saga_id=cmd.saga_id,
                saga_type="chat_turn",
                state="completed",
                result=msgspec.to_builtins(result),
            ),
        )

    async def start(self, cmd: SagaStart, env: Envelope) -> SagaStarted:
        assert cmd.saga_id is not None
        if cmd.saga_type == "chat_turn":
            task = asyncio.create_task(self._chat(cmd, env))
            self.running.add(task)
            task.add_done_callback(self.running.discard)
        elif cmd.saga_type == "agent_task":
            key = (env.tenant, cmd.saga_id)
            if key in self.tasks:
                raise Conflict(f"saga {cmd.saga_id} exists")
            now = time.time()
            self.tasks[key] = SagaInfo(
                saga_id=cmd.saga_id,
                saga_type=cmd.saga_type,
                state="running",
                created_at=now,
                updated_at=now,
                input=cmd.input,
                waiting_for=["approve"] if cmd.input.get("require_approval") else [],
            )
        else:
            raise Invalid(f"unknown saga type {cmd.saga_type!r}")
        return SagaStarted(saga_id=cmd.saga_id, saga_type=cmd.saga_type, version=1)

    async def signal(self, cmd: SagaSignal, env: Envelope) -> None:
        task = self.tasks.get((env.tenant, cmd.saga_id))
        if task is not None and cmd.name in task.waiting_for:
            self.tasks[(env.tenant, cmd.saga_id)] = msgspec.structs.replace(
                task,
                state="completed",
                waiting_for=[],
                result={"approved_by": cmd.payload.get("by")},
                updated_at=time.time(),
            )

    async def cancel(self, cmd: SagaCancel, env: Envelope) -> None:
        self.cancelled.append(cmd.saga_id)
        task = self.tasks.get((env.tenant, cmd.saga_id))
        if task is not None:
            self.tasks[(env.tenant, cmd.saga_id)] = msgspec.structs.replace(
                task, state="cancelled", error=cmd.reason or "cancelled", updated_at=time.time()
            )

    async def query(self, cmd: SagaQuery, env: Envelope) -> SagaQueried:
        return SagaQueried(saga=self.tasks.get((env.tenant, cmd.saga_id)))

    async def list(self, cmd: SagaList, env: Envelope) -> SagaListed:
        found = [
            s
            for (tenant, _), s in self.tasks.items()
            if tenant == env.tenant
            and cmd.saga_type in (None, s.saga_type)
            and cmd.state in (None, s.state)
        ]
        found.sort(key=lambda s: (s.created_at, s.saga_id), reverse=True)
        return SagaListed(sagas=found[: cmd.limit])

    async def open(self, url: str) -> None:
        self.nc = await connect(url, "standin-sagas")
        self.js = self.nc.jetstream()

    async def close(self) -> None:
        for task in list(self.running):
            await asyncio.wait({task}, timeout=5)
        if self.nc is not None:
            await self.nc.drain()

    def service(self, url: str) -> Service:
        async def opened(_: Connected) -> None:
            await self.open(url)

        return Service(
            name="sagas",
            routes={
                SagaStart: self.start,
                SagaSignal: self.signal,
                SagaCancel: self.cancel,
                SagaQuery: self.query,
                SagaList: self.list,
            },
            startup=[opened],
            shutdown=[self.close],
        )


def embed(text: str) -> list[float]:
    """Character trigram hashing, normalised: similar texts get similar vectors."""
    vector = [0.0] * EMBED_DIMS
    padded = f"  {text.lower()} "
    for i in range(len(padded) - 2):
        vector[int(_sha(padded[i : i + 3])[:8], 16) % EMBED_DIMS] += 1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


@dataclass
class Memory:
    items: dict[str, dict[str, MemoryItem]] = field(default_factory=lambda: defaultdict(dict))

    async def embed(self, cmd: MemoryEmbed, env: Envelope) -> MemoryEmbedded:
        if cmd.model not in (None, EMBED_MODEL):
            raise NotFound(f"unknown embedding model {cmd.model!r}")
        return MemoryEmbedded(
            model=EMBED_MODEL,
            vectors=[embed(t) for t in cmd.texts],
            prompt_tokens=sum(_words(t) for t in cmd.texts),
        )

    async def add(self, cmd: MemoryAdd, env: Envelope) -> MemoryAdded:
        store = self.items[env.tenant]
        created = cmd.id not in store
        if created:
            store[cmd.id] = MemoryItem(
                id=cmd.id, text=cmd.text, user=cmd.user, session=cmd.session, metadata=cmd.metadata
            )
        return MemoryAdded(id=cmd.id, created=created)

    async def recall(self, cmd: MemoryRecall, env: Envelope) -> MemoryRecalled:
        query = embed(cmd.query)
        scored = [
            msgspec.structs.replace(
                item, score=sum(a * b for a, b in zip(query, embed(item.text), strict=True))
            )
            for item in self.items[env.tenant].values()
            if cmd.user in (None, item.user) and cmd.session in (None, item.session)
        ]
        scored.sort(key=lambda i: i.score, reverse=True)
        return MemoryRecalled(items=scored[: cmd.top_k])

    async def delete(self, cmd: MemoryDelete, env: Envelope) -> MemoryDeleted:
        store = self.items[env.tenant]
        doomed = [
            k
            for k, item in store.items()
            if (cmd.ids is None or k in cmd.ids)
            and cmd.user in (None, item.user)
            and cmd.session in (None, item.session)
        ]
        for k in doomed:
            del store[k]
        return MemoryDeleted(deleted=len(doomed))

    def service(self) -> Service:
        return Service(
            name="memory",
            routes={
                MemoryEmbed: self.embed,
                MemoryAdd: self.add,
                MemoryRecall: self.recall,
                MemoryDelete: self.delete,
            },
        )


ADD_TOOL = ToolDescriptor(
    name="add",
    description="Add two numbers.",
    input_schema={
        "type": "object",
        "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
        "required": ["a", "b"],
    },
)
SHELL_TOOL = ToolDescriptor(name="shell", description="Run a command.", input_schema={})


async def _list_tools(cmd: ToolsList, env: Envelope) -> ToolsListed:
    return ToolsListed(tools=[ADD_TOOL, SHELL_TOOL])


async def _invoke_tool(cmd: ToolInvoke, env: Envelope) -> ToolResult:
    if cmd.name != "add":
        listed = cmd.name in {ADD_TOOL.name, SHELL_TOOL.name}
        return ToolResult(
            call_id=cmd.call_id,
            name=cmd.name,
            ok=False,
            error=f"no tool named {cmd.name!r}",
            code=None if listed else "unknown_tool",
        )
    a, b = cmd.arguments.get("a"), cmd.arguments.get("b")
    if not isinstance(a, int | float) or not isinstance(b, int | float):
        return ToolResult(
            call_id=cmd.call_id, name="add", ok=False, error="arguments a and b must be numbers"
        )
    return ToolResult(call_id=cmd.call_id, name="add", ok=True, output=a + b)


async def _evaluate(cmd: PolicyEvaluate, env: Envelope) -> PolicyEvaluated:
    denied = cmd.stage == "tool_call" and cmd.tool_name == "shell"
    return PolicyEvaluated(
        decision_id=env.message_id,
        decision="deny" if denied else "allow",
        stage=cmd.stage,
        reasons=["shell is not on the allow-list of this role"] if denied else [],
    )


async def _list_models(cmd: SlmListModels, env: Envelope) -> SlmModelsListed:
    return SlmModelsListed(models=[ModelInfo(id=m, created=1700000000) for m in CHAT_MODELS])


@dataclass
class Analytics:
    """Usage per tenant and model, from the ``sagas.finished`` events of chat turns."""

    rows: dict[tuple[str, str], UsageRow] = field(default_factory=dict)

    async def on_finished(self, event: SagaFinished, env: Envelope) -> None:
        if event.saga_type != "chat_turn":
            return
        result = event.result or {}
        model = str(result.get("model", "?"))
        usage = result.get("usage", {})
        row = self.rows.get((env.tenant, model), UsageRow(group={"model": model}))
        self.rows[(env.tenant, model)] = msgspec.structs.replace(
            row,
            requests=row.requests + 1,
            errors=row.errors + (event.state != "completed"),
            prompt_tokens=row.prompt_tokens + int(usage.get("prompt_tokens", 0)),
            completion_tokens=row.completion_tokens + int(usage.get("completion_tokens", 0)),
        )

    async def report(self, cmd: AnalyticsReport, env: Envelope) -> AnalyticsReported:
        return AnalyticsReported(
            rows=[r for (tenant, _), r in sorted(self.rows.items()) if tenant == env.tenant]
        )

    def service(self) -> Service:
        return Service(
            name="analytics",
            routes={AnalyticsReport: self.report},
            event_routes={"sagas.finished": self.on_finished},
        )


@dataclass
class World:
    identity: Identity
    sagas: Sagas
    memory: Memory
    analytics: Analytics
    running: list[Running]

    async def stop(self) -> None:
        for r in reversed(self.running):
            await r.stop()


async def start_world(settings: Settings) -> World:
    url = settings.nats_url or ""
    identity, sagas, memory, analytics = Identity(), Sagas(), Memory(), Analytics()
    services = [
        identity.service(),
        sagas.service(url),
        memory.service(),
        analytics.service(),
        Service(name="slm", routes={SlmListModels: _list_models}),
        Service(name="tools", routes={ToolsList: _list_tools, ToolInvoke: _invoke_tool}),
        Service(name="policy", routes={PolicyEvaluate: _evaluate}),
    ]
    running = [await start(s, settings) for s in services]
    await identity.publish_key_set(running[0].js)
    return World(identity, sagas, memory, analytics, running)
