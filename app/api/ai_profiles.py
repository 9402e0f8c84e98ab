from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from app.api.deps import Cursor, DbSession, Limit, TenantContext, TransactionalRoute, Writer
from app.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized, error_responses
from app.schemas.ai_profiles import AIProfileCreate, AIProfileOut, AIProfileUpdate
from app.schemas.common import Page
from app.services.ai_profiles import AIProfileService

router = APIRouter(
    route_class=TransactionalRoute, prefix="/tenants/{tenant_id}/ai-profiles", tags=["ai profiles"]
)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(Unauthorized, Forbidden, NotFound, InvalidInput),
    summary="Create an AI agent profile",
)
def create_ai_profile(data: AIProfileCreate, session: DbSession, scope: Writer) -> AIProfileOut:
    return AIProfileOut.model_validate(AIProfileService(session, scope).create(data))


@router.get("", responses=error_responses(Unauthorized, NotFound))
def list_ai_profiles(
    session: DbSession,
    scope: TenantContext,
    limit: Limit = 20,
    cursor: Cursor = None,
    name: Annotated[
        str | None, Query(max_length=200, description="Name contains (case-insensitive).")
    ] = None,
) -> Page[AIProfileOut]:
    page = AIProfileService(session, scope).list(limit=limit, cursor=cursor, name=name)
    return Page(
        items=[AIProfileOut.model_validate(p) for p in page.items], next_cursor=page.next_cursor
    )


@router.get("/{ai_profile_id}", responses=error_responses(Unauthorized, NotFound))
def get_ai_profile(
    ai_profile_id: uuid.UUID, session: DbSession, scope: TenantContext
) -> AIProfileOut:
    return AIProfileOut.model_validate(AIProfileService(session, scope).get(ai_profile_id))


@router.patch(
    "/{ai_profile_id}", responses=error_responses(Unauthorized, Forbidden, NotFound, InvalidInput)
)
def update_ai_profile(
    ai_profile_id: uuid.UUID, data: AIProfileUpdate, session: DbSession, scope: Writer
) -> AIProfileOut:
    return AIProfileOut.model_validate(AIProfileService(session, scope).update(ai_profile_id, data))


@router.delete(
    "/{ai_profile_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(Unauthorized, Forbidden, NotFound, Conflict),
    summary="Delete an AI profile (409 in_use while a phone number uses it)",
)
def delete_ai_profile(ai_profile_id: uuid.UUID, session: DbSession, scope: Writer) -> Response:
    AIProfileService(session, scope).delete(ai_profile_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
