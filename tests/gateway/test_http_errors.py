"""Whatever goes wrong, the caller gets OpenAI's error shape with the right status, and never a
stack trace."""

from __future__ import annotations

import json

import httpx
import pytest

from gateway.body_limit import ENVELOPE_HEADROOM
from kernel.settings import Settings
from tests.gateway.serving import auth, gateway_config, served
from tests.gateway.standins import World

SHAPE = {"message", "type", "param", "code"}


@pytest.fixture
def headers(member_key: str) -> dict[str, str]:
    return {**auth(member_key), "Content-Type": "application/json"}


async def test_a_malformed_json_body_is_400(http: httpx.AsyncClient, headers: dict) -> None:
    response = await http.post("/v1/chat/completions", headers=headers, content=b'{"model": ')
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == SHAPE
    assert error["type"] == "invalid_request_error"
    assert "parse the JSON body" in error["message"]


async def test_a_body_over_the_limit_is_413_naming_the_limit(
    http: httpx.AsyncClient, headers: dict
) -> None:
    big = b'{"model": "soma-test", "messages": [{"role": "user", "content": "' + b"x" * 70_000
    response = await http.post("/v1/chat/completions", headers=headers, content=big + b'"}]}')
    assert response.status_code == 413
    error = response.json()["error"]
    assert set(error) == SHAPE
    assert error["code"] == "request_too_large"
    assert "limit of 65536 bytes" in error["message"]


async def test_a_chunked_body_over_the_limit_is_413(http: httpx.AsyncClient, headers: dict) -> None:
    async def chunks():  # no Content-Length: the limit is counted as the body arrives
        for _ in range(20):
            yield b"x" * 8192

    response = await http.post("/v1/chat/completions", headers=headers, content=chunks())
    assert response.status_code == 413


async def test_a_missing_field_names_the_param(http: httpx.AsyncClient, headers: dict) -> None:
    response = await http.post("/v1/chat/completions", headers=headers, json={"model": "x"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"
    assert "Missing required parameter" in response.json()["error"]["message"]


async def test_a_wrong_type_deep_in_the_body_names_its_path(
    http: httpx.AsyncClient, headers: dict
) -> None:
    body = {"model": "soma-test", "messages": [{"role": "wizard", "content": "hi"}]}
    response = await http.post("/v1/chat/completions", headers=headers, json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].role"


async def test_unknown_fields_are_ignored(http: httpx.AsyncClient, headers: dict) -> None:
    body = {
        "model": "soma-test",
        "messages": [{"role": "user", "content": "hi"}],
        "logit_bias": {"50256": -100},
        "some_future_option": True,
        "stop": "END",
        "seed": 7,
        "max_completion_tokens": 20,
        "response_format": {"type": "text"},
    }
    response = await http.post("/v1/chat/completions", headers=headers, json=body)
    assert response.status_code == 200, response.text


async def test_a_tool_message_without_its_call_id_is_400(
    http: httpx.AsyncClient, headers: dict
) -> None:
    body = {"model": "soma-test", "messages": [{"role": "tool", "content": "42"}]}
    response = await http.post("/v1/chat/completions", headers=headers, json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].tool_call_id"


async def test_an_image_without_a_url_is_refused_naming_the_part(
    http: httpx.AsyncClient, headers: dict
) -> None:
    content = [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {}}]
    body = {"model": "soma-test", "messages": [{"role": "user", "content": content}]}
    response = await http.post("/v1/chat/completions", headers=headers, json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].content[1].image_url.url"


async def test_an_image_that_is_neither_https_nor_data_is_refused(
    http: httpx.AsyncClient, headers: dict
) -> None:
    image = {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}
    body = {"model": "soma-test", "messages": [{"role": "user", "content": [image]}]}
    response = await http.post("/v1/chat/completions", headers=headers, json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_image_url"


async def test_an_image_to_a_model_without_images_is_refused_naming_the_model(
    http: httpx.AsyncClient, headers: dict
) -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    body = {"model": "soma-test", "messages": [{"role": "user", "content": [image]}]}
    response = await http.post("/v1/chat/completions", headers=headers, json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "images_not_supported" and "soma-test" in error["message"]


async def test_text_content_parts_are_joined(http: httpx.AsyncClient, headers: dict) -> None:
    content = [{"type": "text", "text": "two "}, {"type": "text", "text": "parts"}]
    body = {"model": "soma-test", "messages": [{"role": "user", "content": content}]}
    response = await http.post("/v1/chat/completions", headers=headers, json=body)
    assert response.json()["choices"][0]["message"]["content"] == "Echo: two parts"


async def test_an_unknown_route_is_404_in_shape(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/nothing-here")
    assert response.status_code == 404
    assert set(response.json()["error"]) == SHAPE


async def test_a_wrong_method_is_405_in_shape(http: httpx.AsyncClient, headers: dict) -> None:
    response = await http.get("/v1/chat/completions", headers=headers)
    assert response.status_code == 405
    assert set(response.json()["error"]) == SHAPE


# The tests' nats-server runs with its default max_payload.
SERVER_MAX_PAYLOAD = 1024 * 1024
FITS = SERVER_MAX_PAYLOAD - ENVELOPE_HEADROOM


def _padded(size: int) -> bytes:
    """A body of exactly ``size`` bytes that passes the limit only to fail validation (400)."""
    head, tail = b'{"model": "soma-test", "padding": "', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


async def test_unset_the_body_limit_is_what_fits_in_the_servers_max_payload(
    gw_settings: Settings, world: World
) -> None:
    key, _ = world.identity.api_key("acme", ["member"])
    config = gateway_config(SOMA_MAX_BODY_BYTES=None)
    async with served(gw_settings, config) as url, httpx.AsyncClient(base_url=url) as client:
        at = await client.post("/v1/chat/completions", headers=auth(key), content=_padded(FITS))
        over = await client.post(
            "/v1/chat/completions", headers=auth(key), content=_padded(FITS + 1)
        )
    assert at.status_code == 400, at.text
    assert over.status_code == 413
    assert f"limit of {FITS} bytes" in over.json()["error"]["message"]


async def test_a_configured_limit_the_server_cannot_carry_is_lowered_to_fit(
    gw_settings: Settings, world: World
) -> None:
    key, _ = world.identity.api_key("acme", ["member"])
    config = gateway_config(SOMA_MAX_BODY_BYTES=4 * SERVER_MAX_PAYLOAD)
    async with served(gw_settings, config) as url, httpx.AsyncClient(base_url=url) as client:
        over = await client.post(
            "/v1/chat/completions", headers=auth(key), content=_padded(FITS + 1)
        )
    assert over.status_code == 413
    assert f"limit of {FITS} bytes" in over.json()["error"]["message"]


async def test_a_body_that_fits_the_limit_but_not_the_bus_is_413_and_the_bus_stays_up(
    gw_settings: Settings, world: World
) -> None:
    key, _ = world.identity.api_key("acme", ["member"])
    # Short messages grow on the bus (their empty fields are spelled out as nulls).
    messages = [{"role": "user", "content": ""} for _ in range(25_000)]
    body = json.dumps({"model": "soma-test", "messages": messages}).encode()
    assert len(body) < FITS
    config = gateway_config(SOMA_MAX_BODY_BYTES=None)
    async with served(gw_settings, config) as url, httpx.AsyncClient(base_url=url) as client:
        refused = await client.post(
            "/v1/chat/completions",
            headers={**auth(key), "Content-Type": "application/json"},
            content=body,
        )
        after = await client.post(
            "/v1/chat/completions",
            headers=auth(key),
            json={"model": "soma-test", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert refused.status_code == 413, refused.text
    error = refused.json()["error"]
    assert set(error) == SHAPE
    assert error["code"] == "request_too_large"
    assert f"limit of {SERVER_MAX_PAYLOAD} bytes" in error["message"]
    assert after.status_code == 200, after.text
