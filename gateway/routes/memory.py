"""Memory: add, list, search and delete memories of the caller's tenant — chat turns' memories too.

Without a ``user`` a request reaches the caller's own memories. Only admins and services may name
another user of the tenant here, and the memory process then checks the tenant's memory grants
(``memory.tenant_wide_roles``) for the caller's role too: either refusal is a 403. The tenant
itself always comes from the credential, never from the request.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from gateway.auth import Principal
from gateway.context import caller, gateway_of
from gateway.dispatch import derived_id
from gateway.errors import forbidden, not_found
from gateway.openai_bodies import ERRORS
from schemas.envelope import new_id
from schemas.memory import (
    MemoryAdd,
    MemoryAdded,
    MemoryDelete,
    MemoryDeleted,
    MemoryItem,
    MemoryList,
    MemoryListed,
    MemoryRecall,
    MemoryRecalled,
)

router = APIRouter(tags=["memory"])

_ID = r"^[A-Za-z0-9_.:-]{1,128}$"
_ANY_USER = frozenset({"admin", "service"})


def _user(principal: Principal, requested: str | None) -> str:
    if requested is None or requested == principal.user:
        return principal.user
    if _ANY_USER & set(principal.roles):
        return requested
    raise forbidden("You may only reach your own memories.")


def _role(principal: Principal) -> str | None:
    return principal.role or None


_USER = "Whose memories (admins and services only; default: yours)."


class MemoryCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "text": "Alice prefers answers with code samples in Go.",
                    "session": "support-42",
                    "metadata": {"source": "onboarding"},
                }
            ]
        },
    )
    text: str = Field(min_length=1, max_length=100_000, description="What to remember.")
    id: str | None = Field(
        default=None, pattern=_ID, description="Your own id; adding it again changes nothing."
    )
    user: str | None = Field(default=None, max_length=200, description=_USER)
    session: str | None = Field(
        default=None, max_length=200, description="The conversation it belongs to, if any."
    )
    metadata: dict[str, Any] = Field(default={}, description="Labels, kept as given.")


class MemoryCreated(BaseModel):
    id: str
    object: Literal["memory"] = "memory"
    created: bool


class MemorySearch(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"query": "How does Alice like answers?", "top_k": 3}]},
    )
    query: str = Field(min_length=1, max_length=10_000, description="Text to search by meaning.")
    user: str | None = Field(default=None, max_length=200, description=_USER)
    session: str | None = Field(
        default=None, max_length=200, description="Only memories of this conversation."
    )
    top_k: int = Field(default=5, ge=1, le=100, description="At most this many hits, best first.")


class MemoryHit(BaseModel):
    id: str
    text: str
    score: float
    user: str | None = None
    session: str | None = None
    metadata: dict[str, Any] = {}
    created_at: float | None = None


class MemoryHits(BaseModel):
    object: Literal["list"] = "list"
    data: list[MemoryHit]


class MemoryPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[MemoryHit]
    # How many memories the scope holds; page on with ``offset``.
    total: int
    has_more: bool


class MemoryRemoved(BaseModel):
    object: Literal["memory.deleted"] = "memory.deleted"
    deleted: int


@router.post(
    "/v1/memory",
    response_model=MemoryCreated,
    status_code=201,
    responses=ERRORS,
    summary="Add a memory",
)
async def add_memory(
    body: MemoryCreate,
    request: Request,
    principal: Annotated[Principal, Depends(caller("memory"))],
) -> MemoryCreated:
    added = await gateway_of(request).dispatch.call(
        MemoryAdd(
            id=body.id or derived_id("memory.add") or new_id(),
            text=body.text,
            user=_user(principal, body.user),
            session=body.session,
            metadata=body.metadata,
            caller_role=_role(principal),
        ),
        MemoryAdded,
        tenant=principal.tenant,
        actor=principal.user,
    )
    return MemoryCreated(id=added.id, created=added.created)


@router.get(
    "/v1/memory",
    response_model=MemoryPage,
    responses=ERRORS,
    summary="List memories, newest first",
    description="Every memory in scope, whatever stored it (the API or a chat turn): the caller's "
    "own, or with `user` (admins and services) another user's. Page with `limit` and `offset`.",
)
async def list_memories(
    request: Request,
    principal: Annotated[Principal, Depends(caller("memory"))],
    user: Annotated[str | None, Query(max_length=200)] = None,
    session: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> MemoryPage:
    page = await gateway_of(request).dispatch.call(
        MemoryList(
            user=_user(principal, user),
            session=session,
            limit=limit,
            offset=offset,
            caller_role=_role(principal),
        ),
        MemoryListed,
        tenant=principal.tenant,
        actor=principal.user,
    )
    return MemoryPage(
        data=[_hit(i) for i in page.items],
        total=page.total,
        has_more=offset + len(page.items) < page.total,
    )


def _hit(item: MemoryItem) -> MemoryHit:
    return MemoryHit(
        id=item.id,
        text=item.text,
        score=item.score,
        user=item.user,
        session=item.session,
        metadata=item.metadata,
        created_at=item.created_at,
    )


@router.post(
    "/v1/memory/search", response_model=MemoryHits, responses=ERRORS, summary="Search memories"
)
async def search_memory(
    body: MemorySearch,
    request: Request,
    principal: Annotated[Principal, Depends(caller("memory"))],
) -> MemoryHits:
    found = await gateway_of(request).dispatch.call(
        MemoryRecall(
            query=body.query,
            user=_user(principal, body.user),
            session=body.session,
            top_k=body.top_k,
            caller_role=_role(principal),
        ),
        MemoryRecalled,
        tenant=principal.tenant,
        actor=principal.user,
    )
    return MemoryHits(data=[_hit(i) for i in found.items])


@router.delete(
    "/v1/memory/{memory_id}",
    response_model=MemoryRemoved,
    responses=ERRORS,
    summary="Delete a memory",
)
async def delete_memory(
    memory_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(caller("memory"))],
) -> MemoryRemoved:
    deleted = await gateway_of(request).dispatch.call(
        MemoryDelete(ids=[memory_id], caller_role=_role(principal)),
        MemoryDeleted,
        tenant=principal.tenant,
        actor=principal.user,
    )
    if deleted.deleted == 0:
        raise not_found(f"No memory with id '{memory_id}'.", param="memory_id")
    return MemoryRemoved(deleted=deleted.deleted)


@router.delete(
    "/v1/memory",
    response_model=MemoryRemoved,
    responses=ERRORS,
    summary="Delete every memory of a user (and session)",
)
async def delete_memories(
    request: Request,
    principal: Annotated[Principal, Depends(caller("memory"))],
    user: Annotated[str | None, Query(max_length=200)] = None,
    session: Annotated[str | None, Query(max_length=200)] = None,
) -> MemoryRemoved:
    deleted = await gateway_of(request).dispatch.call(
        MemoryDelete(
            ids=None, user=_user(principal, user), session=session, caller_role=_role(principal)
        ),
        MemoryDeleted,
        tenant=principal.tenant,
        actor=principal.user,
    )
    return MemoryRemoved(deleted=deleted.deleted)
