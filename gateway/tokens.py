"""Access tokens verified locally: a cached key set and revocation list, no bus call per request.

Only EdDSA (Ed25519) is accepted, decided from our allow-list before any key is touched, so
``alg: none``, HS256 signed with the public key as a secret, or RS256 tricks never reach a
verifier. The key set is refreshed periodically and, at most once per ``miss_interval``, when a
token names a ``kid`` we do not know yet (a fresh rotation). Revocations are polled every few
seconds and applied to ``jti``, ``sid`` (a refresh family) and per-user not-before times.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from schemas.identity import Revocation

log = logging.getLogger("soma.gateway.tokens")

ALGORITHM = "EdDSA"
TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
_TENANT = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_PUBLIC_JWK_FIELDS = ("kty", "crv", "x", "kid", "alg", "use")
_REQUIRED = ["exp", "iat", "sub", "jti", "iss", "aud"]


class InvalidToken(Exception):
    """The token does not identify anyone now; the reason is for logs, not for callers."""


class UnknownKey(InvalidToken):
    pass


class VerificationUnavailable(Exception):
    """The revocation list is too old to trust: refuse rather than accept a revoked token."""


@dataclass(frozen=True)
class TokenRules:
    issuer: str
    audience: str
    leeway: float = 5.0


@dataclass(frozen=True)
class AccessClaims:
    subject: str
    tenant: str
    roles: tuple[str, ...]
    scope: tuple[str, ...]
    client_id: str | None
    jti: str
    session: str | None
    issued_at: float
    expires_at: float
    models: tuple[str, ...] | None
    key_id: str | None


class KeySet:
    """Public Ed25519 keys by ``kid``; anything else in a JWKS is ignored."""

    def __init__(self) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._public: list[dict[str, Any]] = []
        self.loaded = False

    def replace(self, jwks: list[dict[str, Any]]) -> None:
        keys: dict[str, Ed25519PublicKey] = {}
        public: list[dict[str, Any]] = []
        for jwk in jwks:
            kid = jwk.get("kid")
            if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or not isinstance(kid, str):
                continue
            shown = {k: jwk[k] for k in _PUBLIC_JWK_FIELDS if k in jwk}
            try:
                key = jwt.PyJWK(shown, algorithm=ALGORITHM).key
            except jwt.PyJWTError as exc:
                log.warning("ignoring unusable JWK %s: %s", kid, exc)
                continue
            if isinstance(key, Ed25519PublicKey):
                keys[kid] = key
                public.append(shown)
        self._keys, self._public, self.loaded = keys, public, True

    def get(self, kid: str) -> Ed25519PublicKey | None:
        return self._keys.get(kid)

    def public_jwks(self) -> dict[str, Any]:
        return {"keys": list(self._public)}


class RevocationList:
    def __init__(self) -> None:
        self._jtis: dict[str, float] = {}
        self._sessions: dict[str, float] = {}
        # user id → (revoked_at, expires_at): tokens issued at or before revoked_at are dead.
        self._users: dict[str, tuple[float, float]] = {}
        self.as_of: float | None = None

    def apply(self, revocations: list[Revocation], as_of: float | None = None) -> None:
        for r in revocations:
            if r.kind == "jti":
                self._jtis[r.subject] = max(r.expires_at, self._jtis.get(r.subject, 0.0))
            elif r.kind == "session":
                self._sessions[r.subject] = max(r.expires_at, self._sessions.get(r.subject, 0.0))
            elif r.kind == "user":
                old = self._users.get(r.subject, (0.0, 0.0))
                self._users[r.subject] = (max(old[0], r.revoked_at), max(old[1], r.expires_at))
        if as_of is not None:
            self.as_of = as_of

    def prune(self, now: float) -> None:
        self._jtis = {k: v for k, v in self._jtis.items() if v > now}
        self._sessions = {k: v for k, v in self._sessions.items() if v > now}
        self._users = {k: v for k, v in self._users.items() if v[1] > now}

    def revokes(self, claims: AccessClaims) -> bool:
        if claims.jti in self._jtis:
            return True
        if claims.session and claims.session in self._sessions:
            return True
        user = self._users.get(claims.subject)
        return user is not None and claims.issued_at <= user[0]


def _strings(value: Any, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise InvalidToken(f"claim {name} is not a string list")


def _optional_str(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None or isinstance(value, str):
        return value or None
    raise InvalidToken(f"claim {name} is not a string")


def verify(
    token: str, keys: KeySet, revoked: RevocationList, rules: TokenRules, now: float
) -> AccessClaims:
    """The claims of a valid, unrevoked access token, or ``InvalidToken`` saying why not."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"malformed token: {exc}") from exc
    if header.get("alg") != ALGORITHM:
        raise InvalidToken(f"algorithm {header.get('alg')!r} is not accepted")
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() not in TOKEN_TYPES:
        raise InvalidToken(f"token type {typ!r} is not an access token")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidToken("token names no key id")
    key = keys.get(kid)
    if key is None:
        raise UnknownKey(f"unknown signing key {kid!r}")
    try:
        claims = jwt.decode(
            token,
            key=key,
            algorithms=[ALGORITHM],
            audience=rules.audience,
            issuer=rules.issuer,
            leeway=rules.leeway,
            options={"require": _REQUIRED, "verify_iat": True},
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"{type(exc).__name__}: {exc}") from exc
    # PyJWT checks these against the real clock; ``now`` is checked too so tests and callers
    # with their own clock agree.
    exp, iat = claims["exp"], claims["iat"]
    if not isinstance(exp, int | float) or not isinstance(iat, int | float):
        raise InvalidToken("exp and iat must be numbers")
    if exp + rules.leeway <= now:
        raise InvalidToken("token expired")
    if iat - rules.leeway > now:
        raise InvalidToken("token issued in the future")
    tenant = claims.get("tenant")
    if not isinstance(tenant, str) or not _TENANT.fullmatch(tenant):
        raise InvalidToken("token has no valid tenant claim")
    subject, jti = claims["sub"], claims["jti"]
    if not isinstance(subject, str) or not subject or not isinstance(jti, str) or not jti:
        raise InvalidToken("sub and jti must be non-empty strings")
    models = claims.get("models")
    result = AccessClaims(
        subject=subject,
        tenant=tenant,
        roles=_strings(claims.get("roles"), "roles"),
        scope=_strings(claims.get("scope"), "scope"),
        client_id=_optional_str(claims, "client_id"),
        jti=jti,
        session=_optional_str(claims, "sid"),
        issued_at=float(iat),
        expires_at=float(exp),
        models=None if models is None else _strings(models, "models"),
        key_id=_optional_str(claims, "key_id"),
    )
    if revoked.revokes(result):
        raise InvalidToken("token revoked")
    return result


FetchKeys = Callable[[], Awaitable[list[dict[str, Any]]]]
FetchRevocations = Callable[[float | None], Awaitable[tuple[list[Revocation], float]]]

# Revocations are asked for again from a little before the last snapshot, so one committed
# slightly late (its ``revoked_at`` before the previous ``as_of``) is still picked up.
_OVERLAP = 30.0
# And the whole list is fetched again now and then, so nothing missed stays missed.
_FULL_RESYNC = 300.0


class TokenVerifier:
    """``verify`` plus the background refresh of the key set and the revocation list."""

    def __init__(
        self,
        rules: TokenRules,
        fetch_keys: FetchKeys,
        fetch_revocations: FetchRevocations,
        *,
        keys_every: float = 30.0,
        miss_interval: float = 5.0,
        revocations_every: float = 2.0,
        revocations_max_age: float = 300.0,
    ) -> None:
        self.rules = rules
        self.keys = KeySet()
        self.revoked = RevocationList()
        self._fetch_keys = fetch_keys
        self._fetch_revocations = fetch_revocations
        self._keys_every = keys_every
        self._miss_interval = miss_interval
        self._revocations_every = revocations_every
        self._max_age = revocations_max_age
        self._last_miss_fetch = -float("inf")
        self._last_full = -float("inf")
        self._snapshot_at: float | None = None
        self._keys_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    async def verify(self, token: str) -> AccessClaims:
        self._check_fresh()
        try:
            return verify(token, self.keys, self.revoked, self.rules, time.time())
        except UnknownKey:
            if not await self._refresh_on_miss():
                raise
        return verify(token, self.keys, self.revoked, self.rules, time.time())

    def revoke_locally(self, claims: AccessClaims) -> None:
        """Apply a revocation made through this gateway at once, before the next poll."""
        self.revoked.apply(
            [
                Revocation(
                    kind="jti",
                    subject=claims.jti,
                    revoked_at=time.time(),
                    expires_at=claims.expires_at + self.rules.leeway,
                )
            ]
        )

    def _check_fresh(self) -> None:
        if not self._max_age:
            return
        if self._snapshot_at is None or time.monotonic() - self._snapshot_at > self._max_age:
            raise VerificationUnavailable("the revocation list is not current")

    async def _refresh_on_miss(self) -> bool:
        async with self._keys_lock:
            if time.monotonic() - self._last_miss_fetch < self._miss_interval:
                return False
            self._last_miss_fetch = time.monotonic()
            try:
                self.keys.replace(await self._fetch_keys())
            except Exception as exc:
                log.warning("fetching the key set failed: %s", exc)
                return False
            return True

    async def refresh_keys(self) -> None:
        async with self._keys_lock:
            self.keys.replace(await self._fetch_keys())

    async def poll_revocations(self) -> None:
        full = time.monotonic() - self._last_full > _FULL_RESYNC or self.revoked.as_of is None
        since = None if full else (self.revoked.as_of or 0.0) - _OVERLAP
        revocations, as_of = await self._fetch_revocations(since)
        if full:
            fresh = RevocationList()
            fresh.apply(revocations, as_of)
            self.revoked = fresh
            self._last_full = time.monotonic()
        else:
            self.revoked.apply(revocations, as_of)
        self.revoked.prune(time.time() - self.rules.leeway)
        self._snapshot_at = time.monotonic()

    async def _every(self, seconds: float, step: Callable[[], Awaitable[None]], what: str) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("refreshing %s failed: %s", what, exc)

    async def prime(self) -> None:
        """Fetch the key set and revocations once, so the first requests find them."""
        for step, what in (
            (self.refresh_keys, "the key set"),
            (self.poll_revocations, "revocations"),
        ):
            try:
                await step()
            except Exception as exc:
                log.warning(
                    "fetching %s at start failed (retrying in the background): %s", what, exc
                )

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._every(self._keys_every, self.refresh_keys, "the key set")),
            asyncio.create_task(
                self._every(self._revocations_every, self.poll_revocations, "revocations")
            ),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
