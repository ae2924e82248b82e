"""What operators and tooling see: health, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import httpx

from tests.gateway.serving import auth


async def test_healthz_answers(http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).json() == {"status": "ok", "service": "gateway"}


async def test_readyz_checks_the_bus_and_holds_no_database(http: httpx.AsyncClient) -> None:
    response = await http.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"nats": True}


async def test_metrics_count_requests_by_route_template_and_status(
    http: httpx.AsyncClient, member_key: str
) -> None:
    await http.get("/v1/tasks/some-id-that-is-not-there", headers=auth(member_key))
    text = (await http.get("/metrics")).text
    assert 'route="/v1/tasks/{task_id}",status="404"' in text
    assert "some-id-that-is-not-there" not in text
    assert "soma_http_request_seconds_bucket" in text


async def test_the_openapi_document_describes_the_bodies(http: httpx.AsyncClient) -> None:
    document = (await http.get("/openapi.json")).json()
    chat = document["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ChatCompletionRequest"
    )
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    assert chat["responses"]["429"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ErrorResponse"
    )
    for path in (
        "/v1/models",
        "/v1/embeddings",
        "/v1/tasks/{task_id}",
        "/v1/memory/search",
        "/v1/tools/{name}/invoke",
        "/v1/usage",
        "/v1/auth/token",
        "/v1/admin/keys",
        "/.well-known/jwks.json",
    ):
        assert path in document["paths"], path
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
