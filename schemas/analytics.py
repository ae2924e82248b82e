"""Usage reports: tokens, cost and latency of the envelope's tenant, grouped as asked."""

from typing import Literal

import msgspec

from schemas.base import Message

GroupBy = Literal["model", "saga_type", "day", "user", "key", "tenant"]


class UsageRow(Message):
    """One group: ``group`` maps each grouping dimension to its value."""

    group: dict[str, str] = {}
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms_avg: float = 0.0


class AnalyticsReport(Message):
    """Usage from ``since`` to ``until`` (epoch seconds; open-ended when None)."""

    since: float | None = None
    until: float | None = None
    group_by: list[GroupBy] = msgspec.field(default_factory=lambda: ["model"])


class AnalyticsReported(Message):
    rows: list[UsageRow] = []
    since: float | None = None
    until: float | None = None
