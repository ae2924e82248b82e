from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import replace

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from handlers.identity.errors import (
    BadSignature,
    DisallowedAlgorithm,
    InvalidInput,
    MalformedToken,
    TokenExpired,
    TokenNotYetValid,
    UnknownSigningKey,
    WrongAudience,
    WrongIssuer,
)
from handlers.identity.signing_keys import active_signing_key, jwks
from handlers.identity.tokens import issue_access_token
from handlers.identity.verify import Verifier
from tests.identity.conftest import current_verifier


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segments(token: str) -> tuple[dict, dict, str]:
    header, payload, signature = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return (
        json.loads(base64.urlsafe_b64decode(pad(header))),
        json.loads(base64.urlsafe_b64decode(pad(payload))),
        signature,
    )


def unsigned(header: dict, claims: dict) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"


async def test_an_issued_token_has_the_rfc9068_shape_and_verifies(db, settings, keys, alice, now):
    issued = await issue_access_token(db, settings, alice, client_id="cli", scope="chat", now=now)

    header, claims, _ = segments(issued.token)
    principal = (await current_verifier(db, settings, now)).verify(issued.token, now)

    assert header == {"alg": "EdDSA", "typ": "at+jwt", "kid": keys}
    assert claims["iss"] == "soma" and claims["aud"] == "soma-gateway"
    assert claims["sub"] == alice.user and claims["tenant"] == "acme"
    assert claims["exp"] == claims["iat"] + 900
    assert claims["jti"] == issued.jti
    assert (claims["client_id"], claims["scope"], claims["roles"]) == ("cli", "chat", ["member"])
    assert (principal.tenant, principal.user, principal.roles) == ("acme", alice.user, ("member",))
    assert principal.jti == issued.jti and principal.scope == ("chat",)


async def test_the_jwks_serves_public_ed25519_keys_only(db, keys, now):
    document = await jwks(db, now)

    assert keys in {k["kid"] for k in document["keys"]}
    for key in document["keys"]:
        assert set(key) == {"kty", "crv", "x", "kid", "use", "alg"}
        assert (key["kty"], key["crv"], key["use"], key["alg"]) == (
            "OKP",
            "Ed25519",
            "sig",
            "EdDSA",
        )


async def test_alg_none_is_refused(db, settings, keys, alice, now):
    issued = await issue_access_token(db, settings, alice, now=now)
    header, claims, _ = segments(issued.token)

    forged = unsigned({**header, "alg": "none"}, {**claims, "roles": ["admin"]}) + "."

    with pytest.raises(DisallowedAlgorithm):
        (await current_verifier(db, settings, now)).verify(forged, now)


@pytest.mark.parametrize("encoding", ["raw", "pem", "jwk-x"])
async def test_hs256_signed_with_the_public_key_is_refused(
    db, settings, keys, alice, now, encoding
):
    issued = await issue_access_token(db, settings, alice, now=now)
    header, claims, _ = segments(issued.token)
    async with db.connect() as conn:
        public = (await active_signing_key(conn, settings)).private_key.public_key()
    secret = {
        "raw": public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
        "pem": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "jwk-x": next(k for k in (await jwks(db, now))["keys"] if k["kid"] == keys)["x"].encode(),
    }[encoding]
    signing_input = unsigned({**header, "alg": "HS256"}, {**claims, "roles": ["admin"]})
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()

    with pytest.raises(DisallowedAlgorithm):
        (await current_verifier(db, settings, now)).verify(f"{signing_input}.{b64(mac)}", now)


async def test_an_expired_token_is_refused(db, settings, keys, alice, now):
    issued = await issue_access_token(db, settings, alice, now=now)
    verifier = await current_verifier(db, settings, now)

    assert verifier.verify(issued.token, now + 900 + settings.leeway - 1).user == alice.user
    with pytest.raises(TokenExpired):
        verifier.verify(issued.token, now + 900 + settings.leeway + 1)


async def test_a_token_from_the_future_is_refused(db, settings, keys, alice, now):
    issued = await issue_access_token(db, settings, alice, now=now + 60)

    with pytest.raises(TokenNotYetValid):
        (await current_verifier(db, settings, now)).verify(issued.token, now)


async def test_a_token_signed_by_an_unknown_key_is_refused(db, settings, keys, alice, now):
    issued = await issue_access_token(db, settings, alice, now=now)
    _, claims, _ = segments(issued.token)
    stranger = Ed25519PrivateKey.generate()

    token = jwt.encode(claims, stranger, "EdDSA", headers={"typ": "at+jwt", "kid": "stranger"})

    with pytest.raises(UnknownSigningKey):
        (await current_verifier(db, settings, now)).verify(token, now)


async def test_a_foreign_key_claiming_our_kid_fails_the_signature(db, settings, keys, alice, now):
    issued = await issue_access_token(db, settings, alice, now=now)
    _, claims, _ = segments(issued.token)
    stranger = Ed25519PrivateKey.generate()

    token = jwt.encode(claims, stranger, "EdDSA", headers={"typ": "at+jwt", "kid": keys})

    with pytest.raises(BadSignature):
        (await current_verifier(db, settings, now)).verify(token, now)


async def test_tampered_claims_with_the_original_signature_are_refused(
    db, settings, keys, alice, now
):
    issued = await issue_access_token(db, settings, alice, now=now)
    header_b64, _, signature = issued.token.split(".")
    _, claims, _ = segments(issued.token)

    payload = b64(json.dumps({**claims, "roles": ["admin"], "tenant": "globex"}).encode())

    with pytest.raises(BadSignature):
        (await current_verifier(db, settings, now)).verify(
            f"{header_b64}.{payload}.{signature}", now
        )


async def test_a_token_for_another_audience_is_refused(db, settings, keys, alice, now):
    other = settings.model_copy(update={"audience": "billing"})
    issued = await issue_access_token(db, other, alice, now=now)

    with pytest.raises(WrongAudience):
        (await current_verifier(db, settings, now)).verify(issued.token, now)


async def test_a_token_from_another_issuer_is_refused(db, settings, keys, alice, now):
    other = settings.model_copy(update={"issuer": "someone-else"})
    issued = await issue_access_token(db, other, alice, now=now)

    with pytest.raises(WrongIssuer):
        (await current_verifier(db, settings, now)).verify(issued.token, now)


async def test_a_jwt_that_is_not_an_access_token_is_refused(db, settings, keys, alice, now):
    issued = await issue_access_token(db, settings, alice, now=now)
    _, claims, _ = segments(issued.token)
    async with db.connect() as conn:
        key = await active_signing_key(conn, settings)

    id_token = jwt.encode(claims, key.private_key, "EdDSA", headers={"typ": "JWT", "kid": keys})

    with pytest.raises(MalformedToken):
        (await current_verifier(db, settings, now)).verify(id_token, now)


@pytest.mark.parametrize("claim", ["tenant", "jti", "sub", "exp", "client_id"])
async def test_a_token_missing_a_required_claim_is_refused(db, settings, keys, alice, now, claim):
    issued = await issue_access_token(db, settings, alice, now=now)
    _, claims, _ = segments(issued.token)
    del claims[claim]
    async with db.connect() as conn:
        key = await active_signing_key(conn, settings)

    token = jwt.encode(claims, key.private_key, "EdDSA", headers={"typ": "at+jwt", "kid": keys})

    with pytest.raises(MalformedToken):
        (await current_verifier(db, settings, now)).verify(token, now)


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "Bearer x.y.z"])
def test_garbage_is_refused_as_malformed(garbage):
    with pytest.raises(MalformedToken):
        Verifier(issuer="soma", audience="soma-gateway").verify(garbage)


async def test_a_token_keeps_the_model_limit_of_its_principal(db, settings, keys, alice, now):
    issued = await issue_access_token(
        db, settings, replace(alice, models=("gpt-4o-mini",)), now=now
    )

    principal = (await current_verifier(db, settings, now)).verify(issued.token, now)

    assert principal.models == ("gpt-4o-mini",)


async def test_a_token_is_not_issued_with_roles_its_user_lacks(db, settings, keys, alice, now):
    with pytest.raises(InvalidInput):
        await issue_access_token(db, settings, replace(alice, roles=("owner",)), now=now)


async def test_keys_other_than_ed25519_public_keys_are_ignored_in_a_jwks(db, keys, now):
    document = await jwks(db, now)
    ours = next(k for k in document["keys"] if k["kid"] == keys)
    extra = [
        {"kty": "oct", "k": b64(b"secret"), "kid": "hmac"},
        {**ours, "kid": "broken", "x": "not-a-key"},
        {**ours, "kid": "rsa-alg", "alg": "RS256"},
        {**ours, "kid": "encryption", "use": "enc"},
    ]

    verifier = Verifier(issuer="soma", audience="soma-gateway", jwks={"keys": [*extra, ours]})

    assert verifier.kids == {keys}
