"""Resolving a presented bearer key to a principal."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from app.config.database import bind_tenant
from app.config.settings import settings
from app.models.base import utcnow
from app.security import constant_time_equals, hash_key, parse_prefix
from app.services.scope import Principal, Role

# last_used_at is informative; writing it on every request would turn each read into a write.
LAST_USED_RESOLUTION = timedelta(seconds=60)

# One round trip (migration 0004): the cross-tenant key lookup, the tenant binding of the
# transaction and the throttled last_used_at write. Built once: every authenticated request runs it.
_AUTHENTICATE_ROW = func.authenticate_api_key(
    bindparam("prefix"), bindparam("key_hash"), bindparam("now"), bindparam("touch_before")
).table_valued("key_id", "tenant_id", "role", "tenant_status", "tenant_plan")
_AUTHENTICATE = select(*_AUTHENTICATE_ROW.c)


def authenticate(session: Session, presented: str) -> Principal | None:
    """The principal behind `presented`, or None for an unknown, revoked or expired key.

    A tenant key also binds the session's transaction to its tenant (`app.tenant_id`), so the
    request needs no second round trip to set it.
    """
    if constant_time_equals(presented, settings.ADMIN_API_KEY):
        return Principal(role=Role.platform_admin)
    prefix = parse_prefix(presented)
    if prefix is None:
        return None
    now = utcnow()
    row = session.execute(
        _AUTHENTICATE,
        {
            "prefix": prefix,
            "key_hash": hash_key(presented),
            "now": now,
            "touch_before": now - LAST_USED_RESOLUTION,
        },
    ).one_or_none()
    if row is None:
        return None
    bind_tenant(session, row.tenant_id, bound_by_sql=True)
    return Principal(
        role=Role(row.role),
        tenant_id=row.tenant_id,
        key_id=row.key_id,
        tenant_status=row.tenant_status,
        tenant_plan=row.tenant_plan,
    )
