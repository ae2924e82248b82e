"""Typed failures of identity checks.

Everything under ``Unauthenticated`` means "these credentials do not identify anyone right now";
the gateway answers all of them with 401 and may log the subclass. The other errors belong to
admin operations (bad input, missing or duplicate records).
"""

from __future__ import annotations


class IdentityError(Exception):
    pass


class Unauthenticated(IdentityError):
    """The presented credential is not accepted (HTTP 401)."""


# Access tokens (JWT).


class InvalidToken(Unauthenticated):
    pass


class MalformedToken(InvalidToken):
    """Not a JWT of ours: undecodable, wrong ``typ``, or missing / mistyped claims."""


class DisallowedAlgorithm(InvalidToken):
    """The header names an algorithm other than EdDSA (``none``, HS256, RS256, …)."""


class UnknownSigningKey(InvalidToken):
    """No key with this ``kid`` in the key set: never ours, or pruned after rotation."""

    def __init__(self, kid: str | None) -> None:
        super().__init__(f"unknown signing key {kid!r}")
        self.kid = kid


class BadSignature(InvalidToken):
    pass


class WrongIssuer(InvalidToken):
    pass


class WrongAudience(InvalidToken):
    pass


class TokenExpired(InvalidToken):
    pass


class TokenNotYetValid(InvalidToken):
    """``nbf`` or ``iat`` lies in the future beyond the allowed clock skew."""


class TokenRevoked(InvalidToken):
    """Revoked by ``jti``, by its refresh family, or by the user's not-before time."""


# API keys.


class InvalidApiKey(Unauthenticated):
    pass


class UnknownApiKey(InvalidApiKey):
    """Malformed, never issued, or the secret does not match (deliberately indistinguishable)."""


class RevokedApiKey(InvalidApiKey):
    pass


class ExpiredApiKey(InvalidApiKey):
    pass


# Refresh tokens.


class InvalidRefreshToken(Unauthenticated):
    pass


class UnknownRefreshToken(InvalidRefreshToken):
    pass


class RefreshTokenExpired(InvalidRefreshToken):
    pass


class RefreshTokenRevoked(InvalidRefreshToken):
    """Its family was revoked (reuse detected, user revoked, or its API key withdrawn)."""


class RefreshTokenReused(InvalidRefreshToken):
    """An already rotated token came back: the family is now revoked, current token included."""


# Admin operations.


class InvalidInput(IdentityError, ValueError):
    pass


class NotFound(IdentityError, LookupError):
    pass


class AlreadyExists(IdentityError):
    pass


class Forbidden(IdentityError):
    """Allowed to exist, not to be done by this caller (e.g. granting a role it lacks)."""


class NoSigningKey(IdentityError):
    """No active signing key yet: ``ensure_signing_keys`` has not run on this database."""
