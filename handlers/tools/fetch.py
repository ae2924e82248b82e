"""``http_fetch``: GET a page from a host on the operator's allow-list, within size and time limits.

Redirects are followed by hand so every hop is checked against the allow-list — an allowed host
must not become a way to reach one that is not.
"""

from __future__ import annotations

from typing import Any

import httpx

from handlers.tools.registry import Annotations, Tool, ToolError

MAX_REDIRECTS = 5
TEXTUAL = ("text/", "+json", "+xml", "/json", "/xml", "/javascript")


def host_allowed(url: httpx.URL, allowed: list[str]) -> bool:
    """``example.com`` allows any port of that host; ``example.com:8443`` only that port."""
    host = url.host.lower()
    port = url.port or (443 if url.scheme == "https" else 80)
    return any(entry in (host, f"{host}:{port}") for entry in allowed)


def http_fetch(
    client: httpx.AsyncClient, allowed: list[str], max_bytes: int, timeout: float
) -> Tool:
    async def run(arguments: dict[str, Any]) -> dict[str, Any]:
        url = _checked_url(arguments["url"], allowed)
        for _ in range(MAX_REDIRECTS + 1):
            try:
                async with client.stream(
                    "GET", url, timeout=timeout, follow_redirects=False
                ) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = _checked_url(str(url.join(response.headers["location"])), allowed)
                        continue
                    return await _read(response, max_bytes)
            except httpx.TimeoutException:
                raise ToolError(f"{url} did not answer within {timeout:g} s") from None
            except httpx.HTTPError as exc:
                raise ToolError(f"could not fetch {url}: {type(exc).__name__}: {exc}") from None
        raise ToolError(f"more than {MAX_REDIRECTS} redirects")

    hosts = ", ".join(allowed)
    return Tool(
        name="http_fetch",
        description=(
            f"GET a URL and return its status, content type and text (at most {max_bytes} bytes, "
            f"{timeout:g} s). Only these hosts can be reached: {hosts}."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "url": {"type": "string", "pattern": "^https?://", "maxLength": 2048},
            },
            "required": ["url"],
            "additionalProperties": False,
        },
        output_schema={
            "type": "object",
            "properties": {
                "url": {"type": "string"},
                "status": {"type": "integer"},
                "content_type": {"type": "string"},
                "body": {"type": ["string", "null"]},
                "truncated": {"type": "boolean"},
            },
            "required": ["url", "status", "content_type", "body", "truncated"],
        },
        annotations=Annotations(read_only=True, destructive=False, idempotent=True),
        run=run,
        timeout=timeout * (MAX_REDIRECTS + 1) + 1,
    )


def _checked_url(raw: str, allowed: list[str]) -> httpx.URL:
    try:
        url = httpx.URL(raw)
    except httpx.InvalidURL as exc:
        raise ToolError(f"not a valid URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ToolError(f"only http and https URLs with a host can be fetched, not {raw!r}")
    if not host_allowed(url, allowed):
        raise ToolError(
            f"host {url.host!r} is not on the allow-list; allowed: {', '.join(allowed)}"
        )
    return url


async def _read(response: httpx.Response, max_bytes: int) -> dict[str, Any]:
    body = bytearray()
    truncated = False
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > max_bytes:
            del body[max_bytes:]
            truncated = True
            break
    content_type = response.headers.get("content-type", "")
    kind = content_type.split(";")[0].strip().lower()
    text = None
    if not kind or any(marker in kind for marker in TEXTUAL):
        text = body.decode(response.encoding or "utf-8", errors="replace")
    return {
        "url": str(response.url),
        "status": response.status_code,
        "content_type": content_type,
        "body": text,
        "truncated": truncated,
    }
