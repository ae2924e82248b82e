"""Local verification of access tokens: what the gateway runs on every request.

No bus and no SQL here. A holder feeds a ``Verifier`` the JWKS (``signing_keys.jwks``) and
revocation updates (``revocation.revocations_since``); each request is then checked in memory.
(The gateway keeps its own copy of these checks in ``gateway.tokens``, fed from the watched
``soma_revocations`` bucket.) Every failure is a subclass of ``errors.InvalidToken`` (HTTP 401).

Checks, in order: a JWT at all; ``typ`` is ``at+jwt`` (RFC 9068, so no other kind of JWT passes
as an access token); algorithm EdDSA only — ``none`` and HMAC tricks with the public key as
secret never reach a verifier; ``kid`` in the key set; signature; ``iss`` and ``aud``; required
claims and their types; ``exp`` / ``nbf`` / ``iat`` with a small leeway; revocation by ``jti``,
by session (``sid``) and by the user's not-before time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from handlers.identity.errors import (
    BadSignature,
    DisallowedAlgorithm,
    MalformedToken,
    TokenExpired,
    TokenNotYetValid,
    TokenRevoked,
    UnknownSigningKey,
    WrongAudience,
    WrongIssuer,
)
from handlers.identity.principal import Principal

ALGORITHMS = ("EdDSA",)
TOKEN_TYPES = ("at+jwt", "application/at+jwt")
REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "jti", "client_id", "tenant")


@dataclass(frozen=True, slots=True)
class RevocationUpdate:
    """Revocations recorded since a cursor (or all of them when ``complete``).

    Each entry carries the time after which it no longer matters (every token it covers has
    expired), so a holder can forget it then.
    """

    tokens: Mapping[str, float] = field(default_factory=dict)  # jti -> until
    sessions: Mapping[str, float] = field(default_factory=dict)  # sid -> until
    users: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # sub -> (nbf, until)
    cursor: float | None = None
    complete: bool = False


def load_jwks(document: Mapping[str, Any]) -> dict[str, Ed25519PublicKey]:
    """kid -> public key, keeping only well-formed Ed25519 signing keys; others are ignored."""
    keys: dict[str, Ed25519PublicKey] = {}
    for jwk in document.get("keys", []):
        if not isinstance(jwk, Mapping) or "d" in jwk:
            continue
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            continue
        if jwk.get("alg", "EdDSA") != "EdDSA" or jwk.get("use", "sig") != "sig":
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid:
            continue
        try:
            key = jwt.PyJWK(dict(jwk), algorithm="EdDSA").key
        except (jwt.PyJWTError, ValueError):
            continue
        if isinstance(key, Ed25519PublicKey):
            keys[kid] = key
    return keys


def _number(claims: Mapping[str, Any], name: str) -> float:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedToken(f"claim {name!r} is not a number")
    return float(value)


def _text(claims: Mapping[str, Any], name: str) -> str:
    value = claims[name]
    if not isinstance(value, str) or not value:
        raise MalformedToken(f"claim {name!r} is not a non-empty string")
    return value


def _strings(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MalformedToken(f"claim {name!r} is not a list of strings")
    return tuple(value)


class Verifier:
    """The cached key set and revocation state of one gateway process."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks: Mapping[str, Any] | None = None,
        leeway: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.clock = clock
        self._keys: dict[str, Ed25519PublicKey] = load_jwks(jwks) if jwks else {}
        self._tokens: dict[str, float] = {}
        self._sessions: dict[str, float] = {}
        self._users: dict[str, tuple[float, float]] = {}
        self.cursor: float | None = None

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    @property
    def revoked_tokens(self) -> frozenset[str]:
        return frozenset(self._tokens)

    def set_jwks(self, document: Mapping[str, Any]) -> None:
        """Replace the key set (keys absent from the new document stop verifying)."""
        self._keys = load_jwks(document)

    def apply(self, update: RevocationUpdate, now: float | None = None) -> None:
        """Merge a revocation update (replace everything when it is complete)."""
        now = self.clock() if now is None else now
        if update.complete:
            self._tokens, self._sessions, self._users = {}, {}, {}
        for jti, until in update.tokens.items():
            self._tokens[jti] = max(until, self._tokens.get(jti, until))
        for sid, until in update.sessions.items():
            self._sessions[sid] = max(until, self._sessions.get(sid, until))
        for sub, (not_before, until) in update.users.items():
            old_nbf, old_until = self._users.get(sub, (not_before, until))
            self._users[sub] = (max(not_before, old_nbf), max(until, old_until))
        self._tokens = {k: u for k, u in self._tokens.items() if u >= now}
        self._sessions = {k: u for k, u in self._sessions.items() if u >= now}
        self._users = {k: v for k, v in self._users.items() if v[1] >= now}
        if update.cursor is not None:
            self.cursor = update.cursor if self.cursor is None else max(self.cursor, update.cursor)

    def verify(self, token: str, now: float | None = None) -> Principal:
        now = self.clock() if now is None else now
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise MalformedToken(f"not a JWT: {exc}") from exc
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise DisallowedAlgorithm(f"algorithm {alg!r} is not accepted")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in TOKEN_TYPES:
            raise MalformedToken(f"token type {typ!r} is not an access token (at+jwt)")
        if "crit" in header:
            raise MalformedToken("critical header parameters are not supported")
        kid = header.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise UnknownSigningKey(kid if isinstance(kid, str) else None)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(ALGORITHMS),
                audience=self.audience,
                issuer=self.issuer,
                options={
                    "require": list(REQUIRED_CLAIMS),
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidSignatureError as exc:
            raise BadSignature("signature does not verify") from exc
        except jwt.InvalidAudienceError as exc:
            raise WrongAudience(str(exc)) from exc
        except jwt.InvalidIssuerError as exc:
            raise WrongIssuer(str(exc)) from exc
        except jwt.PyJWTError as exc:
            raise MalformedToken(str(exc)) from exc
        return self._check(claims, now)

    def _check(self, claims: Mapping[str, Any], now: float) -> Principal:
        exp, iat = _number(claims, "exp"), _number(claims, "iat")
        if exp <= now - self.leeway:
            raise TokenExpired("token expired")
        if iat > now + self.leeway:
            raise TokenNotYetValid("token issued in the future")
        if "nbf" in claims and _number(claims, "nbf") > now + self.leeway:
            raise TokenNotYetValid("token not valid yet")
        sub, jti, tenant = _text(claims, "sub"), _text(claims, "jti"), _text(claims, "tenant")
        client_id = _text(claims, "client_id")
        roles = _strings(claims.get("roles", []), "roles")
        scope = claims.get("scope", "")
        if not isinstance(scope, str):
            raise MalformedToken("claim 'scope' is not a string")
        models = claims.get("models")
        sid = claims.get("sid")
        if sid is not None and not isinstance(sid, str):
            raise MalformedToken("claim 'sid' is not a string")
        if jti in self._tokens:
            raise TokenRevoked("token revoked")
        if sid is not None and sid in self._sessions:
            raise TokenRevoked("session revoked")
        user = self._users.get(sub)
        if user is not None and iat < user[0]:
            raise TokenRevoked("all tokens of this user issued before a revocation are revoked")
        key_id = claims.get("key_id")
        return Principal(
            tenant=tenant,
            user=sub,
            roles=roles,
            models=None if models is None else _strings(models, "models"),
            key_id=key_id if isinstance(key_id, str) else None,
            client_id=client_id,
            scope=tuple(scope.split()),
            jti=jti,
            session=sid,
            expires_at=exp,
        )
