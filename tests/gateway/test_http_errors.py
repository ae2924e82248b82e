"""Whatever goes wrong, the caller gets OpenAI's error shape with the right status, and never a
stack trace."""

from __future__ import annotations

import httpx
import pytest

from tests.gateway.serving import auth

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


async def test_a_body_over_the_limit_is_413(http: httpx.AsyncClient, headers: dict) -> None:
    big = b'{"model": "soma-test", "messages": [{"role": "user", "content": "' + b"x" * 70_000
    response = await http.post("/v1/chat/completions", headers=headers, content=big + b'"}]}')
    assert response.status_code == 413
    assert set(response.json()["error"]) == SHAPE


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
        "user": "end-user-1",
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


async def test_image_content_is_refused_naming_the_message(
    http: httpx.AsyncClient, headers: dict
) -> None:
    content = [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {}}]
    body = {"model": "soma-test", "messages": [{"role": "user", "content": content}]}
    response = await http.post("/v1/chat/completions", headers=headers, json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].content"


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
