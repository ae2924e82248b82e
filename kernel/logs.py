"""Log lines an operator can use: which process, which turn, which tenant, which trace — and no
secret.

``SOMA_LOG_FORMAT=json`` writes one JSON object a line (``timestamp``, ``level``, ``logger``,
``message``, ``trace_id``, ``correlation_id``, ``tenant``, ``process``, and ``exception`` when
there is one), for a log shipper; anything else keeps the text lines ``soma up`` shows in a
terminal, with the turn's correlation id when there is one.

Secrets reach log lines by accident: a NATS or database URL with its password in an error
message, a bearer token or an API key quoted back in an exception. Every line passes through
``redact`` after it is formatted, whatever logged it, so no call site has to remember.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from typing import Any

from bus.tracing import current_trace_id, scope

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

_SECRETS: list[tuple[re.Pattern[str], str]] = [
    # user:password@ in any URL (nats://, postgresql+asyncpg://, redis://, https://)
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^\s:/@'\"]*):([^\s@/'\"]+)@"), r"\1\2:***@"),
    # JSON Web Tokens: three base64url parts, the first a JSON header
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "***jwt***"),
    # our API keys (sk-soma-<id>-<secret>) and providers' (sk-..., sk-ant-...)
    (re.compile(r"\b(sk-soma-[0-9a-f]{16})-[A-Za-z0-9_-]+"), r"\1-***"),
    (re.compile(r"\bsk-(?!soma-[0-9a-f]{16}-\*)[A-Za-z0-9_-]{16,}"), "sk-***"),
    # Authorization headers and key=value secrets
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 ***"),
    (
        re.compile(
            r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)"
            r"(['\"]?\s*[:=]\s*['\"]?)[^\s'\",&}]+"
        ),
        r"\1\2***",
    ),
]


# Something each pattern above needs in order to match, in lower case: most lines hold none of
# them, and looking for these costs a fraction of running every pattern over the line.
_HINTS = (
    "://", "eyj", "sk-", "bearer", "basic", "passw", "pwd", "secret", "token",
    "apikey", "api_key", "api-key", "accesskey", "access_key", "access-key",
)  # fmt: skip


def redact(text: str) -> str:
    """``text`` with every credential it seems to hold replaced by ``***``."""
    lowered = text.casefold()
    if not any(hint in lowered for hint in _HINTS):
        return text
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class _Context(logging.Filter):
    """Stamps each record with the process, the current turn and tenant, and the trace id."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def filter(self, record: logging.LogRecord) -> bool:
        bound = scope.get()
        record.process_name = self.process
        record.correlation_id, record.tenant = bound if bound else (None, None)
        record.trace_id = current_trace_id()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "trace_id": getattr(record, "trace_id", None),
            "correlation_id": getattr(record, "correlation_id", None),
            "tenant": getattr(record, "tenant", None),
            "process": getattr(record, "process_name", None),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            line["exception"] = self.formatStack(record.stack_info)
        return redact(json.dumps(line, ensure_ascii=False, default=str))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        correlation = getattr(record, "correlation_id", None)
        if correlation and "\n" not in text:
            text = f"{text} [{correlation}]"
        return redact(text)


def _iso(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def json_wanted() -> bool:
    return os.environ.get("SOMA_LOG_FORMAT", "").strip().lower() == "json"


def configure(process: str) -> None:
    """Give every root handler (the one ``soma run`` installed, or a new one on stderr) the
    context filter and the chosen format; uvicorn's own loggers are sent to the root, so the
    gateway's access and error lines look like the rest."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    formatter: logging.Formatter = JsonFormatter() if json_wanted() else TextFormatter()
    for handler in root.handlers:
        handler.setFormatter(formatter)
        if not any(isinstance(f, _Context) for f in handler.filters):
            handler.addFilter(_Context(process))
    # The HTTP clients under the model SDKs log every request at INFO: a line per model call
    # that the call's own event (slm.completed) and metrics already record, written on the
    # call's path before its answer is published.
    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
