from __future__ import annotations

from fastapi import APIRouter, Response, status

from app.api.deps import (
    AdminOnly,
    Cursor,
    DbSession,
    Limit,
    TenantContext,
    TransactionalRoute,
    Writer,
)
from app.errors import Conflict, Forbidden, NotFound, Unauthorized, error_responses
from app.schemas.common import Page
from app.schemas.tenants import TenantCreate, TenantOut, TenantUpdate
from app.services.tenants import TenantService

router = APIRouter(route_class=TransactionalRoute, prefix="/tenants", tags=["tenants"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(Unauthorized, Forbidden, Conflict),
    summary="Create a tenant (platform admin)",
)
def create_tenant(data: TenantCreate, session: DbSession, _: AdminOnly) -> TenantOut:
    return TenantOut.model_validate(TenantService(session).create(data))


@router.get("", responses=error_responses(Unauthorized, Forbidden), summary="List tenants")
def list_tenants(
    session: DbSession, _: AdminOnly, limit: Limit = 20, cursor: Cursor = None
) -> Page[TenantOut]:
    page = TenantService(session).list(limit=limit, cursor=cursor)
    return Page(
        items=[TenantOut.model_validate(t) for t in page.items], next_cursor=page.next_cursor
    )


@router.get("/{tenant_id}", responses=error_responses(Unauthorized, NotFound))
def get_tenant(session: DbSession, scope: TenantContext) -> TenantOut:
    return TenantOut.model_validate(TenantService(session).get(scope))


@router.patch(
    "/{tenant_id}",
    responses=error_responses(Unauthorized, Forbidden, NotFound),
    summary="Update a tenant (plan and status: platform admin only)",
)
def update_tenant(data: TenantUpdate, session: DbSession, scope: Writer) -> TenantOut:
    return TenantOut.model_validate(TenantService(session).update(scope, data))


@router.delete(
    "/{tenant_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(Unauthorized, Forbidden, NotFound),
    summary="Delete a tenant and all its data (platform admin)",
)
def delete_tenant(session: DbSession, scope: TenantContext, _: AdminOnly) -> Response:
    TenantService(session).delete(scope)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
