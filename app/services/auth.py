"""Resolving a presented bearer key to a principal."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.orm import Session

from app.config.database import system_scope
from app.config.settings import settings
from app.models import ApiKey, Tenant
from app.models.base import utcnow
from app.security import constant_time_equals, hash_key, parse_prefix
from app.services.scope import Principal, Role

# last_used_at is informative; writing it on every request would turn each read into a write.
LAST_USED_RESOLUTION = timedelta(seconds=60)

# Built once: every authenticated request runs these.
_KEY_LOOKUP = (
    select(
        ApiKey.id,
        ApiKey.tenant_id,
        ApiKey.role,
        ApiKey.key_hash,
        ApiKey.expires_at,
        ApiKey.revoked_at,
        ApiKey.last_used_at,
        Tenant.status,
        Tenant.plan,
    )
    .join(Tenant, Tenant.id == ApiKey.tenant_id)
    .where(ApiKey.prefix == bindparam("prefix"))
)
# Conditional in SQL too: of concurrent requests that saw a stale value, one writes.
_TOUCH_KEY = (
    update(ApiKey)
    .where(
        ApiKey.id == bindparam("key_id"),
        ApiKey.tenant_id == bindparam("key_tenant_id"),
        or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < bindparam("stale_before")),
    )
    .values(last_used_at=bindparam("now"))
    .execution_options(synchronize_session=False)
)


def authenticate(session: Session, presented: str) -> Principal | None:
    """The principal behind `presented`, or None for an unknown, revoked or expired key."""
    if constant_time_equals(presented, settings.ADMIN_API_KEY):
        return Principal(role=Role.platform_admin)
    prefix = parse_prefix(presented)
    if prefix is None:
        return None
    now = utcnow()
    with system_scope(session):
        row = session.execute(_KEY_LOOKUP, {"prefix": prefix}).one_or_none()
        if row is None or not constant_time_equals(row.key_hash, hash_key(presented)):
            return None
        if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
            return None
        if row.last_used_at is None or row.last_used_at < now - LAST_USED_RESOLUTION:
            session.execute(
                _TOUCH_KEY,
                {
                    "key_id": row.id,
                    "key_tenant_id": row.tenant_id,
                    "now": now,
                    "stale_before": now - LAST_USED_RESOLUTION,
                },
            )
        return Principal(
            role=Role(row.role),
            tenant_id=row.tenant_id,
            key_id=row.id,
            tenant_status=row.status,
            tenant_plan=row.plan,
        )
