"""``http_fetch`` reaches only allowed hosts, follows redirects only to them, and stays small."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from handlers.tools.config import ToolsConfig
from handlers.tools.fetch import host_allowed, http_fetch
from handlers.tools.invocation import invoke
from handlers.tools.registry import Registry
from handlers.tools.service import local_registry
from schemas.tools import ToolResult
from tests.tools.local_http import JsonHandler, serve


class Site(JsonHandler):
    def do_GET(self) -> None:
        self.read_request()
        port = self.server.server_address[1]  # type: ignore[index]
        if self.path_only == "/hello":
            self.send_text(200, "hello, world")
        elif self.path_only == "/big":
            self.send_text(200, "x" * 5000)
        elif self.path_only == "/slow":
            time.sleep(1.5)
            self.send_text(200, "late")
        elif self.path_only == "/inside":
            self.redirect("/hello")
        elif self.path_only == "/outside":
            self.redirect(f"http://localhost:{port}/hello")
        elif self.path_only == "/image":
            self.send_text(200, "\x89PNG", "image/png")
        else:
            self.send_text(404, "no such page")

    def send_text(self, status: int, text: str, content_type: str = "text/plain") -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", f"{content_type}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def site() -> Iterator[str]:
    with serve(Site) as url:
        yield url


@pytest.fixture
def registry(client: httpx.AsyncClient) -> Registry:
    registry = Registry()
    registry.add(http_fetch(client, ["127.0.0.1"], max_bytes=1000, timeout=0.5))
    return registry


async def fetch(registry: Registry, url: str) -> ToolResult:
    return await invoke(registry, "c1", "http_fetch", {"url": url})


async def test_fetches_a_page_from_an_allowed_host(registry: Registry, site: str) -> None:
    result = await fetch(registry, f"{site}/hello")
    assert result.ok, result.error
    assert result.output == {
        "url": f"{site}/hello",
        "status": 200,
        "content_type": "text/plain; charset=utf-8",
        "body": "hello, world",
        "truncated": False,
    }


async def test_an_error_status_is_reported_not_raised(registry: Registry, site: str) -> None:
    result = await fetch(registry, f"{site}/missing")
    assert result.ok
    assert (result.output["status"], result.output["body"]) == (404, "no such page")


async def test_a_host_not_on_the_allow_list_is_refused(registry: Registry, site: str) -> None:
    port = site.rsplit(":", 1)[1]
    result = await fetch(registry, f"http://localhost:{port}/hello")
    assert not result.ok
    assert result.error == "host 'localhost' is not on the allow-list; allowed: 127.0.0.1"


async def test_a_redirect_within_the_host_is_followed(registry: Registry, site: str) -> None:
    result = await fetch(registry, f"{site}/inside")
    assert result.ok
    assert result.output["url"] == f"{site}/hello"
    assert result.output["body"] == "hello, world"


async def test_a_redirect_to_a_host_not_allowed_is_refused(registry: Registry, site: str) -> None:
    result = await fetch(registry, f"{site}/outside")
    assert not result.ok
    assert "host 'localhost' is not on the allow-list" in (result.error or "")


async def test_the_body_is_cut_at_the_size_limit(registry: Registry, site: str) -> None:
    result = await fetch(registry, f"{site}/big")
    assert result.ok
    assert result.output["body"] == "x" * 1000
    assert result.output["truncated"] is True


async def test_a_slow_server_runs_into_the_time_limit(registry: Registry, site: str) -> None:
    started = time.monotonic()
    result = await fetch(registry, f"{site}/slow")
    assert time.monotonic() - started < 1.4
    assert not result.ok
    assert result.error == f"{site}/slow did not answer within 0.5 s"


async def test_binary_content_is_not_returned_as_text(registry: Registry, site: str) -> None:
    result = await fetch(registry, f"{site}/image")
    assert result.ok
    assert result.output["content_type"].startswith("image/png")
    assert result.output["body"] is None


async def test_only_get_over_http_is_possible(registry: Registry) -> None:
    result = await fetch(registry, "file:///etc/passwd")
    assert not result.ok
    assert "at arguments.url" in (result.error or "")


def test_a_port_on_the_allow_list_restricts_to_that_port() -> None:
    assert host_allowed(httpx.URL("https://api.example.com/x"), ["api.example.com:443"])
    assert not host_allowed(httpx.URL("http://api.example.com:8080/x"), ["api.example.com:443"])
    assert host_allowed(httpx.URL("http://API.example.com:8080/x"), ["api.example.com"])


async def test_with_an_empty_allow_list_the_tool_is_unavailable(client: httpx.AsyncClient) -> None:
    registry = local_registry(ToolsConfig(SOMA_TOOLS_HTTP_ALLOW=""), client)
    assert "http_fetch" not in registry.tools
    assert registry.unavailable["http_fetch"] == "no host is allowed: set SOMA_TOOLS_HTTP_ALLOW"


async def test_the_allow_list_comes_from_the_environment(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, site: str
) -> None:
    monkeypatch.setenv("SOMA_TOOLS_HTTP_ALLOW", "example.org, 127.0.0.1")
    registry = local_registry(ToolsConfig(), client)
    assert "127.0.0.1" in registry.tools["http_fetch"].description
    result: Any = await fetch(registry, f"{site}/hello")
    assert result.ok
