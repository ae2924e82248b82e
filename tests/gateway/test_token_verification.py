"""``gateway.tokens.verify``: what makes an access token acceptable, checked without a network."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.tokens import InvalidToken, KeySet, RevocationList, TokenRules, UnknownKey, verify
from schemas.identity import Revocation
from tests.gateway.standins import Identity, RevocationKind

RULES = TokenRules(issuer="soma", audience="soma-gateway", leeway=5)


@pytest.fixture
def identity() -> Identity:
    return Identity()


@pytest.fixture
def keys(identity: Identity) -> KeySet:
    keys = KeySet()
    keys.replace([identity.public_jwk()])
    return keys


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())


def check(token: str, keys: KeySet, revoked: RevocationList | None = None) -> Any:
    return verify(token, keys, revoked or RevocationList(), RULES, time.time())


def test_a_well_formed_token_yields_its_claims(identity: Identity, keys: KeySet) -> None:
    claims = identity.claims("acme", "u1", ["member"], scope="chat memory", sid="s1")
    verified = check(identity.sign(claims), keys)
    assert verified.tenant == "acme"
    assert verified.subject == "u1"
    assert verified.roles == ("member",)
    assert verified.scope == ("chat", "memory")
    assert verified.session == "s1"


def test_alg_none_is_refused(identity: Identity, keys: KeySet) -> None:
    token = (
        _unsigned(
            {"alg": "none", "typ": "at+jwt", "kid": identity.kid},
            identity.claims("acme", "u1", ["admin"]),
        )
        + "."
    )
    with pytest.raises(InvalidToken, match="algorithm"):
        check(token, keys)


def test_hs256_signed_with_the_public_key_is_refused(identity: Identity, keys: KeySet) -> None:
    public_pem = identity.signing_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (public_pem, identity.public_jwk()["x"].encode()):
        signing_input = _unsigned(
            {"alg": "HS256", "typ": "at+jwt", "kid": identity.kid},
            identity.claims("acme", "u1", ["admin"]),
        )
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        with pytest.raises(InvalidToken, match="algorithm"):
            check(f"{signing_input}.{_b64(signature)}", keys)


def test_a_token_signed_by_an_unknown_key_is_refused(keys: KeySet) -> None:
    stranger = Identity()
    token = stranger.sign(stranger.claims("acme", "u1", ["member"]))
    with pytest.raises(UnknownKey):
        check(token, keys)


def test_a_known_kid_with_another_keys_signature_is_refused(
    identity: Identity, keys: KeySet
) -> None:
    stranger = Identity(kid=identity.kid)
    with pytest.raises(InvalidToken, match="Signature"):
        check(stranger.sign(stranger.claims("acme", "u1", ["member"])), keys)


def test_tampered_claims_break_the_signature(identity: Identity, keys: KeySet) -> None:
    header, payload, signature = identity.sign(identity.claims("acme", "u1", ["member"])).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["roles"] = ["admin"]
    with pytest.raises(InvalidToken):
        check(f"{header}.{_b64(json.dumps(claims).encode())}.{signature}", keys)


def test_an_expired_token_is_refused_past_the_leeway(identity: Identity, keys: KeySet) -> None:
    now = int(time.time())
    claims = identity.claims("acme", "u1", ["member"], iat=now - 1000, exp=now - 10)
    with pytest.raises(InvalidToken, match="xpired"):
        check(identity.sign(claims), keys)


def test_a_token_expired_within_the_leeway_is_accepted(identity: Identity, keys: KeySet) -> None:
    now = int(time.time())
    claims = identity.claims("acme", "u1", ["member"], iat=now - 1000, exp=now - 2)
    assert check(identity.sign(claims), keys).subject == "u1"


def test_a_token_issued_in_the_future_is_refused(identity: Identity, keys: KeySet) -> None:
    now = int(time.time())
    claims = identity.claims("acme", "u1", ["member"], iat=now + 120, exp=now + 900)
    with pytest.raises(InvalidToken):
        check(identity.sign(claims), keys)


def test_a_token_not_yet_valid_is_refused(identity: Identity, keys: KeySet) -> None:
    claims = identity.claims("acme", "u1", ["member"], nbf=int(time.time()) + 120)
    with pytest.raises(InvalidToken):
        check(identity.sign(claims), keys)


@pytest.mark.parametrize(
    ("claim", "value"),
    [("aud", "someone-else"), ("iss", "evil"), ("tenant", "Not A Tenant"), ("roles", 7)],
)
def test_a_wrong_claim_is_refused(identity: Identity, keys: KeySet, claim: str, value: Any) -> None:
    claims = identity.claims("acme", "u1", ["member"])
    claims[claim] = value
    with pytest.raises(InvalidToken):
        check(identity.sign(claims), keys)


@pytest.mark.parametrize("claim", ["exp", "iat", "jti", "sub", "tenant"])
def test_a_missing_claim_is_refused(identity: Identity, keys: KeySet, claim: str) -> None:
    claims = identity.claims("acme", "u1", ["member"])
    del claims[claim]
    with pytest.raises(InvalidToken):
        check(identity.sign(claims), keys)


def test_a_token_of_another_type_is_refused(identity: Identity, keys: KeySet) -> None:
    token = identity.sign(identity.claims("acme", "u1", ["member"]), headers={"typ": "JWT"})
    with pytest.raises(InvalidToken, match="type"):
        check(token, keys)


def test_revocation_by_jti_session_or_user_refuses_the_token(
    identity: Identity, keys: KeySet
) -> None:
    claims = identity.claims("acme", "u1", ["member"], sid="family-1")
    token = identity.sign(claims)
    later = time.time() + 900
    cases: list[tuple[RevocationKind, str]] = [
        ("jti", claims["jti"]),
        ("session", "family-1"),
        ("user", "u1"),
    ]
    for kind, subject in cases:
        revoked = RevocationList()
        revoked.apply(
            [Revocation(kind=kind, subject=subject, revoked_at=time.time(), expires_at=later)]
        )
        with pytest.raises(InvalidToken, match="revoked"):
            check(token, keys, revoked)


def test_a_user_revocation_spares_tokens_issued_after_it(identity: Identity, keys: KeySet) -> None:
    revoked = RevocationList()
    revoked.apply(
        [
            Revocation(
                kind="user", subject="u1", revoked_at=time.time() - 60, expires_at=time.time() + 900
            )
        ]
    )
    assert check(identity.sign(identity.claims("acme", "u1", ["member"])), keys, revoked)


def test_private_key_material_is_never_published(identity: Identity) -> None:
    keys = KeySet()
    private = {**identity.public_jwk(), "d": "c2VjcmV0"}
    keys.replace([private, {"kty": "RSA", "kid": "rsa", "n": "x", "e": "AQAB"}])
    published = keys.public_jwks()["keys"]
    assert [k["kid"] for k in published] == [identity.kid]
    assert "d" not in published[0]
