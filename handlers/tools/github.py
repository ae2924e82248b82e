"""GitHub issues through the REST API v3: create, list, comment.

The base URL is configurable so GitHub Enterprise (``https://host/api/v3``) works the same way.
"""

from __future__ import annotations

from typing import Any

import httpx

from handlers.tools.registry import Annotations, Tool, ToolError

API_VERSION = "2022-11-28"
NAME = {"type": "string", "pattern": r"^[A-Za-z0-9_.-]+$", "maxLength": 100}
TOKEN_SETTING = "SOMA_GITHUB_TOKEN"
TOOL_NAMES = ("github.create_issue", "github.list_issues", "github.comment_issue")


def headers(token: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {token}",
        "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": API_VERSION,
        "User-Agent": "soma-agent-hub",
    }


def tools(client: httpx.AsyncClient, base_url: str, token: str) -> list[Tool]:
    base = base_url.rstrip("/")
    auth = headers(token)

    async def call(method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await client.request(method, f"{base}{path}", headers=auth, **kwargs)
        except httpx.HTTPError as exc:
            raise ToolError(f"could not reach GitHub at {base}: {type(exc).__name__}") from exc
        if response.status_code >= 400:
            raise ToolError(_explain(response))
        return response.json()

    async def create_issue(arguments: dict[str, Any]) -> dict[str, Any]:
        body = {k: arguments[k] for k in ("title", "body", "labels", "assignees") if k in arguments}
        issue = await call("POST", _repo(arguments) + "/issues", json=body)
        return _issue(issue)

    async def list_issues(arguments: dict[str, Any]) -> dict[str, Any]:
        keys = ("state", "labels", "per_page", "page")
        params = {k: arguments[k] for k in keys if k in arguments}
        found = await call("GET", _repo(arguments) + "/issues", params=params)
        # The issues endpoint also returns pull requests; they are not what was asked for.
        return {"issues": [_issue(i) for i in found if "pull_request" not in i]}

    async def comment_issue(arguments: dict[str, Any]) -> dict[str, Any]:
        path = f"{_repo(arguments)}/issues/{arguments['number']}/comments"
        comment = await call("POST", path, json={"body": arguments["body"]})
        return {"id": comment["id"], "url": comment.get("html_url", ""), "body": comment["body"]}

    repo_properties = {"owner": NAME, "repo": NAME}
    issue_output = {
        "type": "object",
        "properties": {
            "number": {"type": "integer"},
            "title": {"type": "string"},
            "state": {"type": "string"},
            "url": {"type": "string"},
            "author": {"type": ["string", "null"]},
            "labels": {"type": "array", "items": {"type": "string"}},
            "comments": {"type": "integer"},
        },
        "required": ["number", "title", "state", "url"],
    }
    return [
        Tool(
            name="github.create_issue",
            description="Open a new issue in a GitHub repository.",
            input_schema={
                "type": "object",
                "properties": {
                    **repo_properties,
                    "title": {"type": "string", "minLength": 1, "maxLength": 256},
                    "body": {"type": "string", "maxLength": 65536},
                    "labels": {"type": "array", "items": {"type": "string"}},
                    "assignees": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["owner", "repo", "title"],
                "additionalProperties": False,
            },
            output_schema=issue_output,
            annotations=Annotations(read_only=False, destructive=False, idempotent=False),
            run=create_issue,
        ),
        Tool(
            name="github.list_issues",
            description="List issues (not pull requests) of a GitHub repository, newest first.",
            input_schema={
                "type": "object",
                "properties": {
                    **repo_properties,
                    "state": {"enum": ["open", "closed", "all"], "default": "open"},
                    "labels": {"type": "string", "description": "comma-separated label names"},
                    "per_page": {"type": "integer", "minimum": 1, "maximum": 100, "default": 30},
                    "page": {"type": "integer", "minimum": 1, "default": 1},
                },
                "required": ["owner", "repo"],
                "additionalProperties": False,
            },
            output_schema={
                "type": "object",
                "properties": {"issues": {"type": "array", "items": issue_output}},
                "required": ["issues"],
            },
            annotations=Annotations(read_only=True, destructive=False, idempotent=True),
            run=list_issues,
        ),
        Tool(
            name="github.comment_issue",
            description="Add a comment to an issue (or pull request) of a GitHub repository.",
            input_schema={
                "type": "object",
                "properties": {
                    **repo_properties,
                    "number": {"type": "integer", "minimum": 1},
                    "body": {"type": "string", "minLength": 1, "maxLength": 65536},
                },
                "required": ["owner", "repo", "number", "body"],
                "additionalProperties": False,
            },
            output_schema={
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "url": {"type": "string"},
                    "body": {"type": "string"},
                },
                "required": ["id", "url", "body"],
            },
            annotations=Annotations(read_only=False, destructive=False, idempotent=False),
            run=comment_issue,
        ),
    ]


def _repo(arguments: dict[str, Any]) -> str:
    return f"/repos/{arguments['owner']}/{arguments['repo']}"


def _issue(issue: dict[str, Any]) -> dict[str, Any]:
    return {
        "number": issue["number"],
        "title": issue["title"],
        "state": issue["state"],
        "url": issue.get("html_url", ""),
        "author": (issue.get("user") or {}).get("login"),
        "labels": [label["name"] for label in issue.get("labels", []) if isinstance(label, dict)],
        "comments": issue.get("comments", 0),
    }


def _explain(response: httpx.Response) -> str:
    """GitHub's own message (and field errors) — they say what to fix."""
    try:
        payload = response.json()
    except ValueError:
        return f"GitHub answered {response.status_code}: {response.text[:300]}"
    message = payload.get("message", "") if isinstance(payload, dict) else ""
    details = [
        e.get("message") or f"{e.get('field')} {e.get('code')}"
        for e in (payload.get("errors") or [] if isinstance(payload, dict) else [])
        if isinstance(e, dict)
    ]
    explained = f"GitHub answered {response.status_code}: {message}"
    if details:
        explained += " (" + "; ".join(details) + ")"
    if response.status_code == 403 and response.headers.get("x-ratelimit-remaining") == "0":
        explained += f"; rate limit resets at unix time {response.headers.get('x-ratelimit-reset')}"
    return explained
