from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String, Text, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, TenantOwned


class WebhookEndpoint(TenantOwned, Base):
    """A URL of the tenant's that receives signed events (SPEC §11)."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (
        Index("ix_webhook_endpoints_tenant_id_created_at_id", "tenant_id", "created_at", "id"),
    )

    url: Mapped[str] = mapped_column(String(2048))
    description: Mapped[str | None] = mapped_column(String(500))
    # Empty means every event type.
    event_types: Mapped[list[str]] = mapped_column(
        ARRAY(String(64)), default=list, server_default=text("'{}'")
    )
    enabled: Mapped[bool] = mapped_column(default=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(200))
    # Encrypted (app/crypto.py, ENCRYPTION_KEYS), not hashed: every delivery is signed with it
    # and HMAC needs the key itself. Rows written before migration 0017 may hold plaintext until
    # `python -m app.cli rotate-encryption-key` encrypts them.
    secret: Mapped[str] = mapped_column(Text)
    # After a rotation the old secret also signs for a grace period, so receivers can switch over.
    previous_secret: Mapped[str | None] = mapped_column(Text)
    previous_secret_expires_at: Mapped[datetime | None]
    # Start of the current run of failed attempts; reset by any success (5 days -> disabled).
    failing_since: Mapped[datetime | None]
