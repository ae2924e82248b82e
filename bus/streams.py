"""The streams, the gateway's idempotency bucket and the revocations bucket, and who may create
them.

Commands use *limits* retention (not work-queue): a work-queue stream refuses overlapping
consumers, and operators must be able to tail commands while each handler's durable consumer
takes its own share. Old commands age out after ``SOMA_COMMANDS_MAX_AGE``.

Creating or changing a stream is the provisioning identity's right alone (``soma up``,
``soma migrate``, the ``admin`` NATS user): a service user that could update a stream could
erase the event history or republish commands to itself. So every process checks the streams
first and asks for nothing when they are already as expected; only what is missing or different
is created or updated, and a process refused that right says who provisions the streams.
"""

from __future__ import annotations

import logging
from typing import Any

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError

from bus.config import BusSettings
from bus.errors import BusUnavailable
from schemas.catalogue import DEAD_LETTER_PREFIX, STREAMS
from schemas.identity import REVOCATIONS_BUCKET

log = logging.getLogger("soma.bus")

IDEMPOTENCY_BUCKET = "soma_idempotency"
# Unanswered JetStream API calls: what a publish-permission refusal looks like to the client.
_REFUSED = (NatsTimeoutError, NoRespondersError, TimeoutError)


class StreamsNotProvisioned(BusUnavailable):
    """A stream is missing and this connection may not create it: the bus is unusable to it.

    A ``BusUnavailable``, so ``soma run`` and the operator commands print the message, not a trace.
    """


def provisioned_by() -> str:
    return (
        "streams are provisioned by `soma migrate` / the admin user: run `soma migrate` with "
        "NATS_URL naming the admin user (or start the system with `soma up`), then start "
        "this process again"
    )


def stream_configs(settings: BusSettings) -> list[StreamConfig]:
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
        idempotency_bucket_config(settings),
        revocations_bucket_config(settings),
    ]


def idempotency_bucket_config(settings: BusSettings) -> StreamConfig:
    """The gateway's Idempotency-Key records: a key-value bucket keeping one value per key.

    The same stream nats-py's ``create_key_value(bucket=..., history=1, ttl=...)`` makes, so
    ``js.key_value(IDEMPOTENCY_BUCKET)`` opens it and the gateway needs no right to create it.
    """
    ttl = settings.idempotency_ttl
    return StreamConfig(
        name=f"KV_{IDEMPOTENCY_BUCKET}",
        description="Gateway Idempotency-Key records",
        subjects=[f"$KV.{IDEMPOTENCY_BUCKET}.>"],
        allow_direct=True,
        allow_rollup_hdrs=True,
        allow_msg_ttl=True,
        deny_delete=True,
        discard=DiscardPolicy.NEW,
        duplicate_window=min(120.0, ttl),
        max_age=ttl,
        max_consumers=-1,
        max_msgs=-1,
        max_msgs_per_subject=1,
        num_replicas=settings.stream_replicas,
        storage=StorageType.FILE,
    )


def revocations_bucket_config(settings: BusSettings) -> StreamConfig:
    """Identity's revocations and public key set, watched by every gateway.

    The bucket itself never ages anything out (the key set must stay); each revocation is
    written with a per-message TTL, the remaining lifetime of the tokens it covers, so the
    server forgets it when it can no longer matter. Shaped as nats-py's ``create_key_value``
    makes a bucket, so ``js.key_value(REVOCATIONS_BUCKET)`` opens it without the right to make it.
    """
    return StreamConfig(
        name=f"KV_{REVOCATIONS_BUCKET}",
        description="Identity revocations and signing key set, watched by the gateways",
        subjects=[f"$KV.{REVOCATIONS_BUCKET}.>"],
        allow_direct=True,
        allow_rollup_hdrs=True,
        allow_msg_ttl=True,
        deny_delete=True,
        discard=DiscardPolicy.NEW,
        duplicate_window=120.0,
        max_age=0,
        max_consumers=-1,
        max_msgs=-1,
        max_msgs_per_subject=1,
        num_replicas=settings.stream_replicas,
        storage=StorageType.FILE,
    )


def differences(expected: StreamConfig, actual: StreamConfig) -> list[str]:
    """The settings in which the stream on the server differs from the one we ask for."""
    have = actual.as_dict()
    return sorted(key for key, value in expected.as_dict().items() if have.get(key) != value)


async def provision(js: JetStreamContext, settings: BusSettings) -> None:
    """Make sure every stream exists as the settings describe, asking only for what is missing.

    A stream already as expected costs one STREAM.INFO. A missing one is created; one whose
    limits differ is updated. Refused the creation: ``StreamsNotProvisioned``; refused the
    update: a warning, and the stream is used as the provisioning step left it.
    """
    for config in stream_configs(settings):
        assert config.name
        try:
            info = await js.stream_info(config.name)
        except NotFoundError:
            try:
                await js.add_stream(config)
            except _REFUSED as exc:
                raise StreamsNotProvisioned(
                    f"stream {config.name} does not exist and this connection may not create it "
                    f"(no answer to $JS.API.STREAM.CREATE.{config.name}: {type(exc).__name__}); "
                    + provisioned_by()
                ) from exc
            log.info("created stream %s", config.name)
            continue
        changed = differences(config, info.config)
        if not changed:
            continue
        try:
            await js.update_stream(config)
        except (*_REFUSED, APIError) as exc:
            log.warning(
                "stream %s differs from this process's settings (%s) and was left as it is "
                "(%s); %s",
                config.name,
                ", ".join(changed),
                type(exc).__name__,
                provisioned_by(),
            )
        else:
            log.info("updated stream %s: %s", config.name, ", ".join(changed))
