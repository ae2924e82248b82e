"""Identity: credentials checked, tokens issued and revoked, tenants, users and API keys managed.

No secret travels on the bus, because the command and event streams are kept and operators tail
them: an API key's secret and a refresh token are sent as their SHA-256 (hex), and the gateway
generates new secrets itself and hands identity only their hashes. Only signed access tokens
(short-lived, revocable) appear in events.

Commands whose tenant is not known yet (key verification, refresh, key set and revocation polls)
travel under the tenant token ``_system``.

Revocations and the key set reach the gateways through the key-value bucket ``soma_revocations``
rather than a command each gateway would send every few seconds: identity writes a key when
something changes, each gateway loads the bucket at start and then watches it, and nothing is
written to the event stream while the system is idle. Each revocation is a ``Revocation`` under
``revocation_key``, kept by the server until it no longer matters; the public key set is an
``IdentityJwksPublished`` under ``JWKS_KEY``.
"""

import hashlib
from typing import Any, Literal

from schemas.base import Message

SYSTEM_TENANT = "_system"
# The roles a user or key may hold: ``operator`` (tenants, across tenants), ``admin`` (users,
# keys, usage and budgets of its tenant), ``service`` (any user's memories), ``member`` and
# ``user`` (call the API), ``agent`` (a role the default policy's tool lists name). Any other
# name is refused, so a typo never becomes a role nobody checks.
KNOWN_ROLES = ("operator", "admin", "service", "member", "user", "agent")
REVOCATIONS_BUCKET = "soma_revocations"
JWKS_KEY = "jwks"


class Budget(Message):
    """A spending limit: at most ``max_budget`` US dollars per window. The windows follow one
    another from ``budget_start`` (epoch seconds), each ``budget_duration`` long (``30d``,
    ``12h``: ``schemas.durations``); without a duration the one window never ends."""

    max_budget: float
    budget_duration: str | None = None
    budget_start: float = 0.0


class TenantInfo(Message):
    id: str
    name: str
    created_at: float
    budget: Budget | None = None


class UserInfo(Message):
    id: str
    tenant: str
    name: str
    roles: list[str] = []
    created_at: float = 0.0


class ApiKeyInfo(Message):
    """An API key as listed: never its secret."""

    id: str
    tenant: str
    user: str
    name: str = ""
    roles: list[str] = []
    models: list[str] | None = None
    created_at: float = 0.0
    expires_at: float | None = None
    revoked_at: float | None = None
    budget: Budget | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    metadata: dict[str, Any] = {}


class IdentityVerifyKey(Message):
    """Who does the API key ``sk-soma-<key_id>-<secret>`` speak for? Only the secret's hash."""

    key_id: str
    secret_sha256: str


class IdentityKeyVerified(Message):
    """The verdict; ``valid=False`` with a reason for unknown, revoked or expired keys."""

    key_id: str
    valid: bool
    reason: str = ""
    tenant: str = ""
    user: str = ""
    roles: list[str] = []
    models: list[str] | None = None
    expires_at: float | None = None
    # The key's own limits and its tenant's budget, enforced by the gateway without asking again.
    budget: Budget | None = None
    tenant_budget: Budget | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None


class IdentityGetKeyLimits(Message):
    """What an access token started from API key ``key_id`` (its ``key_id`` claim) is held to,
    asked by a gateway that has not verified the key itself. Sent under the token's tenant:
    another tenant's key is as unknown as a missing one."""

    key_id: str


class IdentityKeyLimitsFound(Message):
    """The key's limits and its tenant's budget, as ``IdentityKeyVerified`` carries them;
    ``valid=False`` with a reason for a key unknown in the tenant, revoked or expired."""

    key_id: str
    valid: bool
    reason: str = ""
    budget: Budget | None = None
    tenant_budget: Budget | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None


class IdentityJwks(Message):
    """Ask for the public signing keys (JWKS) accepted right now."""


class IdentityJwksPublished(Message):
    """Public JWKs (kty, crv, x, kid, alg, use) of every key whose tokens may still be valid."""

    keys: list[dict[str, Any]] = []


class Revocation(Message):
    """``jti``: one access token; ``session``: every token with that ``sid``; ``user``: every
    token of that user issued (``iat``) before ``revoked_at``. Forgettable after ``expires_at``."""

    kind: Literal["jti", "session", "user"]
    subject: str
    revoked_at: float
    expires_at: float


def revocation_key(revocation: Revocation) -> str:
    """One key per recorded revocation, the same whoever writes it, in the bucket's alphabet.

    Subjects are hashed because a ``jti`` may hold characters a key may not; the value carries
    the subject itself. ``revoked_at`` is part of the key so a later revocation of the same user
    never overwrites an earlier one with a smaller not-before time (or the reverse).
    """
    text = f"{revocation.kind}|{revocation.subject}|{revocation.revoked_at!r}"
    return f"{revocation.kind}.{hashlib.sha256(text.encode()).hexdigest()[:40]}"


class IdentityRevocations(Message):
    """Revocations recorded at or after ``since`` (all live ones when None)."""

    since: float | None = None


class IdentityRevocationsListed(Message):
    as_of: float
    revocations: list[Revocation] = []


class IdentityIssueToken(Message):
    """Exchange an API key for an access token, starting a refresh family whose first refresh
    token hashes to ``refresh_sha256`` (the gateway made the token; identity stores the hash)."""

    key_id: str
    secret_sha256: str
    refresh_sha256: str
    scope: list[str] = []
    client_id: str = ""


class IdentityTokenIssued(Message):
    access_token: str
    expires_in: int
    refresh_expires_in: int
    tenant: str
    user: str
    scope: list[str] = []
    session: str = ""


class IdentityRefresh(Message):
    """Rotate a refresh token: ``refresh_sha256`` is presented, ``new_refresh_sha256`` replaces it.
    A token already rotated once is reuse: the whole family is revoked and the command refused."""

    refresh_sha256: str
    new_refresh_sha256: str


class IdentityRefreshed(Message):
    access_token: str
    expires_in: int
    refresh_expires_in: int
    tenant: str
    user: str
    scope: list[str] = []
    session: str = ""


class IdentityRevoke(Message):
    """Revoke an access token (``jti`` until ``expires_at``), a refresh family (by a refresh
    token's hash), or every current token of a user of the envelope's tenant."""

    jti: str | None = None
    expires_at: float | None = None
    refresh_sha256: str | None = None
    user_id: str | None = None


class IdentityRevoked(Message):
    revoked: bool


class IdentityCreateTenant(Message):
    tenant_id: str
    name: str | None = None


class IdentityTenantCreated(Message):
    tenant: TenantInfo


class IdentityListTenants(Message):
    pass


class IdentityTenantsListed(Message):
    tenants: list[TenantInfo] = []


class IdentityCreateUser(Message):
    """A user in the envelope's tenant."""

    name: str
    roles: list[str] = []


class IdentityUserCreated(Message):
    user: UserInfo


class IdentityListUsers(Message):
    pass


class IdentityUsersListed(Message):
    users: list[UserInfo] = []


class IdentityCreateKey(Message):
    """Record an API key the gateway generated: ``sk-soma-<key_id>-<secret>`` with ``key_id`` 16
    hex digits; identity keeps ``secret_sha256``. ``roles`` None: the user's roles."""

    user_id: str
    key_id: str
    secret_sha256: str
    name: str = ""
    roles: list[str] | None = None
    models: list[str] | None = None
    expires_at: float | None = None
    max_budget: float | None = None
    budget_duration: str | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    metadata: dict[str, Any] = {}


class IdentityKeyCreated(Message):
    key: ApiKeyInfo


KeyField = Literal[
    "name",
    "models",
    "expires_at",
    "max_budget",
    "budget_duration",
    "rpm_limit",
    "tpm_limit",
    "metadata",
]


class IdentityUpdateKey(Message):
    """Change a key's limits in place (the secret stays): each field given is set, each named in
    ``clear`` removed (no limit); the rest stay. A changed budget starts a new window now."""

    key_id: str
    name: str | None = None
    models: list[str] | None = None
    expires_at: float | None = None
    max_budget: float | None = None
    budget_duration: str | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    metadata: dict[str, Any] | None = None
    clear: list[KeyField] = []


class IdentityKeyUpdated(Message):
    key: ApiKeyInfo


class IdentityGetKey(Message):
    """One key of the envelope's tenant, by id."""

    key_id: str


class IdentityKeyFound(Message):
    key: ApiKeyInfo


class IdentityUpdateTenant(Message):
    """Set (or, with ``clear``, remove) a tenant's budget: operators only."""

    tenant_id: str
    max_budget: float | None = None
    budget_duration: str | None = None
    clear: bool = False


class IdentityTenantUpdated(Message):
    tenant: TenantInfo


class IdentityListKeys(Message):
    user_id: str | None = None


class IdentityKeysListed(Message):
    keys: list[ApiKeyInfo] = []


class IdentityRevokeKey(Message):
    key_id: str


class IdentityKeyRevoked(Message):
    key: ApiKeyInfo
