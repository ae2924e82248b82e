"""The GitHub issue tools against a local server speaking GitHub's REST API v3."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from handlers.tools import github
from handlers.tools.config import ToolsConfig
from handlers.tools.invocation import invoke
from handlers.tools.registry import Registry, unavailable
from handlers.tools.service import local_registry
from schemas.tools import ToolResult
from tests.servers import free_port
from tests.tools.github_server import TOKEN, GitHubState, handler_for
from tests.tools.local_http import serve


@pytest.fixture
def state() -> GitHubState:
    return GitHubState()


@pytest.fixture
def base_url(state: GitHubState) -> Iterator[str]:
    with serve(handler_for(state)) as url:
        yield url


def registry_for(client: httpx.AsyncClient, base_url: str, token: str = TOKEN) -> Registry:
    registry = Registry()
    for tool in github.tools(client, base_url, token):
        registry.add(tool)
    return registry


async def call(registry: Registry, name: str, **arguments: Any) -> ToolResult:
    return await invoke(registry, "c1", name, arguments)


async def test_create_issue_posts_to_the_repository_with_the_bearer_token(
    client: httpx.AsyncClient, base_url: str, state: GitHubState
) -> None:
    registry = registry_for(client, base_url)
    result = await call(
        registry,
        "github.create_issue",
        owner="octo",
        repo="hello",
        title="Crash on start",
        body="Steps: run it",
        labels=["bug"],
    )
    assert result.ok, result.error
    assert result.output == {
        "number": 1,
        "title": "Crash on start",
        "state": "open",
        "url": "https://github.com/octo/hello/issues/1",
        "author": "soma-bot",
        "labels": ["bug"],
        "comments": 0,
    }
    [request] = state.requests
    assert request["method"] == "POST"
    assert request["path"] == "/repos/octo/hello/issues"
    assert request["body"] == {
        "title": "Crash on start",
        "body": "Steps: run it",
        "labels": ["bug"],
    }
    assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert request["headers"]["Accept"] == "application/vnd.github+json"
    assert request["headers"]["X-GitHub-Api-Version"] == github.API_VERSION


async def test_list_issues_passes_filters_and_leaves_out_pull_requests(
    client: httpx.AsyncClient, base_url: str, state: GitHubState
) -> None:
    registry = registry_for(client, base_url)
    await call(registry, "github.create_issue", owner="octo", repo="hello", title="First")
    state.add_pull_request("octo/hello", "A pull request")
    await call(registry, "github.create_issue", owner="octo", repo="hello", title="Third")
    result = await call(
        registry, "github.list_issues", owner="octo", repo="hello", state="all", per_page=10
    )
    assert result.ok, result.error
    assert [(i["number"], i["title"]) for i in result.output["issues"]] == [
        (3, "Third"),
        (1, "First"),
    ]
    assert state.requests[-1]["query"] == {"state": "all", "per_page": "10"}


async def test_comment_issue_adds_a_comment(
    client: httpx.AsyncClient, base_url: str, state: GitHubState
) -> None:
    registry = registry_for(client, base_url)
    await call(registry, "github.create_issue", owner="octo", repo="hello", title="Question")
    result = await call(
        registry, "github.comment_issue", owner="octo", repo="hello", number=1, body="Answered."
    )
    assert result.ok, result.error
    assert result.output["body"] == "Answered."
    assert result.output["url"].startswith("https://github.com/octo/hello/issues/1#issuecomment-")
    assert state.requests[-1]["path"] == "/repos/octo/hello/issues/1/comments"
    assert state.repos["octo/hello"][0]["comments"] == 1


async def test_a_bad_token_gives_githubs_own_message(
    client: httpx.AsyncClient, base_url: str
) -> None:
    registry = registry_for(client, base_url, token="ghp_wrong")
    result = await call(registry, "github.list_issues", owner="octo", repo="hello")
    assert not result.ok
    assert result.error == "GitHub answered 401: Bad credentials"


async def test_an_unknown_repository_is_not_found(client: httpx.AsyncClient, base_url: str) -> None:
    registry = registry_for(client, base_url)
    result = await call(registry, "github.create_issue", owner="octo", repo="nope", title="x")
    assert not result.ok
    assert result.error == "GitHub answered 404: Not Found"


async def test_a_path_in_the_repository_name_is_refused_before_any_request(
    client: httpx.AsyncClient, base_url: str, state: GitHubState
) -> None:
    registry = registry_for(client, base_url)
    result = await call(registry, "github.list_issues", owner="octo", repo="hello/../../user")
    assert not result.ok
    assert "at arguments.repo" in (result.error or "")
    assert state.requests == []


async def test_without_a_token_the_tools_are_unavailable_with_the_reason(
    client: httpx.AsyncClient,
) -> None:
    registry = local_registry(ToolsConfig(SOMA_GITHUB_TOKEN=None), client)
    assert not any(name.startswith("github.") for name in registry.tools)
    listed = [u for u in unavailable(registry) if u["name"].startswith("github.")]
    reason = "SOMA_GITHUB_TOKEN is not set"
    assert listed == [{"name": name, "reason": reason} for name in sorted(github.TOOL_NAMES)]


async def test_with_a_token_the_tools_use_the_configured_base_url(
    client: httpx.AsyncClient, base_url: str, state: GitHubState
) -> None:
    config = ToolsConfig(SOMA_GITHUB_TOKEN=TOKEN, SOMA_GITHUB_BASE_URL=base_url)
    registry = local_registry(config, client)
    result = await call(registry, "github.list_issues", owner="octo", repo="hello")
    assert result.ok, result.error
    assert len(state.requests) == 1


async def test_an_unreachable_server_is_an_error_result(client: httpx.AsyncClient) -> None:
    registry = registry_for(client, f"http://127.0.0.1:{free_port()}")
    result = await call(registry, "github.list_issues", owner="octo", repo="hello")
    assert not result.ok
    assert (result.error or "").startswith("could not reach GitHub at http://127.0.0.1:")
