"""Access tokens verified locally: a cached key set and revocation list, no bus call per request.

Only EdDSA (Ed25519) is accepted, decided from our allow-list before any key is touched, so
``alg: none``, HS256 signed with the public key as a secret, or RS256 tricks never reach a
verifier. The key set and the revocations follow identity's ``soma_revocations`` bucket (watched,
never polled); the key set is also read again, at most once per ``miss_interval``, when a token
names a ``kid`` the watch has not shown yet. Revocations apply to ``jti``, ``sid`` (a refresh
family) and per-user not-before times.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from schemas.identity import JWKS_KEY, IdentityJwksPublished, Revocation

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


# How often the watch is checked on (locally, no bus traffic): a reconnect starts a fresh watch,
# and the in-memory list is pruned.
_CHECK_EVERY = 0.5


class TokenVerifier:
    """``verify`` over a key set and revocation list that follow identity's bucket.

    The gateway loads the ``soma_revocations`` bucket (signing keys and revocations) when it
    starts and then watches it, so a revocation reaches it as soon as identity writes it, and an
    idle system sends nothing. After a reconnect the bucket is loaded again from the start, so
    nothing written while the connection was down is missed; until that load completes the
    previous list stays in force. If the list cannot be kept current for ``revocations_max_age``
    seconds, access tokens are refused (fail closed) rather than risk accepting a revoked one.
    """

    def __init__(
        self,
        rules: TokenRules,
        kv: KeyValue,
        connected: Callable[[], bool],
        reconnects: Callable[[], int],
        *,
        miss_interval: float = 5.0,
        revocations_max_age: float = 300.0,
    ) -> None:
        self.rules = rules
        self.keys = KeySet()
        self.revoked = RevocationList()
        self._kv = kv
        self._connected = connected
        self._reconnects = reconnects
        self._miss_interval = miss_interval
        self._max_age = revocations_max_age
        self._last_miss_fetch = -float("inf")
        # When the list was last known current: loaded, and the watch connected since.
        self._current_at: float | None = None
        self._keys_lock = asyncio.Lock()
        self._watch: asyncio.Task[None] | None = None
        self._check: asyncio.Task[None] | None = None
        self._loaded = asyncio.Event()

    async def verify(self, token: str) -> AccessClaims:
        self._check_fresh()
        try:
            return verify(token, self.keys, self.revoked, self.rules, time.time())
        except UnknownKey:
            if not await self._refresh_on_miss():
                raise
        return verify(token, self.keys, self.revoked, self.rules, time.time())

    def revoke_locally(self, claims: AccessClaims) -> None:
        """Apply a revocation made through this gateway at once, before the bucket says so."""
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
        if self._current_at is None or time.monotonic() - self._current_at > self._max_age:
            raise VerificationUnavailable("the revocation list is not current")

    async def _refresh_on_miss(self) -> bool:
        async with self._keys_lock:
            if time.monotonic() - self._last_miss_fetch < self._miss_interval:
                return False
            self._last_miss_fetch = time.monotonic()
            try:
                await self.refresh_keys()
            except Exception as exc:
                log.warning("reading the key set failed: %s", exc)
                return False
            return True

    async def refresh_keys(self) -> None:
        """Read the key set from the bucket now (a token names a key the watch has not shown)."""
        try:
            entry = await self._kv.get(JWKS_KEY)
        except KeyNotFoundError:
            return
        if entry.value:
            self.keys.replace(_decode_jwks(entry.value))

    async def _follow(self) -> None:
        """Load the whole bucket into a fresh list, swap it in, then apply each change."""
        watcher = await self._kv.watchall()
        fresh: RevocationList | None = RevocationList()
        try:
            while True:
                entry = await watcher.updates(timeout=None)
                if entry is None:  # the current contents are loaded: from here on, changes
                    if fresh is not None:
                        fresh.prune(time.time() - self.rules.leeway)
                        self.revoked, fresh = fresh, None
                        self._current_at = time.monotonic()
                        self._loaded.set()
                    continue
                if entry.operation is not None or not entry.value:
                    continue  # a delete or an expiry: entries are pruned by their own time
                try:
                    if entry.key == JWKS_KEY:
                        self.keys.replace(_decode_jwks(entry.value))
                    else:
                        revocation = _REVOCATION.decode(entry.value)
                        (fresh or self.revoked).apply([revocation])
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    log.warning("ignoring unreadable entry %s: %s", entry.key, exc)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()

    async def _watch_forever(self) -> None:
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("watching revocations failed (retrying): %s", exc)
            await asyncio.sleep(1.0)

    def _restart_watch(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        self._watch = asyncio.create_task(self._watch_forever())

    async def _keep_current(self) -> None:
        seen = self._reconnects()
        while True:
            await asyncio.sleep(_CHECK_EVERY)
            if not self._connected():
                continue
            if self._reconnects() != seen:
                seen = self._reconnects()
                self._restart_watch()  # anything written while away comes with the reload
                continue
            if self._current_at is not None and self._watch is not None and self._loaded.is_set():
                self._current_at = time.monotonic()
            self.revoked.prune(time.time() - self.rules.leeway)

    async def prime(self, wait: float = 5.0) -> None:
        """Start following the bucket and wait (a little) until its contents are loaded, so the
        first requests find the key set and the revocations."""
        self._restart_watch()
        self._check = asyncio.create_task(self._keep_current())
        try:
            await asyncio.wait_for(self._loaded.wait(), wait)
        except TimeoutError:
            log.warning("the revocations bucket is not loaded yet (still trying)")

    def start(self) -> None:
        """Kept for callers that prime and start in two steps: ``prime`` already follows."""

    async def stop(self) -> None:
        for task in (self._check, self._watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._check = self._watch = None


_REVOCATION = msgspec.json.Decoder(Revocation)
_JWKS = msgspec.json.Decoder(IdentityJwksPublished)


def _decode_jwks(value: bytes) -> list[dict[str, Any]]:
    return _JWKS.decode(value).keys
