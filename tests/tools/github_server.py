"""A local server speaking the part of GitHub's REST API v3 the issue tools use.

It checks what GitHub checks (the bearer token, JSON bodies, required fields) and answers with
GitHub's shapes, including its error bodies, so the adapter is exercised against the protocol.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from tests.tools.local_http import JsonHandler

TOKEN = "ghp_test0123456789"
REPO = re.compile(r"^/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/issues(?:/(?P<number>\d+)/comments)?$")


class GitHubState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.repos: dict[str, list[dict[str, Any]]] = {"octo/hello": []}
        self.comments: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []

    def add_pull_request(self, repo: str, title: str) -> None:
        issue = self._issue(repo, title, "", [])
        issue["pull_request"] = {
            "url": f"https://api.github.com/repos/{repo}/pulls/{issue['number']}"
        }

    def _issue(self, repo: str, title: str, body: str, labels: list[str]) -> dict[str, Any]:
        issues = self.repos[repo]
        number = len(issues) + 1
        issue = {
            "id": 1000 + number,
            "node_id": f"I_kwDO{number:06d}",
            "url": f"https://api.github.com/repos/{repo}/issues/{number}",
            "html_url": f"https://github.com/{repo}/issues/{number}",
            "number": number,
            "state": "open",
            "title": title,
            "body": body,
            "user": {"login": "soma-bot", "id": 42, "type": "Bot"},
            "labels": [{"id": i, "name": n, "color": "ededed"} for i, n in enumerate(labels)],
            "comments": 0,
            "created_at": "2025-11-25T10:00:00Z",
            "updated_at": "2025-11-25T10:00:00Z",
        }
        issues.append(issue)
        return issue


def handler_for(state: GitHubState) -> type[JsonHandler]:
    class GitHub(JsonHandler):
        def do_GET(self) -> None:
            self.handle_api("GET")

        def do_POST(self) -> None:
            self.handle_api("POST")

        def handle_api(self, method: str) -> None:
            self.read_request()
            with state.lock:
                state.requests.append(
                    {
                        "method": method,
                        "path": self.path_only,
                        "query": self.query,
                        "body": self.body,
                        "headers": dict(self.headers),
                    }
                )
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    refusal = {
                        "message": "Bad credentials",
                        "documentation_url": "https://docs.github.com/rest",
                    }
                    return self.send_json(401, refusal)
                match = REPO.match(self.path_only)
                if not match or f"{match['owner']}/{match['repo']}" not in state.repos:
                    return self.send_json(404, {"message": "Not Found"})
                repo = f"{match['owner']}/{match['repo']}"
                if match["number"] and method == "POST":
                    return self.comment(repo, int(match["number"]))
                if method == "POST":
                    return self.create(repo)
                return self.list(repo)

        def create(self, repo: str) -> None:
            body = self.body or {}
            if not body.get("title"):
                errors = [{"resource": "Issue", "field": "title", "code": "missing_field"}]
                return self.send_json(422, {"message": "Validation Failed", "errors": errors})
            issue = state._issue(repo, body["title"], body.get("body", ""), body.get("labels", []))
            self.send_json(201, issue)

        def list(self, repo: str) -> None:
            wanted = self.query.get("state", "open")
            per_page = int(self.query.get("per_page", 30))
            found = [i for i in state.repos[repo] if wanted == "all" or i["state"] == wanted]
            self.send_json(200, list(reversed(found))[:per_page])

        def comment(self, repo: str, number: int) -> None:
            if number > len(state.repos[repo]):
                return self.send_json(404, {"message": "Not Found"})
            issue = state.repos[repo][number - 1]
            issue["comments"] += 1
            comment = {
                "id": 5000 + len(state.comments),
                "html_url": f"{issue['html_url']}#issuecomment-{5000 + len(state.comments)}",
                "body": (self.body or {})["body"],
                "user": {"login": "soma-bot"},
            }
            state.comments.append(comment)
            self.send_json(201, comment)

    return GitHub
