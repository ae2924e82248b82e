"""What the console reads over the bus besides the live view and the story: saga queries,
dead letters and the state of the streams and their consumers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from bus import deadletter
from bus.request import Requester
from console.messages import as_json
from schemas.catalogue import STREAMS, of_type
from schemas.sagas import SagaInfo, SagaList, SagaListed, SagaQueried, SagaQuery

QUERY_TIMEOUT = 10.0


class NotAnswered(RuntimeError):
    """The saga runner did not answer a query in time (or refused it)."""


async def _ask(requester: Requester, message: Any, expect: str, tenant: str, actor: str) -> Any:
    _, reply = await requester.request(
        message, tenant=tenant, expect={expect}, timeout=QUERY_TIMEOUT, actor=actor
    )
    if reply.schema != expect:
        raise NotAnswered(f"the saga runner refused the query: {reply.payload}")
    return reply.payload


def saga_json(info: SagaInfo) -> dict[str, Any]:
    return {
        "id": info.saga_id,
        "type": info.saga_type,
        "state": info.state,
        "version": info.version,
        "created_at": info.created_at,
        "updated_at": info.updated_at,
        "input": info.input,
        "result": info.result,
        "error": info.error,
        "waiting_for": info.waiting_for,
        "history": [{"at": s.at, "kind": s.kind, "detail": s.detail} for s in info.history],
        "parent_id": info.parent_id,
        "data": info.data,
        "children": info.children,
    }


async def list_sagas(
    requester: Requester,
    tenant: str,
    actor: str,
    saga_type: str | None,
    state: str | None,
    limit: int,
    before: str | None,
) -> dict[str, Any]:
    listed: SagaListed = await _ask(
        requester,
        SagaList(saga_type=saga_type, state=state, limit=limit, before=before),
        of_type(SagaListed).name,
        tenant,
        actor,
    )
    return {
        "tenant": tenant,
        "data": [saga_json(s) for s in listed.sagas],
        "next_cursor": listed.next_cursor,
    }


async def get_saga(requester: Requester, tenant: str, actor: str, saga_id: str) -> Any:
    query = SagaQuery(saga_id=saga_id, include_history=True)
    answer: SagaQueried = await _ask(requester, query, of_type(SagaQueried).name, tenant, actor)
    return None if answer.saga is None else {"tenant": tenant, **saga_json(answer.saga)}


def letter_tenant(letter: deadletter.DeadLetter) -> str:
    tokens = letter.dlq_subject.split(".")
    return tokens[2] if len(tokens) > 2 else ""


def letter_json(letter: deadletter.DeadLetter) -> dict[str, Any]:
    when = datetime.now(UTC)
    try:
        when = datetime.fromisoformat(letter.time.replace("Z", "+00:00"))
    except ValueError:
        pass
    out = as_json(STREAMS["dlq"], letter.seq, letter.dlq_subject, when, letter.headers, letter.body)
    out["suspicions"] = letter.suspicions()
    return out


async def dead_letters(js: JetStreamContext, tenant: str | None, limit: int) -> list[Any]:
    letters = await deadletter.list_all(js, limit=limit if tenant is None else 10 * limit)
    kept = [x for x in letters if tenant is None or letter_tenant(x) == tenant]
    return [letter_json(x) for x in kept[:limit]]


async def dead_letter(js: JetStreamContext, seq: int) -> deadletter.DeadLetter | None:
    try:
        return await deadletter.get(js, seq)
    except NotFoundError:
        return None


async def replay(js: JetStreamContext, seq: int) -> dict[str, Any]:
    """Replay one dead letter; the outcome says where it went or why it stayed."""
    try:
        subject = await deadletter.replay(js, seq)
    except deadletter.Untrusted as refused:
        return {"seq": seq, "replayed": False, "reasons": refused.reasons}
    except NotFoundError:
        return {"seq": seq, "replayed": False, "reasons": ["it is no longer in the stream"]}
    return {"seq": seq, "replayed": True, "subject": subject}


async def _api(nc: Client, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    reply = await nc.request(subject, json.dumps(body or {}).encode(), timeout=5)
    data: dict[str, Any] = json.loads(reply.data)
    if "error" in data:
        raise NotAnswered(f"{subject}: {data['error'].get('description', data['error'])}")
    return data


async def _paged(nc: Client, subject: str, key: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    while True:
        page = await _api(nc, subject, {"offset": len(items)})
        batch = page.get(key) or []
        items.extend(batch)
        if not batch or len(items) >= page.get("total", 0):
            return items


async def streams(nc: Client) -> list[dict[str, Any]]:
    """Every stream's size and each consumer's lag, in-flight and redeliveries, read through
    the JetStream API (its JSON has fields the client's typed objects drop)."""
    out = []
    for raw in sorted(
        await _paged(nc, "$JS.API.STREAM.LIST", "streams"), key=lambda s: s["config"]["name"]
    ):
        name = raw["config"]["name"]
        state = raw.get("state", {})
        consumers = await _paged(nc, f"$JS.API.CONSUMER.LIST.{name}", "consumers")
        out.append(
            {
                "name": name,
                "subjects": raw["config"].get("subjects", []),
                "messages": state.get("messages", 0),
                "bytes": state.get("bytes", 0),
                "last_seq": state.get("last_seq", 0),
                "consumers": sorted(
                    (
                        {
                            "name": c.get("name"),
                            "durable": bool(c.get("config", {}).get("durable_name")),
                            "pending": c.get("num_pending", 0),
                            "ack_pending": c.get("num_ack_pending", 0),
                            "redelivered": c.get("num_redelivered", 0),
                            "waiting": c.get("num_waiting", 0),
                        }
                        for c in consumers
                    ),
                    key=lambda c: str(c["name"]),
                ),
            }
        )
    return out
