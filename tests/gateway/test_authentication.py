"""Credentials at the gateway: API keys checked over the bus, access tokens checked locally,
tokens issued, refreshed and revoked through identity."""

from __future__ import annotations

import time

import httpx
import jwt
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kernel.settings import Settings
from tests.gateway.serving import auth, eventually, gateway_config, served
from tests.gateway.standins import World


async def status_of(http: httpx.AsyncClient, credential: str) -> int:
    return (await http.get("/v1/models", headers=auth(credential))).status_code


async def test_no_credential_is_401_in_openai_shape(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/models")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_a_malformed_api_key_is_refused_without_asking_identity(
    http: httpx.AsyncClient,
) -> None:
    assert await status_of(http, "sk-soma-short") == 401


async def test_a_valid_access_token_is_accepted(http: httpx.AsyncClient, world: World) -> None:
    token = world.identity.sign(world.identity.claims("acme", "u1", ["member"]))
    assert await status_of(http, token) == 200


async def test_forged_or_expired_tokens_are_401(http: httpx.AsyncClient, world: World) -> None:
    identity = world.identity
    claims = identity.claims("acme", "u1", ["admin"])
    valid = identity.sign(claims)
    header, _, signature = valid.split(".")
    other_payload = identity.sign({**claims, "tenant": "other"}).split(".")[1]
    stranger = Ed25519PrivateKey.generate()
    forged = {
        "alg none": jwt.encode(
            claims, "", algorithm="none", headers={"kid": identity.kid, "typ": "at+jwt"}
        ),
        "expired": identity.sign(
            {**claims, "iat": int(time.time()) - 2000, "exp": int(time.time()) - 1000}
        ),
        "unknown key": jwt.encode(
            claims, stranger, algorithm="EdDSA", headers={"kid": "not-ours", "typ": "at+jwt"}
        ),
        "tampered": f"{header}.{other_payload}.{signature}",
        "garbage": "not.a.token",
    }
    for name, token in forged.items():
        assert await status_of(http, token) == 401, name
    assert await status_of(http, valid) == 200


async def test_a_token_from_a_freshly_rotated_key_is_accepted(
    world: World, gw_settings: Settings
) -> None:
    identity = world.identity
    async with (
        served(gw_settings, gateway_config()) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        assert (
            await status_of(http, identity.sign(identity.claims("acme", "u1", ["member"]))) == 200
        )
        old_key, old_kid = identity.signing_key, identity.kid
        identity.signing_key, identity.kid = Ed25519PrivateKey.generate(), "rotated-key"
        assert identity.js is not None
        await identity.publish_key_set(identity.js)
        try:
            token = identity.sign(identity.claims("acme", "u1", ["member"]))
            assert await status_of(http, token) == 200, "the new key set reached the gateway"
        finally:
            identity.signing_key, identity.kid = old_key, old_kid
            await identity.publish_key_set(identity.js)


async def test_an_api_key_is_exchanged_for_tokens_that_work(
    http: httpx.AsyncClient, member_key: str
) -> None:
    response = await http.post(
        "/v1/auth/token", headers=auth(member_key), json={"scope": "chat models"}
    )
    assert response.status_code == 200, response.text
    pair = response.json()
    assert pair["token_type"] == "Bearer"
    assert pair["refresh_token"].startswith("rt-soma-")
    assert pair["scope"] == "chat models"
    assert await status_of(http, pair["access_token"]) == 200


async def test_a_token_is_confined_to_its_scope(http: httpx.AsyncClient, member_key: str) -> None:
    pair = (
        await http.post("/v1/auth/token", headers=auth(member_key), json={"scope": ["chat"]})
    ).json()
    response = await http.get("/v1/models", headers=auth(pair["access_token"]))
    assert response.status_code == 403


async def test_an_unknown_scope_is_a_bad_request(http: httpx.AsyncClient, member_key: str) -> None:
    response = await http.post(
        "/v1/auth/token", headers=auth(member_key), json={"scope": "everything"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "scope"


async def test_refresh_rotates_and_a_reused_refresh_token_kills_the_session(
    http: httpx.AsyncClient, member_key: str
) -> None:
    first = (await http.post("/v1/auth/token", headers=auth(member_key))).json()
    rotated = await http.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert rotated.status_code == 200
    second = rotated.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert await status_of(http, second["access_token"]) == 200

    reused = await http.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reused.status_code == 401
    assert reused.json()["error"]["message"] == "The credentials were not accepted."

    async def session_dead() -> bool:
        return await status_of(http, second["access_token"]) == 401

    assert await eventually(session_dead, bool), "the revocation reached the gateway"


async def test_a_refresh_token_that_is_not_ours_is_401(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/auth/refresh", json={"refresh_token": "rt-soma-" + "a" * 43})
    assert response.status_code == 401


async def test_a_revoked_access_token_stops_working_on_every_replica(
    http: httpx.AsyncClient, member_key: str, gw_settings: Settings
) -> None:
    pair = (await http.post("/v1/auth/token", headers=auth(member_key))).json()
    token = pair["access_token"]
    async with served(gw_settings, gateway_config()) as other_url:
        async with httpx.AsyncClient(base_url=other_url) as other:
            assert await status_of(other, token) == 200
            revoked = await http.post("/v1/auth/revoke", headers=auth(token), json={"token": token})
            assert revoked.json() == {"revoked": True}
            assert await status_of(http, token) == 401, "at once on the replica that revoked"

            async def refused_elsewhere() -> bool:
                return await status_of(other, token) == 401

            assert await eventually(refused_elsewhere, bool, 3), (
                "within a second elsewhere, from the watched bucket"
            )


async def test_revoking_a_refresh_token_ends_its_session(
    http: httpx.AsyncClient, member_key: str
) -> None:
    pair = (await http.post("/v1/auth/token", headers=auth(member_key))).json()
    response = await http.post(
        "/v1/auth/revoke", headers=auth(member_key), json={"token": pair["refresh_token"]}
    )
    assert response.json() == {"revoked": True}
    refreshed = await http.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert refreshed.status_code == 401


async def test_a_revoked_api_key_stops_working_within_seconds(
    http: httpx.AsyncClient, world: World
) -> None:
    admin_key, _ = world.identity.api_key("acme", ["admin"])
    key, _ = world.identity.api_key("acme", ["member"])
    assert await status_of(http, key) == 200
    key_id = key.split("-")[2]
    revoked = await http.delete(f"/v1/admin/keys/{key_id}", headers=auth(admin_key))
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    assert await status_of(http, key) == 401


async def test_a_key_revoked_elsewhere_stops_working_once_its_cached_verdict_expires(
    http: httpx.AsyncClient, world: World
) -> None:
    key, _ = world.identity.api_key("acme", ["member"])
    assert await status_of(http, key) == 200
    record = world.identity.keys[key.split("-")[2]]
    record.info = msgspec.structs.replace(record.info, revoked_at=time.time())

    async def refused() -> bool:
        return await status_of(http, key) == 401

    assert await eventually(refused, bool, 2), "the verdict is cached for 0.5 s in these tests"


async def test_the_jwks_route_publishes_the_public_keys_only(
    http: httpx.AsyncClient, world: World
) -> None:
    response = await http.get("/.well-known/jwks.json")
    assert response.status_code == 200
    (key,) = response.json()["keys"]
    assert key["kid"] == world.identity.kid
    assert key["kty"] == "OKP" and key["crv"] == "Ed25519"
    assert "d" not in key


async def test_an_api_key_in_x_api_key_authenticates_as_anthropics_clients_send_it(
    http: httpx.AsyncClient, world: World
) -> None:
    key, _ = world.identity.api_key("acme", ["member"])
    assert (await http.get("/v1/models", headers={"x-api-key": key})).status_code == 200
    stranger = {"x-api-key": "sk-soma-0000000000000000-nope"}
    assert (await http.get("/v1/models", headers=stranger)).status_code == 401


async def test_authorization_is_read_before_x_api_key(
    http: httpx.AsyncClient, world: World
) -> None:
    key, _ = world.identity.api_key("acme", ["member"])
    headers = {**auth("sk-soma-0000000000000000-nope"), "x-api-key": key}
    assert (await http.get("/v1/models", headers=headers)).status_code == 401


async def test_whoami_names_the_tenant_user_and_roles_of_a_token(
    http: httpx.AsyncClient, world: World
) -> None:
    token = world.identity.sign(world.identity.claims("acme", "u1", ["admin", "member"]))
    response = await http.get("/v1/auth/whoami", headers=auth(token))
    assert response.status_code == 200
    who = response.json()
    assert (who["tenant"], who["user"], who["role"], who["via"]) == ("acme", "u1", "admin", "token")
    assert set(who["roles"]) == {"admin", "member"}


async def test_whoami_without_a_credential_is_401(http: httpx.AsyncClient) -> None:
    assert (await http.get("/v1/auth/whoami")).status_code == 401
