from __future__ import annotations

from typing import Any

from sqlalchemy import Index, LargeBinary, SmallInteger, String, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, IdMixin, TenantOwned, TimestampMixin


class _StoredResponse:
    """An Idempotency-Key's request and, once it has finished, its response (SPEC 4).

    The key itself is stored as its SHA-256 (a log or a dump of the table does not hand out
    replays); `status_code` NULL means the first request is still running (or died after its
    work committed: never run twice, see app/services/idempotency.py).
    """

    key_hash: Mapped[str] = mapped_column(String(64))
    fingerprint: Mapped[str] = mapped_column(String(64))  # method, path, query and body
    status_code: Mapped[int | None] = mapped_column(SmallInteger)
    response_headers: Mapped[list[Any] | None] = mapped_column(JSONB)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)


class IdempotencyKey(_StoredResponse, TenantOwned, Base):
    """The keys a tenant's API keys sent, shared by all of them (one tenant, one key space)."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("tenant_id", "key_hash"),
        Index("ix_idempotency_keys_created_at", "created_at"),  # the worker's pruning
    )


class AdminIdempotencyKey(_StoredResponse, IdMixin, TimestampMixin, Base):
    """The keys the platform admin key sent, on any path (the admin is one principal, above the
    tenants): a platform table, not tenant-owned."""

    __tablename__ = "admin_idempotency_keys"
    __table_args__ = (
        UniqueConstraint("key_hash"),
        Index("ix_admin_idempotency_keys_created_at", "created_at"),
    )
