"""The subject catalogue: the one table mapping every message to its subject, stream and owner.

Commands travel on ``soma.cmd.<tenant>.<service>.<verb>``, events on
``soma.evt.<tenant>.<service>.<event>``, token deltas on core NATS ``soma.stream.<correlation>``.
A message's name is ``<service>.<token>`` and is what the ``Soma-Schema`` header carries.

This table lists Soma's own messages. A service author's messages live in their own package and
join the catalogue through ``schemas.extensions`` (an entry point, or ``register``); a lookup
that misses here looks for newly installed ones before it gives up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from schemas.analytics import AnalyticsReport, AnalyticsReported
from schemas.chat import ChatTurnFinished
from schemas.common import CommandFailed
from schemas.identity import (
    IdentityCreateKey,
    IdentityCreateTenant,
    IdentityCreateUser,
    IdentityGetKey,
    IdentityGetKeyLimits,
    IdentityIssueToken,
    IdentityJwks,
    IdentityJwksPublished,
    IdentityKeyCreated,
    IdentityKeyFound,
    IdentityKeyLimitsFound,
    IdentityKeyRevoked,
    IdentityKeysListed,
    IdentityKeyUpdated,
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
    IdentityTenantUpdated,
    IdentityTokenIssued,
    IdentityUpdateKey,
    IdentityUpdateTenant,
    IdentityUserCreated,
    IdentityUsersListed,
    IdentityVerifyKey,
)
from schemas.memory import (
    MemoryAdd,
    MemoryAdded,
    MemoryDelete,
    MemoryDeleted,
    MemoryEmbed,
    MemoryEmbedded,
    MemoryList,
    MemoryListed,
    MemoryRecall,
    MemoryRecalled,
    MemoryStore,
    MemoryStored,
)
from schemas.models import SlmListModels, SlmModelsListed
from schemas.policy import (
    PolicyConstitutionChanged,
    PolicyConstitutionRefused,
    PolicyEvaluate,
    PolicyEvaluated,
)
from schemas.sagas import (
    SagaCancel,
    SagaFinished,
    SagaList,
    SagaListed,
    SagaQueried,
    SagaQuery,
    SagaReplied,
    SagaRetried,
    SagaRetry,
    SagaSignal,
    SagaStart,
    SagaStarted,
    SagaTerminate,
)
from schemas.slm import SlmComplete, SlmCompleted, SlmDelta
from schemas.tools import ToolInvoke, ToolResult, ToolsList, ToolsListed

Kind = Literal["cmd", "evt", "stream"]

STREAMS = {"cmd": "SOMA_CMD", "evt": "SOMA_EVT", "dlq": "SOMA_DLQ"}
DEAD_LETTER_PREFIX = "soma.dlq"
_DECODERS: dict[type, msgspec.json.Decoder[Any]] = {}


@dataclass(frozen=True)
class MessageType:
    name: str
    type: type[msgspec.Struct]
    kind: Kind
    service: str
    token: str
    version: int = 1
    description: str = ""

    def subject(self, tenant: str, correlation_id: str = "") -> str:
        if self.kind == "stream":
            return f"soma.stream.{correlation_id}"
        return f"soma.{self.kind}.{tenant}.{self.service}.{self.token}"

    @property
    def pattern(self) -> str:
        if self.kind == "stream":
            return "soma.stream.*"
        return f"soma.{self.kind}.*.{self.service}.{self.token}"

    @property
    def stream(self) -> str | None:
        return STREAMS.get(self.kind)

    def decode(self, body: bytes) -> Any:
        decoder = _DECODERS.get(self.type)
        if decoder is None:
            decoder = _DECODERS[self.type] = msgspec.json.Decoder(self.type)
        return decoder.decode(body)


def _entry(kind: Kind, service: str, token: str, type_: type[msgspec.Struct]) -> MessageType:
    doc = (type_.__doc__ or "").strip().splitlines()
    return MessageType(f"{service}.{token}", type_, kind, service, token, 1, doc[0] if doc else "")


SERVICES = ("policy", "memory", "slm", "tools", "sagas", "identity", "analytics")
# Names no service author may declare messages under: Soma's services, and the gateway, which
# publishes events of its own but takes no commands (so it has no ``failed`` event).
RESERVED = (*SERVICES, "gateway")

_ENTRIES = [
    _entry("cmd", "policy", "evaluate", PolicyEvaluate),
    _entry("evt", "policy", "evaluated", PolicyEvaluated),
    _entry("evt", "policy", "constitution_changed", PolicyConstitutionChanged),
    _entry("evt", "policy", "constitution_refused", PolicyConstitutionRefused),
    _entry("cmd", "memory", "recall", MemoryRecall),
    _entry("evt", "memory", "recalled", MemoryRecalled),
    _entry("cmd", "memory", "store", MemoryStore),
    _entry("evt", "memory", "stored", MemoryStored),
    _entry("cmd", "slm", "complete", SlmComplete),
    _entry("evt", "slm", "completed", SlmCompleted),
    _entry("stream", "slm", "delta", SlmDelta),
    _entry("cmd", "tools", "invoke", ToolInvoke),
    _entry("evt", "tools", "result", ToolResult),
    _entry("cmd", "sagas", "start", SagaStart),
    _entry("cmd", "sagas", "signal", SagaSignal),
    _entry("cmd", "sagas", "cancel", SagaCancel),
    _entry("cmd", "sagas", "terminate", SagaTerminate),
    _entry("cmd", "sagas", "retry", SagaRetry),
    _entry("evt", "sagas", "retried", SagaRetried),
    _entry("evt", "sagas", "started", SagaStarted),
    _entry("evt", "sagas", "finished", SagaFinished),
    _entry("evt", "sagas", "replied", SagaReplied),
    _entry("evt", "gateway", "turn_finished", ChatTurnFinished),
    *(_entry("evt", service, "failed", CommandFailed) for service in SERVICES),
    # The gateway's request/reply pairs (gateway/CONTRACTS.md).
    _entry("cmd", "slm", "list_models", SlmListModels),
    _entry("evt", "slm", "models_listed", SlmModelsListed),
    _entry("cmd", "memory", "embed", MemoryEmbed),
    _entry("evt", "memory", "embedded", MemoryEmbedded),
    _entry("cmd", "memory", "add", MemoryAdd),
    _entry("evt", "memory", "added", MemoryAdded),
    _entry("cmd", "memory", "delete", MemoryDelete),
    _entry("evt", "memory", "deleted", MemoryDeleted),
    _entry("cmd", "memory", "list", MemoryList),
    _entry("evt", "memory", "listed", MemoryListed),
    _entry("cmd", "tools", "list", ToolsList),
    _entry("evt", "tools", "listed", ToolsListed),
    _entry("cmd", "analytics", "report", AnalyticsReport),
    _entry("evt", "analytics", "reported", AnalyticsReported),
    _entry("cmd", "sagas", "query", SagaQuery),
    _entry("evt", "sagas", "queried", SagaQueried),
    _entry("cmd", "sagas", "list", SagaList),
    _entry("evt", "sagas", "listed", SagaListed),
    _entry("cmd", "identity", "verify_key", IdentityVerifyKey),
    _entry("evt", "identity", "key_verified", IdentityKeyVerified),
    _entry("cmd", "identity", "jwks", IdentityJwks),
    _entry("evt", "identity", "jwks_published", IdentityJwksPublished),
    _entry("cmd", "identity", "revocations", IdentityRevocations),
    _entry("evt", "identity", "revocations_listed", IdentityRevocationsListed),
    _entry("cmd", "identity", "issue_token", IdentityIssueToken),
    _entry("evt", "identity", "token_issued", IdentityTokenIssued),
    _entry("cmd", "identity", "refresh", IdentityRefresh),
    _entry("evt", "identity", "refreshed", IdentityRefreshed),
    _entry("cmd", "identity", "revoke", IdentityRevoke),
    _entry("evt", "identity", "revoked", IdentityRevoked),
    _entry("cmd", "identity", "create_tenant", IdentityCreateTenant),
    _entry("evt", "identity", "tenant_created", IdentityTenantCreated),
    _entry("cmd", "identity", "list_tenants", IdentityListTenants),
    _entry("evt", "identity", "tenants_listed", IdentityTenantsListed),
    _entry("cmd", "identity", "create_user", IdentityCreateUser),
    _entry("evt", "identity", "user_created", IdentityUserCreated),
    _entry("cmd", "identity", "list_users", IdentityListUsers),
    _entry("evt", "identity", "users_listed", IdentityUsersListed),
    _entry("cmd", "identity", "create_key", IdentityCreateKey),
    _entry("evt", "identity", "key_created", IdentityKeyCreated),
    _entry("cmd", "identity", "list_keys", IdentityListKeys),
    _entry("evt", "identity", "keys_listed", IdentityKeysListed),
    _entry("cmd", "identity", "revoke_key", IdentityRevokeKey),
    _entry("evt", "identity", "key_revoked", IdentityKeyRevoked),
    _entry("cmd", "identity", "update_key", IdentityUpdateKey),
    _entry("evt", "identity", "key_updated", IdentityKeyUpdated),
    _entry("cmd", "identity", "get_key", IdentityGetKey),
    _entry("evt", "identity", "key_found", IdentityKeyFound),
    _entry("cmd", "identity", "update_tenant", IdentityUpdateTenant),
    _entry("evt", "identity", "tenant_updated", IdentityTenantUpdated),
    _entry("cmd", "identity", "get_key_limits", IdentityGetKeyLimits),
    _entry("evt", "identity", "key_limits_found", IdentityKeyLimitsFound),
]

CATALOGUE: dict[str, MessageType] = {e.name: e for e in _ENTRIES}
_BY_TYPE: dict[type, MessageType] = {e.type: e for e in _ENTRIES if e.token != "failed"}


class UnknownMessage(LookupError):
    pass


class CatalogueConflict(ValueError):
    """A registration that would change or shadow a message already in the catalogue."""


def add(entries: list[MessageType]) -> None:
    """Put a service author's messages in the catalogue, beside ours; see ``schemas.extensions``.

    All or nothing: a name taken by another type, a type registered under another name, or a
    message on one of Soma's own services is refused before anything changes, so two packages
    can never quietly redefine what a subject carries.
    """
    for entry in entries:
        if entry.service in RESERVED:
            raise CatalogueConflict(
                f"{entry.name}: the service {entry.service!r} is one of Soma's own; "
                "declare your messages under your own service name"
            )
        known = CATALOGUE.get(entry.name)
        if known is not None and known != entry:
            raise CatalogueConflict(
                f"{entry.name} is already registered as {known.type.__module__}."
                f"{known.type.__qualname__}; choose another name"
            )
        owner = _BY_TYPE.get(entry.type)
        if owner is not None and owner.name != entry.name and entry.token != "failed":
            raise CatalogueConflict(
                f"{entry.type.__qualname__} is already registered as {owner.name}; "
                "a type travels under one name only"
            )
    for entry in entries:
        CATALOGUE[entry.name] = entry
        if entry.token != "failed":
            _BY_TYPE[entry.type] = entry


def _discover() -> bool:
    """Load newly installed service authors' messages; True when the catalogue grew."""
    from schemas import extensions

    return extensions.discover_on_miss()


def by_name(name: str) -> MessageType:
    entry = CATALOGUE.get(name)
    if entry is None and _discover():
        entry = CATALOGUE.get(name)
    if entry is None:
        raise UnknownMessage(f"no message named {name!r} in the catalogue")
    return entry


def of_type(type_: type) -> MessageType:
    entry = _BY_TYPE.get(type_)
    if entry is None and _discover():
        entry = _BY_TYPE.get(type_)
    if entry is None:
        raise UnknownMessage(
            f"{type_.__name__} is not in the catalogue (a service author's message is "
            "registered with schemas.extensions.register or a 'soma.messages' entry point)"
        )
    return entry


def failed_event(service: str) -> MessageType:
    return CATALOGUE[f"{service}.failed"]


def by_subject(subject: str) -> MessageType:
    """The message type a concrete subject carries (``soma.cmd.acme.policy.evaluate``)."""
    parts = subject.split(".")
    if len(parts) == 5 and parts[0] == "soma" and parts[1] in ("cmd", "evt"):
        name = f"{parts[3]}.{parts[4]}"
        entry = CATALOGUE.get(name)
        if entry is None and _discover():
            entry = CATALOGUE.get(name)
        if entry and entry.kind == parts[1]:
            return entry
    if len(parts) == 3 and parts[:2] == ["soma", "stream"]:
        return CATALOGUE["slm.delta"]
    raise UnknownMessage(
        f"subject {subject!r} is not in the catalogue "
        "(expected soma.cmd.<tenant>.<service>.<verb> or soma.evt.<tenant>.<service>.<event>)"
    )


def commands_of(service: str) -> list[MessageType]:
    return [e for e in CATALOGUE.values() if e.service == service and e.kind == "cmd"]
