"""A tenant's API keys: the plaintext exists only in the create response."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from app.errors import InvalidInput
from app.models import ApiKey
from app.models.base import utcnow
from app.schemas.tenants import ApiKeyCreate
from app.security import generate_api_key
from app.services.pagination import PageResult, paginate
from app.services.scope import TenantScope, get_scoped, scoped


class ApiKeyService:
    def __init__(self, session: Session, scope: TenantScope) -> None:
        self.session = session
        self.scope = scope

    def create(self, data: ApiKeyCreate) -> tuple[ApiKey, str]:
        """A new key and its plaintext (returned once, never stored)."""
        if data.expires_at is not None and data.expires_at <= utcnow():
            raise InvalidInput("expires_at must be in the future.", code="invalid_expires_at")
        generated = generate_api_key()
        key = ApiKey(
            tenant_id=self.scope.tenant_id,
            name=data.name,
            role=data.role,
            prefix=generated.prefix,
            key_hash=generated.key_hash,
            expires_at=data.expires_at,
        )
        self.session.add(key)
        self.session.flush()
        return key, generated.plaintext

    def list(self, *, limit: int, cursor: str | None) -> PageResult[ApiKey]:
        return paginate(
            self.session, scoped(ApiKey, self.scope), ApiKey, limit=limit, cursor=cursor
        )

    def revoke(self, key_id: uuid.UUID) -> None:
        """Revoke a key; it stops working on the next request. Revoking twice is harmless."""
        key = get_scoped(self.session, ApiKey, self.scope, key_id, what="API key")
        if key.revoked_at is None:
            key.revoked_at = utcnow()
            self.session.flush()
