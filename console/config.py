"""Where the console listens and where it finds the gateway; read from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass

from kernel.settings import Settings

DEFAULT_PORT = 8070


@dataclass(frozen=True)
class ConsoleConfig:
    host: str
    port: int
    gateway_url: str
    # How long a credential's answer from the gateway is reused (the gateway's own key cache
    # holds a verdict as long), so a page of ten calls costs one check.
    session_cache: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ConsoleConfig:
        """``SOMA_CONSOLE_PORT``, else the process's health port (``soma up`` hands one to each
        process), else 8070; ``SOMA_GATEWAY_URL``, else the gateway on ``SOMA_HTTP_PORT``."""
        port_text = os.environ.get("SOMA_CONSOLE_PORT", "").strip()
        if port_text:
            port = int(port_text)
        elif settings.health_port:
            port = settings.health_port
        else:
            port = DEFAULT_PORT
        host = settings.http_host
        gateway = os.environ.get("SOMA_GATEWAY_URL", "").strip()
        if not gateway:
            reach = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
            gateway = f"http://{reach}:{settings.http_port}"
        return cls(host=host, port=port, gateway_url=gateway.rstrip("/"))
