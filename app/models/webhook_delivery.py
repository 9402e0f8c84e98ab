from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    CheckConstraint,
    ForeignKeyConstraint,
    Index,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, TenantOwned

DELIVERY_STATUSES = ("pending", "delivering", "succeeded", "failed", "dead")


class WebhookDelivery(TenantOwned, Base):
    """One event for one endpoint. Its id is the `webhook-id` header, the same on every attempt.

    pending: never tried (or redelivery requested); delivering: claimed by a worker until
    lease_expires_at; failed: last attempt failed, next one at next_attempt_at; succeeded; dead:
    out of attempts (or the endpoint was disabled).
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("tenant_id", "endpoint_id", "event_id"),
        CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in DELIVERY_STATUSES) + ")", name="status"
        ),
        ForeignKeyConstraint(
            ["tenant_id", "endpoint_id"],
            ["webhook_endpoints.tenant_id", "webhook_endpoints.id"],
            ondelete="CASCADE",
        ),
        ForeignKeyConstraint(
            ["tenant_id", "event_id"],
            ["webhook_events.tenant_id", "webhook_events.id"],
            ondelete="CASCADE",
        ),
        # The delivery log of one endpoint, newest first (keyset pages).
        Index(
            "ix_webhook_deliveries_tenant_id_endpoint_id_created_at_id",
            "tenant_id",
            "endpoint_id",
            "created_at",
            "id",
        ),
        Index("ix_webhook_deliveries_tenant_id_event_id", "tenant_id", "event_id"),
        # The worker's claim queries run in system scope across all tenants, so these two do not
        # lead with tenant_id: they hold only the rows a worker may take (due ones, expired leases).
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status IN ('pending', 'failed')"),
        ),
        Index(
            "ix_webhook_deliveries_leased",
            "lease_expires_at",
            postgresql_where=text("status = 'delivering'"),
        ),
        # The worker's retention (app/webhooks/retention.py): finished ones, oldest first.
        Index(
            "ix_webhook_deliveries_finished",
            "updated_at",
            postgresql_where=text("status IN ('succeeded', 'dead')"),
        ),
    )

    endpoint_id: Mapped[uuid.UUID]
    event_id: Mapped[uuid.UUID]
    event_type: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), default="pending")
    # Attempts in the current cycle (a manual redelivery starts a new cycle at 0).
    attempt_count: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None]
    lease_expires_at: Mapped[datetime | None]
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    last_attempt_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
