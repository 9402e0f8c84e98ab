"""Reusable dependencies: the request's transaction, the caller, and the tenant it acts in."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Query
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config.database import get_session_factory, set_tenant_context
from app.errors import Forbidden, NotFound, TenantSuspended, Unauthorized
from app.models import Tenant
from app.services.auth import authenticate
from app.services.scope import Principal, Role, TenantScope


def get_db_session() -> Iterator[Session]:
    """One transaction per request: committed when the handler returns, rolled back on error."""
    session = get_session_factory()()
    try:
        with session.begin():
            yield session
    finally:
        session.close()


# scope="function": the commit happens before the response is sent, so a 201 means it is stored.
DbSession = Annotated[Session, Depends(get_db_session, scope="function")]


bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="The platform admin key or a tenant API key (vca_…).",
)


def get_principal(
    session: DbSession,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    if credentials is None or not credentials.credentials.strip():
        raise Unauthorized()
    principal = authenticate(session, credentials.credentials.strip())
    if principal is None:
        raise Unauthorized("The API key is invalid, expired or revoked.")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal, scope="function")]


def require_platform_admin(principal: CurrentPrincipal) -> Principal:
    if not principal.is_platform_admin:
        raise Forbidden("This operation needs the platform admin key.")
    return principal


AdminOnly = Annotated[Principal, Depends(require_platform_admin, scope="function")]

TenantIdPath = Annotated[uuid.UUID, Path(description="The tenant's id.")]


def get_tenant_scope(
    tenant_id: TenantIdPath, principal: CurrentPrincipal, session: DbSession
) -> TenantScope:
    """Bind the request's transaction to `tenant_id`, if the caller may act in it.

    Another tenant's id answers exactly like an id that does not exist (404), so a key cannot
    learn which tenants exist.
    """
    if not principal.may_access(tenant_id):
        raise NotFound("Tenant not found.")
    set_tenant_context(session, tenant_id)
    if principal.tenant_id == tenant_id and principal.tenant_status and principal.tenant_plan:
        # Read with the key in this same transaction: no second lookup.
        return TenantScope(
            tenant_id=tenant_id,
            principal=principal,
            tenant_status=principal.tenant_status,
            plan=principal.tenant_plan,
        )
    row = session.execute(
        select(Tenant.status, Tenant.plan).where(Tenant.id == tenant_id)
    ).one_or_none()
    if row is None:
        raise NotFound("Tenant not found.")
    return TenantScope(
        tenant_id=tenant_id, principal=principal, tenant_status=row.status, plan=row.plan
    )


TenantContext = Annotated[TenantScope, Depends(get_tenant_scope, scope="function")]


def require_writer(scope: TenantContext) -> TenantScope:
    """Writes need an admin key (or the platform admin) and, for tenant keys, an active tenant."""
    if scope.principal.role is Role.read_only:
        raise Forbidden("This API key is read-only.")
    if not scope.principal.is_platform_admin and scope.tenant_status == "suspended":
        raise TenantSuspended()
    return scope


Writer = Annotated[TenantScope, Depends(require_writer, scope="function")]

Limit = Annotated[int, Query(ge=1, le=100, description="Page size (1-100).")]
Cursor = Annotated[str | None, Query(max_length=512, description="next_cursor of the last page.")]
