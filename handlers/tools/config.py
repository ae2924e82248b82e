"""Tools settings read from the environment, beside the shared ``kernel.settings.Settings``.

Kept here rather than in the shared settings because only the tools process reads them.
A secret left unset makes its tools unavailable (listed with the reason), never half-working.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from handlers.tools.sandbox import Limits

SYSTEM_PYTHON = Path("/usr/bin/python3")


def default_interpreter() -> str:
    """The system's python3 when there is one, else the real file behind this process's.

    A virtualenv's interpreter often lives under a private folder (a home directory) that the
    sandbox account cannot read; the system's is readable by every user.
    """
    if os.access(SYSTEM_PYTHON, os.X_OK):
        return str(SYSTEM_PYTHON)
    return os.path.realpath(sys.executable)


class McpServer(BaseModel):
    """How to start one MCP server over stdio (the shape MCP client configs use)."""

    command: str
    args: list[str] = []
    env: dict[str, str] | None = None
    cwd: Path | None = None
    # Seconds one tool call may take on this server.
    timeout: float = 60.0


class ToolsConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    # Hosts ``http_fetch`` may reach, comma-separated ("example.com,api.example.com:8443").
    # Empty: the tool is unavailable.
    http_allow: str = Field(default="", alias="SOMA_TOOLS_HTTP_ALLOW")
    http_max_bytes: int = Field(default=1_000_000, alias="SOMA_TOOLS_HTTP_MAX_BYTES")
    http_timeout: float = Field(default=10.0, alias="SOMA_TOOLS_HTTP_TIMEOUT")

    python_timeout: float = Field(default=10.0, alias="SOMA_TOOLS_PYTHON_TIMEOUT")
    python_memory_mb: int = Field(default=256, alias="SOMA_TOOLS_PYTHON_MEMORY_MB")
    python_output_bytes: int = Field(default=64_000, alias="SOMA_TOOLS_PYTHON_OUTPUT_BYTES")
    # The size of the sandbox's private /tmp, and of any one file written there.
    python_disk_mb: int = Field(default=64, alias="SOMA_TOOLS_PYTHON_DISK_MB")
    # Processes and threads one call may have at once.
    python_processes: int = Field(default=16, alias="SOMA_TOOLS_PYTHON_PROCESSES")
    # The interpreter the sandbox runs; the sandbox account must be able to read and run it.
    python_executable: str = Field(default_factory=default_interpreter, alias="SOMA_TOOLS_PYTHON")
    # The account sandboxed code runs as: a name or a uid (default: 65534, "nobody"). When the
    # tools process runs as root, bubblewrap itself is started as this account.
    sandbox_user: str | None = Field(default=None, alias="SOMA_TOOLS_SANDBOX_USER")
    # The bubblewrap program that builds the sandbox; without it the python tool is unavailable.
    bwrap: str = Field(default="bwrap", alias="SOMA_TOOLS_BWRAP")

    github_base_url: str = Field(default="https://api.github.com", alias="SOMA_GITHUB_BASE_URL")
    github_token: str | None = Field(default=None, alias="SOMA_GITHUB_TOKEN")
    slack_base_url: str = Field(default="https://slack.com/api", alias="SOMA_SLACK_BASE_URL")
    slack_token: str | None = Field(default=None, alias="SOMA_SLACK_TOKEN")

    # JSON: {"name": {"command": "...", "args": [...]}}; tools appear as "<name>.<tool>".
    mcp_servers: dict[str, McpServer] = Field(default_factory=dict, alias="SOMA_MCP_SERVERS")

    # How long a redelivered call waits for another delivery of the same call to finish
    # before giving up (the bus then retries it later).
    call_wait: float = Field(default=30.0, alias="SOMA_TOOLS_CALL_WAIT")

    def python_limits(self) -> Limits:
        return Limits(
            timeout=self.python_timeout,
            memory_bytes=self.python_memory_mb * 2**20,
            output_bytes=self.python_output_bytes,
            disk_bytes=self.python_disk_mb * 2**20,
            processes=self.python_processes,
        )

    def allowed_hosts(self) -> list[str]:
        return [h.strip().lower() for h in self.http_allow.split(",") if h.strip()]
