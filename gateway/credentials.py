"""The shapes of the secrets callers hold, and the hashes that stand for them on the bus.

API keys are ``sk-soma-<16 hex id>-<43 url-safe secret>`` and refresh tokens ``rt-soma-<43>``.
The gateway makes new ones itself and sends identity only SHA-256 digests, so no secret is ever
written to a retained stream.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

API_KEY_PREFIX = "sk-soma-"
REFRESH_PREFIX = "rt-soma-"
_API_KEY = re.compile(r"sk-soma-([0-9a-f]{16})-([A-Za-z0-9_-]{43})")
_REFRESH = re.compile(r"rt-soma-[A-Za-z0-9_-]{43}")


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class PresentedKey:
    key_id: str
    secret_sha256: str


@dataclass(frozen=True)
class NewKey:
    key: str
    key_id: str
    secret_sha256: str


def looks_like_api_key(credential: str) -> bool:
    return credential.startswith(API_KEY_PREFIX)


def parse_api_key(key: str) -> PresentedKey | None:
    match = _API_KEY.fullmatch(key)
    if match is None:
        return None
    key_id, secret = match.groups()
    return PresentedKey(key_id, sha256_hex(secret))


def new_api_key() -> NewKey:
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    return NewKey(f"{API_KEY_PREFIX}{key_id}-{secret}", key_id, sha256_hex(secret))


def new_refresh_token() -> tuple[str, str]:
    """A refresh token and the digest identity stores for it."""
    token = REFRESH_PREFIX + secrets.token_urlsafe(32)
    return token, sha256_hex(token)


def refresh_digest(token: str) -> str | None:
    return sha256_hex(token) if _REFRESH.fullmatch(token) else None
