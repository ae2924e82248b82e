"""The three streams, provisioned idempotently at start by every process.

Commands use *limits* retention (not work-queue): a work-queue stream refuses overlapping
consumers, and operators must be able to tail commands while each handler's durable consumer
takes its own share. Old commands age out after ``SOMA_COMMANDS_MAX_AGE``.
"""

from __future__ import annotations

from typing import Any

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from schemas.catalogue import DEAD_LETTER_PREFIX, STREAMS
from soma.settings import Settings


def stream_configs(settings: Settings) -> list[StreamConfig]:
    common: dict[str, Any] = {
        "storage": StorageType.FILE,
        "num_replicas": settings.stream_replicas,
        "duplicate_window": settings.dedup_window,
        "discard": DiscardPolicy.OLD,
    }
    return [
        StreamConfig(
            name=STREAMS["cmd"],
            subjects=["soma.cmd.>"],
            retention=RetentionPolicy.LIMITS,
            max_age=settings.commands_max_age,
            description="Commands, one durable consumer per handler service",
            **common,
        ),
        StreamConfig(
            name=STREAMS["evt"],
            subjects=["soma.evt.>"],
            retention=RetentionPolicy.LIMITS,
            max_age=settings.events_max_age,
            max_bytes=settings.events_max_bytes,
            description="Events, kept for replay, tail and analytics",
            **common,
        ),
        StreamConfig(
            name=STREAMS["dlq"],
            subjects=[f"{DEAD_LETTER_PREFIX}.>"],
            retention=RetentionPolicy.LIMITS,
            description="Dead letters with their reason, original subject, headers and body",
            **common,
        ),
    ]


async def provision(js: JetStreamContext, settings: Settings) -> None:
    """Create the streams, or bring an existing one's limits in line with the settings."""
    for config in stream_configs(settings):
        assert config.name
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config)
        else:
            await js.update_stream(config)
