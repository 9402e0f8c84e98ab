from __future__ import annotations

from sqlalchemy import Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, TenantOwned


class WebhookEvent(TenantOwned, Base):
    """The transactional outbox: one row per event, written with the change that caused it."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        Index("ix_webhook_events_tenant_id_created_at_id", "tenant_id", "created_at", "id"),
        # The worker's retention across tenants (app/webhooks/retention.py).
        Index("ix_webhook_events_created_at", "created_at"),
    )

    event_type: Mapped[str] = mapped_column(String(64))
    # The JSON {"type", "timestamp", "data"} as the exact text signed and sent to every endpoint.
    body: Mapped[str] = mapped_column(Text)
