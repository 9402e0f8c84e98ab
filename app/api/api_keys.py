from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from app.api.deps import Cursor, DbSession, Limit, TenantContext, TransactionalRoute, Writer
from app.errors import Forbidden, NotFound, Unauthorized, error_responses
from app.schemas.common import Page
from app.schemas.tenants import ApiKeyCreate, ApiKeyCreated, ApiKeyOut
from app.services.api_keys import ApiKeyService

router = APIRouter(
    route_class=TransactionalRoute, prefix="/tenants/{tenant_id}/api-keys", tags=["api keys"]
)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(Unauthorized, Forbidden, NotFound),
    summary="Create an API key (the key is shown only in this response)",
)
def create_api_key(data: ApiKeyCreate, session: DbSession, scope: Writer) -> ApiKeyCreated:
    key, plaintext = ApiKeyService(session, scope).create(data)
    return ApiKeyCreated(**ApiKeyOut.model_validate(key).model_dump(), key=plaintext)


@router.get("", responses=error_responses(Unauthorized, NotFound))
def list_api_keys(
    session: DbSession, scope: TenantContext, limit: Limit = 20, cursor: Cursor = None
) -> Page[ApiKeyOut]:
    page = ApiKeyService(session, scope).list(limit=limit, cursor=cursor)
    return Page(
        items=[ApiKeyOut.model_validate(k) for k in page.items], next_cursor=page.next_cursor
    )


@router.delete(
    "/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(Unauthorized, Forbidden, NotFound),
    summary="Revoke an API key (effective on the next request)",
)
def revoke_api_key(key_id: uuid.UUID, session: DbSession, scope: Writer) -> Response:
    ApiKeyService(session, scope).revoke(key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
