"""Who is calling, and the one helper every tenant-owned query starts from."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar, cast

from sqlalchemy import ColumnElement, Select, select
from sqlalchemy.orm import Session

from app.config.database import bind_tenant
from app.errors import NotFound
from app.models.tenant import Tenant


class Role(StrEnum):
    platform_admin = "platform_admin"
    admin = "admin"
    read_only = "read_only"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the platform admin, or a key of one tenant."""

    role: Role
    tenant_id: uuid.UUID | None = None
    key_id: uuid.UUID | None = None
    # A tenant key's tenant, as read when the key was resolved (same transaction).
    tenant_status: str | None = None
    tenant_plan: str | None = None

    @property
    def is_platform_admin(self) -> bool:
        return self.role is Role.platform_admin

    def may_access(self, tenant_id: uuid.UUID) -> bool:
        return self.is_platform_admin or self.tenant_id == tenant_id


@dataclass(frozen=True)
class TenantScope:
    """The tenant a request acts in; the database transaction is bound to the same tenant."""

    tenant_id: uuid.UUID
    principal: Principal
    tenant_status: str
    plan: str


M = TypeVar("M")


def tenant_filter(model: Any, tenant: TenantScope | uuid.UUID) -> ColumnElement[bool]:
    """`model.tenant_id = <tenant>`: the condition every tenant-owned statement carries.

    `model` is a mapped class or a Core table; SELECTs start from `scoped()`, UPDATEs and DELETEs
    add this condition, so no statement spells the tenant filter by hand.
    """
    tenant_id = tenant if isinstance(tenant, uuid.UUID) else tenant.tenant_id
    column: Any = getattr(model, "c", model).tenant_id
    return cast("ColumnElement[bool]", column == tenant_id)


def scoped(model: type[M], scope: TenantScope | uuid.UUID) -> Select[M]:
    """`SELECT model WHERE tenant_id = <tenant>`: the start of every tenant-owned query (a tenant
    id where Twilio's request found the tenant, a scope everywhere else)."""
    return select(model).where(tenant_filter(model, scope))


def get_scoped(
    session: Session,
    model: type[M],
    scope: TenantScope | uuid.UUID,
    row_id: uuid.UUID,
    *,
    what: str,
) -> M:
    """The row `row_id` of the scope's tenant, or NotFound (also for another tenant's row).

    The one lookup by id: a tenant row's primary key, and so its ORM identity, is
    `(tenant_id, id)` (app/models/base.py), so `session.get(Model, id)` does not work; this
    matches the whole key, one probe of the primary-key index.
    """
    row = session.scalars(
        scoped(model, scope).where(model.id == row_id)  # type: ignore[attr-defined]
    ).one_or_none()
    if row is None:
        raise NotFound(f"{what} not found.")
    return row


def get_scoped_for_update(
    session: Session,
    model: type[M],
    scope: TenantScope | uuid.UUID,
    row_id: uuid.UUID,
    *,
    what: str,
) -> M:
    """`get_scoped`, with the row locked FOR UPDATE until the transaction ends."""
    row = session.scalars(
        scoped(model, scope)
        .where(model.id == row_id)  # type: ignore[attr-defined]
        .with_for_update()
    ).one_or_none()
    if row is None:
        raise NotFound(f"{what} not found.")
    return row


def lock_tenant(session: Session, tenant_id: uuid.UUID) -> Tenant | None:
    """Serialize limit checks of one tenant: holds the tenant row lock until the transaction ends.

    Count-then-insert under this lock is exact under concurrency (20 racing creates against a
    limit of 5 admit exactly 5); other tenants are not blocked. Returns the locked row (None if
    the tenant is gone), so callers need no second read.
    """
    # FOR NO KEY UPDATE (key_share=True), not FOR UPDATE: the foreign-key check of every insert
    # under this tenant takes KEY SHARE on the tenant row and must not queue behind a limit check.
    return session.scalars(
        select(Tenant).where(Tenant.id == tenant_id).with_for_update(key_share=True)
    ).one_or_none()


def enter_tenant(session: Session, principal: Principal, tenant_id: uuid.UUID) -> TenantScope:
    """The platform admin acting in `tenant_id`: bind the transaction to it and read its state,
    or NotFound."""
    bind_tenant(session, tenant_id)
    row = session.execute(
        select(Tenant.status, Tenant.plan).where(Tenant.id == tenant_id)
    ).one_or_none()
    if row is None:
        raise NotFound("Tenant not found.")
    return TenantScope(
        tenant_id=tenant_id, principal=principal, tenant_status=row.status, plan=row.plan
    )
